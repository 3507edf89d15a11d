"""Sliding windows over scenes: where they start, and which part of the scene each answers for."""

from __future__ import annotations

from typing import Callable

import torch

from cspt.data.windows import window_starts
from cspt.engine.progress import windows_progress


def window_cores(starts: list[int], window: int, length: int) -> list[tuple[float, float]]:
    """The part of the axis each window answers for: neighbours split their overlap in the middle."""
    bounds = [0.0] + [(nxt + cur + window) / 2 for cur, nxt in zip(starts, starts[1:])] + [float(length)]
    return list(zip(bounds, bounds[1:]))


def in_core(boxes: torch.Tensor, rows: tuple[float, float], cols: tuple[float, float]) -> torch.Tensor:
    """Which scene-coordinate boxes have their centre in the window's core (lower bounds inclusive)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx >= cols[0]) & (cx < cols[1]) & (cy >= rows[0]) & (cy < rows[1])


@torch.no_grad()
def sliding_window_detections(predict: Callable[[list[tuple[int, int]]], list[dict]], height: int, width: int,
                              window: int, overlap: int, nms_iou: float = 0.5,
                              batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Detect over a scene window by window and merge into scene coordinates.

    ``predict(offsets)`` returns, per ``(top, left)``, the ``boxes``/``scores``/``labels`` found
    in that window (window coordinates). Each window keeps the detections centred in its
    core (:func:`window_cores`), so an object no larger than the overlap is reported once,
    by a window that sees it whole, and a window's cut-off of an object centred in its
    neighbour's core is dropped. Boxes are clipped to the scene; duplicates left by objects
    larger than the overlap are removed by class-wise NMS. Every detection that survives is kept:
    a scene holds as many objects as its windows do (a cap belongs to the detector, per window).
    """
    from torchvision.ops import batched_nms

    stride = max(1, window - overlap)
    tops, lefts = window_starts(height, window, stride), window_starts(width, window, stride)
    core_rows, core_cols = dict(zip(tops, window_cores(tops, window, height))), \
        dict(zip(lefts, window_cores(lefts, window, width)))
    offsets = [(top, left) for top in tops for left in lefts]
    boxes, scores, labels = [], [], []
    with windows_progress(len(offsets)) as progress:
        for start in range(0, len(offsets), batch_size):
            chunk = offsets[start:start + batch_size]
            for (top, left), found in zip(chunk, predict(chunk), strict=True):
                shifted = found["boxes"] + torch.tensor([left, top, left, top], dtype=found["boxes"].dtype)
                keep = in_core(shifted, core_rows[top], core_cols[left])
                boxes.append(shifted[keep])
                scores.append(found["scores"][keep])
                labels.append(found["labels"][keep])
            progress.update(len(chunk))
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = batched_nms(boxes.float(), scores.float(), labels, nms_iou)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
