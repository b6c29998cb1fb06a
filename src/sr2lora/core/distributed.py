"""Data-parallel runs with ``torchrun``: process group, sharding, gradient and result collectives.

``torchrun --nproc_per_node=N -m sr2lora run ...`` starts N processes with RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT in the environment; :func:`init_from_env` joins them into one process group (NCCL on
CUDA, gloo on CPU). Without those variables (or with WORLD_SIZE=1) everything here is a no-op and a run is the
plain single-process one. Only a process started by torchrun (``TORCHELASTIC_RUN_ID`` set) joins a group: such
variables left in a shell are ignored with a one-line note (``SR2LORA_DISTRIBUTED=1`` opts in for another
launcher), since a plain run would otherwise wait forever for ranks that never start.

How the engine uses it (see :class:`sr2lora.train.engine.Trainer`):

* training: every rank builds the same model (same seeds), reads its share of the task's shuffled training set
  (:func:`train_sampler`: a ``DistributedSampler`` seeded per task, ``set_epoch`` every epoch) in batches of
  ``train.batch_size / N`` (the global batch stays ``train.batch_size``), and after each backward the
  gradients of the few trainable parameters (the task's LoRA factors and head) are averaged over the ranks in
  one coalesced all-reduce (:func:`all_reduce_grads`), so every rank takes the same optimiser step;
* class statistics and evaluation: the evaluation batches are dealt round-robin to the ranks
  (:func:`shard_batches`: each batch is exactly a batch of the single-process run) and the features /
  predictions are gathered back into the single-process order (:func:`gather_batches`), so every rank holds
  the same class Gaussians and the same accuracies as a single process;
* classifier alignment runs on every rank with the same generator seed on the same statistics, then the heads
  are broadcast from rank 0 (:func:`broadcast_`), which keeps the ranks bit-identical;
* only rank 0 writes files (config, checkpoints, metrics, results) and shows progress.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank, world size, local rank (GPU index on its node), backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()
_CONTEXT: DistContext = SINGLE


# torchrun's elastic agent sets TORCHELASTIC_RUN_ID in every worker; a MASTER_ADDR / WORLD_SIZE / RANK left in a
# shell is not a launch. Other launchers (srun, mpirun) that set the variables themselves opt in with this one.
OPT_IN_ENV = "SR2LORA_DISTRIBUTED"
_noted = False


def launched_by_torchrun() -> bool:
    """True when this process was started by torchrun (or a launcher that set ``SR2LORA_DISTRIBUTED=1``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or os.environ.get(OPT_IN_ENV) == "1"


def env_world_size() -> int:
    """WORLD_SIZE from the environment when started by torchrun; 1 otherwise (a stray WORLD_SIZE is ignored,
    with a one-line note)."""
    global _noted
    stray = [k for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT") if k in os.environ]
    if not launched_by_torchrun():
        if stray and not _noted:
            _noted = True
            import sys

            print(f"note: ignoring {', '.join(f'{k}={os.environ[k]}' for k in stray)} in the environment: this "
                  f"process was not started by torchrun (set {OPT_IN_ENV}=1 for another launcher)", file=sys.stderr)
        return 1
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: torch.device | str = "cpu", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes in the environment (idempotent); a no-op for one process.

    Backend: NCCL when ``device`` is CUDA, gloo otherwise. On CUDA each process uses GPU ``LOCAL_RANK``.
    ``timeout_s`` bounds every wait on the group (joining, barriers, collectives): a rank that died makes the
    others fail after it instead of waiting forever; ``SR2LORA_DIST_TIMEOUT`` (seconds) overrides it.
    """
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        return current()
    try:
        timeout_s = float(os.environ.get("SR2LORA_DIST_TIMEOUT", timeout_s))
    except ValueError:
        pass
    world = env_world_size()
    if world <= 1:
        _CONTEXT = SINGLE
        return _CONTEXT
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    atexit.register(shutdown)
    return _CONTEXT


def current() -> DistContext:
    """The context of this process (rank 0 of 1 unless :func:`init_from_env` joined a group)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized() and not _CONTEXT.enabled:
        _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                               dist.get_backend())
    return _CONTEXT


def shutdown() -> None:
    """Leave the process group (registered with atexit by :func:`init_from_env`)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = SINGLE


def resolve_device(device: torch.device, ctx: DistContext) -> torch.device:
    """On CUDA with several processes, each one uses the GPU of its local rank."""
    if ctx.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


def _comm_device(ctx: DistContext) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else torch.device("cpu")


def barrier(ctx: DistContext | None = None) -> None:
    """Wait for every rank (no-op for one process)."""
    ctx = ctx or current()
    if ctx.enabled:
        dist.barrier()


def train_sampler(dataset, ctx: DistContext, seed: int) -> torch.utils.data.DistributedSampler:
    """This rank's share of a shuffled pass over ``dataset``, seeded per task; ``set_epoch`` every epoch."""
    return torch.utils.data.DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False
    )


