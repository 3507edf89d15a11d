"""Sliding-window inference for dense prediction on images of any size."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``length``; the last window ends at the edge (none when it fits)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


@torch.no_grad()
def sliding_window_logits(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: int,
                          stride: int, batch_size: int = 8) -> torch.Tensor:
    """Average the logits of overlapping ``window`` x ``window`` crops of ``image`` (C, H, W).

    Crops that reach past a smaller image are zero-padded (the normalised mean), and
    their padding is cut from the logits. Returns ``(classes, H, W)`` on ``image``'s device.
    """
    _, height, width = image.shape
    boxes = [(top, left) for top in window_starts(height, window, stride)
             for left in window_starts(width, window, stride)]
    total = count = None
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        crops = []
        for top, left in chunk:
            crop = image[:, top:top + window, left:left + window]
            crops.append(F.pad(crop, (0, window - crop.shape[2], 0, window - crop.shape[1])))
        logits = predict(torch.stack(crops)).float()
        if total is None:
            total = logits.new_zeros(logits.shape[1], height, width)
            count = logits.new_zeros(1, height, width)
        for (top, left), out in zip(chunk, logits, strict=True):
            h, w = min(window, height - top), min(window, width - left)
            total[:, top:top + h, left:left + w] += out[:, :h, :w]
            count[:, top:top + h, left:left + w] += 1
    return total / count
