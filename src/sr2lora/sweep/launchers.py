"""Where a sweep's cells run: one after another here (``serial``), N at a time on this machine (``local``), or as
one SLURM job each (``slurm``, a job array submitted with submitit).

Every cell is the same idempotent command, ``sr2lora run --continue --preset P --out DIR ...``: it starts the run,
resumes it from its last complete task, or does nothing when it finished, so giving the same sweep command again
after a crash, a preemption, a time limit or ``scancel`` picks every cell up where it stopped. A cell whose run
folder is locked by another live process is running elsewhere (another sweep, another job): it is left to it,
never run twice and not counted as a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, TrainingError
from ..core.signals import Interrupted, check_interrupt
from ..launch import ALLOW_OTHER_COMPUTE, RUNNING_ELSEWHERE
from ..runs.lock import owner_of
from ..runs.reuse import folder_state
from .grid import Cell
from .record import SweepRecord
from .status import slurm_states

LAUNCHERS = ("serial", "local", "slurm")


def log_name(cell: Cell) -> str:
    """A cell's log file name in ``OUT/logs`` (its name, path separators replaced)."""
    return cell.name.replace("/", "__") + ".log"


def todo(cells: Sequence[Cell], say) -> list[Cell]:
    """The cells that still need a run: not finished and not running elsewhere (each is said once)."""
    out = []
    for c in cells:
        state = folder_state(c.out, c.cfg, hint="remove it or choose another --out")
        owner = owner_of(c.out)
        if state == "done":
            say(f"{c.name}: finished already, skipped")
        elif owner is not None:
            say(f"{c.name}: running elsewhere (pid {owner.get('pid')} on {owner.get('host')}), left to it")
        else:
            out.append(c)
    return out


@dataclass
class Serial:
    """The cells one after another in this process (the run in progress stops cleanly on SIGINT/SIGTERM)."""

    progress: bool = True
    allow_other_compute: bool = False  # resume cells that started elsewhere (other threads, device, machine)
    name: str = "serial"

    def run(self, cells: Sequence[Cell], record: SweepRecord, say=print) -> list[str]:
        from ..launch import RunningElsewhere, continue_state, launch
        from ..runs.lock import FolderInUse

        failed = []
        for i, c in enumerate(cells):
            check_interrupt()  # a stop asked for between two runs
            tag = f"[{i + 1}/{len(cells)}] {c.name}"
            record.attempt(c, launcher=self.name, pid=os.getpid(), host=socket.gethostname())
            try:
                resume = continue_state(c.cfg, c.out)
                if resume is None:  # finished by another process since the plan
                    say(f"{tag}: finished already, skipped")
                    record.ended(c, 0, pid=os.getpid())
                    continue
                say(f"{tag}: {'resuming' if resume else 'running'}")
                res = launch(c.cfg, c.out, resume=resume, progress=self.progress,
                             allow_other_compute=self.allow_other_compute)
            except (RunningElsewhere, FolderInUse):
                say(f"{tag}: running elsewhere, left to it")
                record.ended(c, RUNNING_ELSEWHERE, pid=os.getpid())
                continue
            except TrainingError as exc:  # a diverging setting: reported, the sweep goes on
                say(f"{tag}: FAILED: {exc}")
                record.ended(c, 2, pid=os.getpid())
                failed.append(c.name)
                continue
            except Interrupted as exc:
                record.ended(c, exc.exit_code, pid=os.getpid())
                raise
            record.ended(c, 0, pid=os.getpid())
            say(f"{tag}: final accuracy {res['final_acc']:.2f}%, average {res['avg_acc']:.2f}%, "
                f"forgetting {res['forgetting']:.2f}")
        return failed


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use (``CUDA_VISIBLE_DEVICES``, else every device torch sees)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@dataclass
class Local:
    """``jobs`` cells at once on this machine, each an ``sr2lora run --continue`` process: one CUDA device per cell
    when there are GPUs (``devices``, default all visible), else one thread per cell (on small CPUs two
    single-thread processes use the cores better than one process with two threads). Each cell's output goes to
    ``OUT/logs/<cell>.log`` and is echoed with the cell's name. A failed cell does not stop the others;
    SIGINT/SIGTERM reach the running cells (they stop cleanly and resume next time) before this process stops."""

    jobs: int = 2
    devices: list[str] | None = None
    allow_other_compute: bool = False
    name: str = "local"
    python: str = field(default_factory=lambda: sys.executable)

    def run(self, cells: Sequence[Cell], record: SweepRecord, say=print) -> list[str]:
        devices = visible_gpus() if self.devices is None else list(self.devices)
        if self.jobs < 1:
            raise ConfigError(f"--jobs: expected a positive number of cells at once, got {self.jobs}")
        queue = list(cells)
        lock = threading.Lock()
        failed: list[str] = []
        procs: list[subprocess.Popen] = []
        logs = record.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        def worker(slot: int) -> None:
            device = devices[slot % len(devices)] if devices else None
            while True:
                with lock:
                    if not queue:
                        return
                    cell = queue.pop(0)
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                extra: list[str] = []
                if device is not None:
                    env["CUDA_VISIBLE_DEVICES"] = device
                else:
                    extra.append("train.threads=1")
                log_path = logs / log_name(cell)
                with open(log_path, "a", encoding="utf-8") as log:
                    flags = [ALLOW_OTHER_COMPUTE] if self.allow_other_compute else []
                    proc = subprocess.Popen(cell.command(self.python, extra, flags), stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, env=env)
                    with lock:
                        procs.append(proc)
                    record.attempt(cell, launcher=self.name, pid=proc.pid, log=str(log_path),
                                   device=device or "cpu")
                    for line in proc.stdout:
                        log.write(line)
                        say(f"[{cell.name}] {line.rstrip()}")
                    code = proc.wait()
                record.ended(cell, code, pid=proc.pid)
                if code == RUNNING_ELSEWHERE:
                    say(f"[{cell.name}] running elsewhere, left to it")
                elif code != 0:
                    with lock:
                        failed.append(cell.name)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(min(self.jobs, len(cells)))]
        try:
            for th in threads:
                th.start()
            for th in threads:
                while th.is_alive():
                    th.join(0.5)
                    check_interrupt()
        except BaseException:  # Ctrl-C or SIGTERM turned into an exception: stop the cells cleanly first
            with lock:
                queue.clear()
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            raise
        return [c.name for c in cells if c.name in failed]


