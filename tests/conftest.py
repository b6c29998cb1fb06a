"""Test-wide settings: no hub access, passive OpenMP threads, one shared smoke-run helper."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("SR2LORA_OFFLINE", "1")

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    """Tests get a fresh SR2LORA_CACHE; only tests marked `assets` use the real one (converted weights)."""
    if request.node.get_closest_marker("assets") is None:
        monkeypatch.setenv("SR2LORA_CACHE", str(tmp_path_factory.mktemp("cache")))


def run_cli(*args: str) -> int:
    from sr2lora.cli import main

    return main([str(a) for a in args])


def sigterm_cli_after(args: list[str], marker: str, env: dict[str, str] | None = None,
                      wait_s: float = 300) -> tuple[int, str, str]:
    """Run ``python -m sr2lora ARGS`` in a subprocess, send SIGTERM once a line of its output contains
    ``marker`` (or after ``wait_s``), and return (exit code, what it printed before, what it printed after)."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sr2lora", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.time() + wait_s
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines), rest


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


# The short smoke run every test that needs a finished run shares: one epoch per task, two alignment epochs.
FAST = ("train.epochs=1", "ca.epochs=2")
# Both training precisions, forced: no test may depend on which one `train.precision=auto` picks on its machine.
PRECISIONS = ("fp32", "bf16")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``smoke_run(*overrides, precision="fp32")`` -> (run folder, results): a finished smoke-preset run with
    :data:`FAST` and ``overrides``, trained once per test session (through the CLI) and shared by every test
    that asks for the same overrides. Treat the folder as read-only; copy it to change it."""
    cache: dict[tuple[str, ...], tuple[Path, dict]] = {}

    def get(*overrides: str, precision: str = "fp32") -> tuple[Path, dict]:
        key = (*FAST, *overrides, f"train.precision={precision}")
        if key not in cache:
            name = "-".join(o.split("=", 1)[-1] for o in overrides)[:60] or "base"
            out = tmp_path_factory.mktemp(f"smoke-{name}-{precision}") / "run"
            assert run_cli("run", "--preset", "smoke", "--quiet", "--out", out, *key) == 0
            cache[key] = out, read_results(out)
        return cache[key]

    return get


@contextmanager
def small_tmpfs(path: Path, size: str = "1m"):
    """A real tmpfs of ``size`` mounted at ``path`` for the block (a full disk that is not faked); the test is
    skipped, saying why, where mounting is impossible (not root, no mount permission). Unmounted however the
    block ends."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path}: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def fill(disk: Path, free_bytes: int) -> Path:
    """Fill ``disk`` with one file so that about ``free_bytes`` stay free; returns the filler (delete it to free)."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - free_bytes
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(size, 0))
    return filler


def stopped_run(out: Path, *overrides: str, after: int = 1, precision: str = "fp32") -> Path:
    """A smoke-preset run (FAST, ``overrides``, ``precision``) stopped cleanly, as SIGTERM stops it, once task
    ``after`` (0-based) is checkpointed: a resumable run folder."""
    from sr2lora.config import load_config
    from sr2lora.core.signals import Interrupted, request_stop
    from sr2lora.launch import launch
    from sr2lora.train.callbacks import Callback

    class StopAfterTask(Callback):
        def on_task(self, trainer, t: int) -> None:
            if t == after:
                request_stop(signal.SIGTERM)

    with pytest.raises(Interrupted):
        launch(load_config("smoke", [*FAST, *overrides, f"train.precision={precision}"]), out, progress=False,
               callbacks=[StopAfterTask()])
    assert not (out / "results.json").exists()
    return out


def image_folder(root: Path, per_class: dict[str, int], corrupt: dict[str, int] | None = None) -> Path:
    """root/<class>/*.png (the `folder` dataset's layout): 32 px plain-colour images with noise and, per class in
    ``corrupt``, that many files named like PNGs that are not images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, (name, n) in enumerate(sorted(per_class.items())):
        (root / name).mkdir(parents=True)
        colour = np.array([60 * k % 256, 255 - 60 * k % 256, 90 * k % 256])
        for i in range(n):
            pixels = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i:02d}.png")
        for i in range((corrupt or {}).get(name, 0)):
            (root / name / f"broken{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 3)
    return root


def folder_args(root: Path) -> tuple[str, ...]:
    """Overrides that run the smoke preset (FAST) on the image folder ``root``, two classes per task."""
    return ("data.dataset=folder", f"data.root={root}", "scenario.init_cls=2", "scenario.increment=2", *FAST)