def per_rank_batch(batch_size: int, ctx: DistContext) -> int:
    """``train.batch_size`` split over the ranks (the global batch is unchanged); it must divide evenly."""
    if batch_size % ctx.world_size:
        raise ConfigError(
            f"train.batch_size: {batch_size} does not split over {ctx.world_size} processes; use a multiple "
            f"of {ctx.world_size} (the global batch is train.batch_size, each process takes batch_size / N)"
        )
    return batch_size // ctx.world_size


@torch.no_grad()
def all_reduce_grads(params: Sequence[torch.nn.Parameter], ctx: DistContext | None = None) -> None:
    """Average the gradients of ``params`` over the ranks, in one flattened all-reduce.

    A parameter without a gradient counts as zero (the list of parameters is the same on every rank).
    """
    ctx = ctx or current()
    if not ctx.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_comm_device(ctx))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    start = 0
    for p, g in zip(params, grads):
        n = g.numel()
        new = flat[start : start + n].view_as(g).to(g.device, g.dtype)
        if p.grad is None:
            p.grad = new
        else:
            p.grad.copy_(new)
        start += n


def all_reduce_sum(values: Sequence[float], ctx: DistContext | None = None) -> list[float]:
    """Sum a few numbers over the ranks (float64)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


@torch.no_grad()
def broadcast_(tensors: Sequence[torch.Tensor], ctx: DistContext | None = None, src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place)."""
    ctx = ctx or current()
    if not ctx.enabled or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]).to(_comm_device(ctx))
    dist.broadcast(flat, src=src)
    start = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[start : start + n].view(t.shape).to(t.device, t.dtype))
        start += n


def all_gather_varlen(tensor: torch.Tensor, ctx: DistContext | None = None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same trailing shape and dtype, any length), in rank order, on the CPU."""
    ctx = ctx or current()
    if not ctx.enabled:
        return [tensor.cpu()]
    dev = _comm_device(ctx)
    n = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
    padded[: tensor.shape[0]] = tensor.to(dev)
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return [p[:k].cpu() for p, k in zip(parts, lengths)]


def check_same(value: int, what: str, ctx: DistContext | None = None) -> None:
    """Raise when the ranks disagree on ``value`` (e.g. the task a resumed run starts from)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return
    values = [int(v) for v in torch.cat(all_gather_varlen(torch.tensor([int(value)]), ctx)).tolist()]
    if len(set(values)) > 1:
        raise RuntimeError(
            f"the processes disagree on {what}: {values} (by rank); with several nodes, the run folder must "
            f"be on a filesystem every node sees"
        )


def shard_batches(indices: np.ndarray, batch_size: int, ctx: DistContext | None = None) -> np.ndarray:
    """This rank's items when the batches of ``indices`` (in order, ``batch_size`` each) go round-robin.

    Iterating the result in batches of ``batch_size`` gives exactly this rank's batches of a single process.
    """
    ctx = ctx or current()
    if not ctx.enabled:
        return indices
    starts = range(ctx.rank * batch_size, len(indices), ctx.world_size * batch_size)
    parts = [indices[s : s + batch_size] for s in starts]
    return np.concatenate(parts) if parts else indices[:0]


def gather_batches(
    local: torch.Tensor, total: int, batch_size: int, ctx: DistContext | None = None
) -> torch.Tensor:
    """Inverse of :func:`shard_batches`: every rank's per-item results back in the single-process order."""
    ctx = ctx or current()
    if not ctx.enabled:
        return local
    return interleave_batches(all_gather_varlen(local, ctx), total, batch_size)


def interleave_batches(parts: Sequence[torch.Tensor], total: int, batch_size: int) -> torch.Tensor:
    """Rank r's results ``parts[r]`` of the batches :func:`shard_batches` dealt it, back in batch order."""
    world = len(parts)
    offsets = [0] * world
    out = []
    for k, start in enumerate(range(0, total, batch_size)):
        r = k % world
        n = min(batch_size, total - start)
        out.append(parts[r][offsets[r] : offsets[r] + n])
        offsets[r] += n
    if any(o != len(p) for o, p in zip(offsets, parts)):
        raise RuntimeError(f"gathered {[len(p) for p in parts]} items, expected {offsets}")
    return torch.cat(out) if out else parts[0][:0]
