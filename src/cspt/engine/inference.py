"""Batched, no-grad inference over a dataset (evaluation, prediction, feature extraction)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


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
    """``fn(images)`` for every sample of ``dataset`` (items ``(index, 0)``), in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=[(i, 0) for i in range(len(dataset))],
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
    if not values:
        empty = torch.empty(0, dtype=torch.long)
        return Outputs(torch.empty(0), empty, empty, skipped)
    return Outputs(torch.cat(values), torch.cat(labels), torch.cat(indices), skipped)
