"""Training batches: loader processes beside a GPU, threads between the steps on a CPU."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from torch.utils.data import DataLoader, Dataset, Sampler

from cspt.engine.distributed import DistContext


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS reports one, else the CPU count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_num_workers(dist: DistContext) -> int:
    """Loader processes per process: the CPUs left over, at most 8."""
    per_process = usable_cpus() // dist.world_size if dist.device.type == "cpu" else usable_cpus()
    return max(0, min(8, per_process - 1))


class ThreadedBatches:
    """Each batch decoded by a pool of threads in the training process, between optimizer steps.

    Training on the CPU keeps every core busy during a step. A loader process running
    beside it takes a core away mid-step and the step's other threads wait for it at
    every parallel barrier, so loading costs about twice its CPU time. Loading between
    steps on all cores costs its CPU time divided by the cores (decoding and resizing
    release the GIL). The dataset must be safe to call from several threads at once
    (``thread_safe = True``: its randomness comes from per-sample generators only).
    """

    def __init__(self, dataset: Dataset, batch_sampler: Sampler, collate: Callable, threads: int):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.collate = collate
        self.threads = threads

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator:
        with ThreadPoolExecutor(self.threads, thread_name_prefix="cspt-loader") as pool:
            for indices in self.batch_sampler:
                yield self.collate(list(pool.map(self.dataset.__getitem__, indices)))


def training_batches(dataset: Dataset, batch_sampler: Sampler, collate: Callable, num_workers: int | None,
                     dist: DistContext) -> Iterable:
    """What the training loop iterates over each epoch (the sampler is re-seeded in between).

    By default a thread-safe dataset on the CPU is loaded by threads between the steps
    (:class:`ThreadedBatches`); otherwise, or with an explicit ``num_workers``, by
    persistent loader processes (no start-up cost per epoch).
    """
    if num_workers is None and dist.device.type == "cpu" and getattr(dataset, "thread_safe", False):
        return ThreadedBatches(dataset, batch_sampler, collate, max(1, usable_cpus() // dist.world_size))
    workers = default_num_workers(dist) if num_workers is None else num_workers
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=dist.device.type == "cuda", persistent_workers=workers > 0)
