"""Seeded, resumable batch sampling that gives the same global batches at any world size."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from cspt.errors import CsptError


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, seed)`` from one global shuffle per epoch, split across ranks.

    Global batch ``i`` of an epoch is the same set of samples whatever the world size:
    rank ``r`` gets slice ``r`` of it. Incomplete global batches are dropped. With
    ``groups`` (the samples of each tar shard), the shuffle keeps a group together:
    the groups in a seeded order, each one's samples shuffled, so the processes read
    one shard at a time instead of seeking across all of them.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, groups: list[list[int]] | None = None):
        self.groups = groups
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        if len(self) == 0:
            raise CsptError(
                f"only {dataset_size} samples, fewer than one global batch of "
                f"{batch_size * world_size}: lower --batch-size or add images"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's shuffle and skip the batches already trained on."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.dataset_size // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.groups is None:
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = [self.groups[g][i] for g in torch.randperm(len(self.groups), generator=generator).tolist()
                     for i in torch.randperm(len(self.groups[g]), generator=generator).tolist()]
        seeds = torch.randint(2**62, (self.dataset_size,), generator=generator).tolist()
        global_batch = self.batch_size * self.world_size
        for batch in range(self.start_batch, len(self)):
            start = batch * global_batch + self.rank * self.batch_size
            yield [(order[i], seeds[i]) for i in range(start, start + self.batch_size)]
