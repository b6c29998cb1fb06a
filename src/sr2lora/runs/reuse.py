"""When an existing run folder may be reused: one rule for ``run``, ``run --resume``, ``sweep`` and ``demo``.

A folder planned for a run is, by :func:`folder_state`:

- ``fresh``: it holds no run (no ``config.yaml``, no ``results.json``; it may not exist yet) and nothing else
  sr2lora did not write: a folder holding someone else's files is refused, never written into;
- ``done``: it holds a finished run (``results.json``) of the same experiment;
- ``resumable``: it holds an unfinished run of the same experiment; it continues from its last checkpoint
  (from the start when it stopped before its first task was checkpointed).

"The same experiment" means equal configs apart from the runtime-only keys
(:data:`sr2lora.config.RUNTIME_KEYS`: device, threads, data workers, data root, evaluation batch size), which
change how a run computes but not what (:func:`sr2lora.config.experiment_dict`). A folder holding a run of
another experiment is refused with an :class:`~sr2lora.core.errors.OutputError` naming the keys that differ, so no
command silently continues, reuses or overwrites someone else's run. What each command then does:
``run`` refuses any folder that is not fresh, ``run --resume`` continues a resumable one and says when it is
done, ``sweep`` and ``demo`` skip done runs and resume resumable ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..config import RunConfig, experiment_dict, load_config
from ..core.errors import ConfigError, OutputError
from .folder import RunFolder

FolderState = Literal["fresh", "done", "resumable"]


class ExperimentMismatch(OutputError):
    """The folder holds a run of another experiment; ``changed`` lists the differing config keys."""

    def __init__(self, message: str, changed: list[str]) -> None:
        super().__init__(message)
        self.changed = changed


def experiment_changes(saved: RunConfig, planned: RunConfig) -> list[str]:
    """Dotted config keys whose values differ between two configs, runtime-only keys left out (sorted)."""
    a, b = experiment_dict(saved), experiment_dict(planned)
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k] != b[k])


def saved_config(run_dir: str | Path) -> RunConfig:
    """The config a run folder was started with; OutputError when its ``config.yaml`` cannot be read."""
    path = RunFolder(run_dir).config_file
    try:
        return load_config(str(path))
    except ConfigError as exc:
        raise OutputError(
            f"{path}: the run folder's config cannot be read ({exc}); the folder cannot be reused. Remove it or "
            f"choose another output folder"
        ) from exc


def folder_state(run_dir: str | Path, planned: RunConfig, hint: str = "choose another output folder") -> FolderState:
    """``fresh``, ``done`` or ``resumable`` for running ``planned`` in ``run_dir`` (see the module docstring).

    Raises :class:`ExperimentMismatch` (an OutputError) when the folder holds another experiment, naming the keys
    with both values, and OutputError for a folder with results but no config; ``hint`` ends the message (what
    the user can do in the calling command)."""
    folder = RunFolder(run_dir)
    run_dir = folder.path
    has_results = folder.is_finished()
    if not folder.is_run():
        if has_results:
            raise OutputError(
                f"{run_dir}: holds a {folder.RESULTS} but no {folder.CONFIG}, so which experiment it is cannot be told; "
                f"nothing was changed. {hint[:1].upper()}{hint[1:]}"
            )
        foreign = folder.foreign_entries()
        if foreign:  # someone else's files: a run there would overwrite or delete them
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(
                f"{run_dir}: holds files sr2lora did not write ({shown}) and no run ({folder.CONFIG}); a run there "
                f"would overwrite or delete them. Nothing was changed; choose a new or empty folder"
            )
        return "fresh"
    saved = saved_config(run_dir)
    changed = experiment_changes(saved, planned)
    if changed:
        a, b = experiment_dict(saved), experiment_dict(planned)
        shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} planned" for k in changed[:6])
        more = f"; and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ExperimentMismatch(
            f"{run_dir}: already holds a run of another experiment ({', '.join(changed)} differ: {shown}{more}); "
            f"nothing was changed. {hint[:1].upper()}{hint[1:]}",
            changed,
        )
    return "done" if has_results else "resumable"
