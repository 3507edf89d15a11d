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


def seam_boxes(boxes: torch.Tensor, top: int, left: int, window: int, height: int, width: int,
               overlap: int, margin: float = 1.0) -> torch.Tensor:
    """Which window-coordinate boxes touch a window side inside the scene while being smaller
    than the overlap: the neighbouring window sees those objects whole, so these are cut-offs."""
    x1, y1, x2, y2 = boxes.unbind(1)
    cut_x = ((left > 0) & (x1 <= margin)) | ((left + window < width) & (x2 >= window - margin))
    cut_y = ((top > 0) & (y1 <= margin)) | ((top + window < height) & (y2 >= window - margin))
    return (cut_x & (x2 - x1 < overlap)) | (cut_y & (y2 - y1 < overlap))


@torch.no_grad()
def sliding_window_detections(predict: Callable[[list[tuple[int, int]]], list[dict]], height: int, width: int,
                              window: int, overlap: int, nms_iou: float = 0.5, max_detections: int = 300,
                              batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Detect over a scene window by window and merge into scene coordinates.

    ``predict(offsets)`` returns, per ``(top, left)``, the ``boxes``/``scores``/``labels`` found
    in that window (window coordinates). Cut-offs at inner seams are dropped (see
    :func:`seam_boxes`), boxes are clipped to the scene, and duplicates from overlapping
    windows are removed by class-wise NMS.
    """
    from torchvision.ops import batched_nms

    stride = max(1, window - overlap)
    offsets = [(top, left) for top in window_starts(height, window, stride)
               for left in window_starts(width, window, stride)]
    boxes, scores, labels = [], [], []
    for start in range(0, len(offsets), batch_size):
        chunk = offsets[start:start + batch_size]
        for (top, left), found in zip(chunk, predict(chunk), strict=True):
            keep = ~seam_boxes(found["boxes"], top, left, window, height, width, overlap)
            shifted = found["boxes"][keep] + torch.tensor([left, top, left, top], dtype=found["boxes"].dtype)
            boxes.append(shifted)
            scores.append(found["scores"][keep])
            labels.append(found["labels"][keep])
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = batched_nms(boxes.float(), scores.float(), labels, nms_iou)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
