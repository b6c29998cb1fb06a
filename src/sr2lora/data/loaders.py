"""DataLoaders of the engine: the seeded loader of one process and the training loader of one or many.

One process shuffles with its own ``torch.Generator`` seeded per task, so a task's batches do not depend on
what ran before it (a resumed run sees the same batches). Under torchrun each rank takes its share of the task
through a ``DistributedSampler`` seeded the same way, with ``train.batch_size / world_size`` images a batch, so
the global batch is unchanged.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..core import distributed as ddp


def seeded_loader(view: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                  pin_memory: bool = False) -> DataLoader:
    """A loader over ``view`` whose shuffle (when ``shuffle``) draws from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        view, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=num_workers,
        drop_last=False, pin_memory=pin_memory,
        persistent_workers=False,
    )


def train_loader(view: Dataset, batch_size: int, seed: int, dist: ddp.DistContext, num_workers: int = 0,
                 pin_memory: bool = False) -> tuple[DataLoader, DistributedSampler | None]:
    """(this process's training loader over ``view``, its sampler or None) for one task.

    One process: the seeded shuffling loader and no sampler. Several (``dist.enabled``): this rank's share via
    a ``DistributedSampler`` seeded with ``seed`` (call ``sampler.set_epoch(epoch)`` each epoch) and the
    per-rank batch; raises ConfigError when ``batch_size`` does not split over the ranks.
    """
    if not dist.enabled:
        return seeded_loader(view, batch_size, True, seed, num_workers, pin_memory), None
    sampler = ddp.train_sampler(view, dist, seed)
    loader = DataLoader(view, batch_size=ddp.per_rank_batch(batch_size, dist), sampler=sampler,
                        num_workers=num_workers, pin_memory=pin_memory)
    return loader, sampler