@dataclass
class SlurmOptions:
    """What a user sets for their cluster (``sr2lora sweep --launcher slurm`` options)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 60  # minutes per cell
    gpus_per_cell: int = 0
    cpus_per_cell: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 256
    sbatch: dict[str, str] = field(default_factory=dict)  # extra sbatch flags (--sbatch KEY=VALUE)
    setup: list[str] = field(default_factory=list)  # shell lines run in the job before the cell (module load...)


def parse_sbatch(items: Sequence[str]) -> dict[str, str]:
    """``["constraint=a100", "mail-type=END"]`` → {flag: value} for sbatch (``--sbatch`` options)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"--sbatch {item!r}: expected FLAG=VALUE (an sbatch option without its --)")
        out[key] = value
    return out


@dataclass
class Slurm:
    """One SLURM job per cell, as one job array submitted through submitit; a cell that needs several GPUs runs
    torchrun inside its job. Logs go to ``OUT/.submitit/<array>_<task>_0_log.{out,err}``. With ``wait`` the
    sweep polls the scheduler until every job left the queue (Ctrl-C stops waiting; the jobs go on)."""

    options: SlurmOptions
    wait: bool = True
    allow_other_compute: bool = False  # a cell requeued on another GPU model or node type continues
    poll_s: float = 5.0
    name: str = "slurm"
    python: str = field(default_factory=lambda: sys.executable)

    def cell_command(self, cell: Cell) -> list[str]:
        n = self.options.gpus_per_cell
        cmd = cell.command(self.python, flags=[ALLOW_OTHER_COMPUTE] if self.allow_other_compute else [])
        if n > 1:  # several GPUs for one cell: torchrun inside the job, one process per GPU
            cmd = [self.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   *cmd[1:]]
        return cmd

    def parameters(self, folder: Path) -> dict[str, Any]:
        """submitit's ``update_parameters`` for the options (the sbatch flags of every cell's job)."""
        o = self.options
        p: dict[str, Any] = {"timeout_min": o.time, "slurm_array_parallelism": o.array_parallelism,
                             "nodes": 1, "tasks_per_node": 1, "name": "sr2lora-sweep"}
        optional = {"slurm_partition": o.partition, "slurm_account": o.account, "slurm_qos": o.qos,
                    "gpus_per_node": o.gpus_per_cell, "cpus_per_task": o.cpus_per_cell, "mem_gb": o.mem_gb,
                    "slurm_additional_parameters": dict(o.sbatch), "slurm_setup": list(o.setup)}
        p.update({k: v for k, v in optional.items() if v})
        return p

    def executor(self, folder: Path):
        from ..core.extras import require

        submitit = require("submitit", "cluster", "sweep --launcher slurm")
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        ex.update_parameters(**self.parameters(folder))
        return ex

    def describe(self, cells: Sequence[Cell], folder: Path) -> str:
        """The sbatch script the cells' job array gets (nothing is submitted): what ``--dry-run`` prints."""
        ex = self.executor(folder)
        sbatch = ex._executor._make_submission_file_text("<the cell's command, below>", "<uid>")
        lines = [f"slurm: one job array of {len(cells)} cell(s) (--array=0-{len(cells) - 1}%"
                 f"{min(len(cells), self.options.array_parallelism)}), folder {folder}",
                 "sbatch script of each task (%j is <array>_<task>):", sbatch.rstrip(), "cells (one array task each):"]
        lines += [f"  {c.name}: {' '.join(self.cell_command(c))}" for c in cells]
        return "\n".join(lines)

    def run(self, cells: Sequence[Cell], record: SweepRecord, say=print) -> list[str]:
        from ..core.extras import require

        submitit = require("submitit", "cluster", "sweep --launcher slurm")
        folder = record.out / ".submitit"
        ex = self.executor(folder)
        with ex.batch():
            jobs = [ex.submit(submitit.helpers.CommandFunction(self.cell_command(c), verbose=False)) for c in cells]
        for c, job in zip(cells, jobs):
            record.attempt(c, launcher=self.name, job_id=str(job.job_id), log=str(job.paths.stdout),
                           err=str(job.paths.stderr))
            say(f"{c.name}: submitted as SLURM job {job.job_id}")
        if not self.wait:
            return []
        ids = [str(j.job_id) for j in jobs]
        try:
            while True:
                states = slurm_states(ids)
                active = [i for i in ids if states.get(i, ("", ""))[0] in
                          {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"}]
                if not active:
                    break
                time.sleep(self.poll_s)
                check_interrupt()
        except Interrupted:
            say("stopped waiting; the jobs go on (sr2lora sweep --status OUT shows them)")
            raise
        final = slurm_states(ids)
        return [c.name for c, i in zip(cells, ids) if final.get(i, ("UNKNOWN", ""))[0] != "COMPLETED"]
