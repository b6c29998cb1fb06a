"""Where every cell of a sweep stands: ``done``, ``running``, ``pending``, ``failed``, ``interrupted`` or
``not started``, with the job id (or pid), the node, the log and, for a failed cell, the last line of its log.

Read from the run folders (results, checkpoint, the folder's lock), the sweep's record (attempts and exit
statuses) and, for cells submitted to SLURM, the scheduler (``squeue``, then ``scontrol show job`` for jobs that
left the queue; no accounting database is needed).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..core.signals import Interrupted
from ..launch import RUNNING_ELSEWHERE
from ..runs.folder import RunFolder
from ..runs.lock import owner_of
from .record import SweepRecord

STATES = ("done", "running", "pending", "failed", "interrupted", "not started")
# exit statuses of `sr2lora run`: a clean stop by a signal (the run resumes) and "running elsewhere"
INTERRUPTED_EXITS = {Interrupted(2).exit_code, Interrupted(15).exit_code}
SLURM_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclass
class CellStatus:
    """One row of ``sr2lora sweep --status``."""

    name: str
    state: str
    job: str = ""
    node: str = ""
    log: str = ""
    note: str = ""


def last_line(path: str | Path) -> str:
    """The last non-empty line of a log (its last 8 KiB), or ''."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, node list)} of SLURM jobs (array tasks as ``<array>_<task>``), from ``squeue`` and, for jobs
    no longer queued, ``scontrol show job`` (kept by slurmctld for MinJobAge seconds); jobs it no longer knows
    are left out."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for line in _run(["squeue", "-h", "-a", "-r", "-o", "%i|%T|%N", "-j", ",".join(job_ids)]).splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    for jid in job_ids:
        if jid in out or shutil.which("scontrol") is None:
            continue
        fields = dict(kv.split("=", 1) for kv in _run(["scontrol", "show", "job", "-o", jid]).split() if "=" in kv)
        if "JobState" in fields:
            node = fields.get("NodeList", "")
            out[jid] = (fields["JobState"], "" if node == "(null)" else node)
    return out


def sweep_status(out: str | Path, record: SweepRecord | None = None) -> list[CellStatus]:
    """The status of every cell recorded in the sweep folder ``out``."""
    record = record or SweepRecord.read(out)
    names = record.cell_names()
    attempts = {n: record.last_attempt(n) for n in names}
    jobs = [a["job_id"] for a in attempts.values() if a and a.get("launcher") == "slurm" and a.get("job_id")]
    scheduler = slurm_states(jobs)
    rows = []
    for name in names:
        folder = RunFolder(record.doc["cells"][name]["out"])
        rows.append(_status(name, folder, attempts[name], scheduler))
    return rows


def _status(name: str, folder: RunFolder, att: dict | None, scheduler: dict[str, tuple[str, str]]) -> CellStatus:
    job = str(att.get("job_id") or att.get("pid") or "") if att else ""
    log = str(att.get("log", "")) if att else ""
    row = CellStatus(name, "not started", job, str(att.get("node", att.get("host", ""))) if att else "", log)
    known = att is not None and att.get("launcher") == "slurm" and att.get("job_id") in scheduler
    if known:
        state, node = scheduler[att["job_id"]]
        row.node = node or row.node
    if folder.is_finished():
        row.state = "done"
        return row
    owner = owner_of(folder.path)
    if known:
        if state in SLURM_PENDING:
            row.state = "pending"
            return row
        if state in SLURM_RUNNING:
            row.state = "running"
            return row
        if state != "COMPLETED":  # FAILED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY, ...
            row.state = "failed"
            row.note = f"{state.lower()}: {last_line(att.get('err', log)) or 'no log line'}"
            return row
    if owner is not None:
        row.state = "running"
        row.job, row.node = row.job or str(owner.get("pid", "")), row.node or str(owner.get("host", ""))
        return row
    code = att.get("exit") if att else None
    if code is not None and code not in (0, RUNNING_ELSEWHERE, *INTERRUPTED_EXITS):
        row.state = "failed"
        row.note = f"exit {code}: {last_line(log) or 'no log line'}"
    elif folder.is_run() or att is not None:
        row.state = "interrupted"  # stopped (signal, cancelled job, killed driver): the sweep resumes it
        tail = last_line(att.get("err", log)) if att else ""
        row.note = tail if tail and ("CANCELLED" in tail or "TIME LIMIT" in tail or "interrupted" in tail) else ""
    return row


def format_status(rows: list[CellStatus]) -> str:
    """The status table, then one line of counts per state."""
    head = ("cell", "state", "job", "node", "log", "note")
    cells = [(r.name, r.state, r.job, r.node, r.log, r.note) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:-1], widths)) + "  note"]
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c[:-1], widths)) + ("  " + c[-1] if c[-1] else ""))
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no cells recorded")
    return "\n".join(lines)
