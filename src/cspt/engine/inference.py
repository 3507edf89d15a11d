"""Batched, no-grad inference over a dataset (evaluation, prediction, feature extraction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cspt.engine.distributed import all_gather_objects, shard


@dataclass
class Outputs:
    """What a model produced for each readable sample, with its label and dataset index."""

    values: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[str]  #: "path: reason" for unreadable samples (left out)


@torch.no_grad()
def run_inference(fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, collate: Callable,
                  batch_size: int, device: torch.device, num_workers: int = 0,
                  autocast_dtype: torch.dtype | None = None, desc: str = "inference") -> Outputs:
    """``fn(images)`` for every sample of ``dataset`` (items ``(index, 0)``), in dataset order.

    In a process group every process must call it: each runs its share of the samples,
    and all of them get the gathered outputs.
    """
    loader = DataLoader(dataset, batch_size=batch_size, sampler=[(i, 0) for i in shard(range(len(dataset)))],
                        num_workers=num_workers, collate_fn=collate, pin_memory=device.type == "cuda")
    values, labels, indices, skipped = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        skipped += batch["skipped"]
        if len(batch["image"]) == 0:
            continue
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = fn(batch["image"].to(device, non_blocking=True))
        values.append(out.float().cpu())
        labels.append(batch["label"])
        indices.append(batch["index"])
    if values:
        local = Outputs(torch.cat(values), torch.cat(labels), torch.cat(indices), skipped)
    else:
        empty = torch.empty(0, dtype=torch.long)
        local = Outputs(torch.empty(0), empty, empty, skipped)
    return merge_outputs(all_gather_objects(local))


def merge_outputs(parts: list[Outputs]) -> Outputs:
    """The processes' outputs as one, in dataset order."""
    if len(parts) == 1:
        return parts[0]
    filled = [p for p in parts if len(p.indices)]
    skipped = [message for p in parts for message in p.skipped]
    if not filled:
        return Outputs(parts[0].values, parts[0].labels, parts[0].indices, skipped)
    indices = torch.cat([p.indices for p in filled])
    order = indices.argsort()
    return Outputs(torch.cat([p.values for p in filled])[order], torch.cat([p.labels for p in filled])[order],
                   indices[order], skipped)
