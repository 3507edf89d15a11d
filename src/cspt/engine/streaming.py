"""Streaming sliding-window prediction over images of any size, with blended overlaps.

Windows are visited row by row. Each window's output is weighted by a smooth window
(``cosine``: an outer product of sin² ramps; ``gaussian``; ``none``: flat, a plain mean of
the overlapping windows) and added into a buffer as wide as the image and one window tall.
When the next row of windows starts, the rows above it are final: they are divided by
their summed weights and handed on as a :class:`Strip`. Peak memory is about
``classes x window x width`` floats, whatever the image's height; windows without a valid
pixel (all nodata) are not run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cspt.data.windows import window_starts
from cspt.engine.progress import windows_progress

BLENDS = ("cosine", "gaussian", "none")

#: (top, left, height, width) in pixels
Box = tuple[int, int, int, int]
#: a window's pixels ``(bands, h, w)`` (normalised) and which of them hold data ``(h, w)``
Window = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Strip:
    """Final rows ``top .. top + rows`` of the prediction."""

    top: int
    values: torch.Tensor  #: ``(channels, rows, width)``; 0 where no window ran
    valid: torch.Tensor  #: ``(rows, width)``: pixels with data that some window predicted


def blend_weights(size: int, blend: str) -> torch.Tensor:
    """``(size, size)`` positive weights of one window's output, highest at its centre."""
    position = torch.arange(size, dtype=torch.float64) + 0.5
    if blend == "none":
        ramp = torch.ones(size, dtype=torch.float64)
    elif blend == "cosine":
        ramp = torch.sin(math.pi * position / size) ** 2
    elif blend == "gaussian":
        ramp = torch.exp(-0.5 * ((position - size / 2) / (size / 8)) ** 2).clamp_min(1e-3)
    else:
        raise ValueError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
    return torch.outer(ramp, ramp).float()


@torch.no_grad()
def stream_strips(predict: Callable[[torch.Tensor], torch.Tensor], read: Callable[[Box], Window], height: int,
                  width: int, window: int, stride: int, blend: str = "cosine",
                  batch_size: int = 8) -> Iterator[Strip]:
    """Predict ``height`` x ``width`` by ``window`` x ``window`` crops ``stride`` apart, top to bottom.

    ``read(box)`` gives a crop (smaller at the image's edge: zero-padded, the normalised
    mean) and its valid mask; ``predict(crops)`` maps ``(B, bands, window, window)`` to
    ``(B, channels, window, window)``. Yields the finished rows in order, on the CPU.
    """
    weights = blend_weights(window, blend)
    tops, lefts = window_starts(height, window, stride), window_starts(width, window, stride)
    with windows_progress(len(tops) * len(lefts)) as progress:
        yield from _strips(predict, read, height, width, window, tops, lefts, weights, batch_size, progress)


def _strips(predict: Callable[[torch.Tensor], torch.Tensor], read: Callable[[Box], Window], height: int,
            width: int, window: int, tops: list[int], lefts: list[int], weights: torch.Tensor, batch_size: int,
            progress: tqdm) -> Iterator[Strip]:
    total = weight_sum = valid = None
    buffer_top = 0
    for index, top in enumerate(tops):
        rows = min(window, height - top)
        boxes = [(top, left, rows, min(window, width - left)) for left in lefts]
        for start in range(0, len(boxes), batch_size):
            chunk = [(box, *read(box)) for box in boxes[start:start + batch_size]]
            progress.update(len(chunk))
            chunk = [item for item in chunk if bool(item[2].any())]
            if not chunk:
                continue
            crops = torch.stack([F.pad(pixels, (0, window - pixels.shape[2], 0, window - pixels.shape[1]))
                                 for _, pixels, _ in chunk])
            out = predict(crops).float().cpu()
            if total is None:
                total = out.new_zeros(out.shape[1], window, width)
                weight_sum = out.new_zeros(window, width)
                valid = torch.zeros(window, width, dtype=torch.bool)
            for (box, _, mask), values in zip(chunk, out, strict=True):
                _, left, h, w = box
                r0 = top - buffer_top
                weight = weights[:h, :w] * mask
                total[:, r0:r0 + h, left:left + w] += values[:, :h, :w] * weight
                weight_sum[r0:r0 + h, left:left + w] += weight
                valid[r0:r0 + h, left:left + w] |= mask
        next_top = tops[index + 1] if index + 1 < len(tops) else height
        if total is None:  # nothing valid so far: these rows are all nodata
            yield Strip(buffer_top, torch.zeros(0, next_top - buffer_top, width),
                        torch.zeros(next_top - buffer_top, width, dtype=torch.bool))
            buffer_top = next_top
            continue
        done = next_top - buffer_top
        yield Strip(buffer_top, total[:, :done] / weight_sum[:done].clamp_min(1e-12), valid[:done].clone())
        total, weight_sum, valid = (shifted_up(t, done) for t in (total, weight_sum, valid))
        buffer_top = next_top


def shifted_up(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    """The buffer moved up by ``rows`` rows (its second-to-last axis), zeros entering at the bottom."""
    moved = buffer.roll(-rows, dims=-2)
    moved[..., moved.shape[-2] - rows:, :] = 0
    return moved


def blended_logits(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, window: int, stride: int,
                   blend: str = "cosine", batch_size: int = 8) -> torch.Tensor:
    """:func:`stream_strips` over an in-memory normalised ``(bands, H, W)`` image: ``(channels, H, W)``."""
    _, height, width = image.shape

    def read(box: Box) -> Window:
        top, left, h, w = box
        return image[:, top:top + h, left:left + w], torch.ones(h, w, dtype=torch.bool)

    strips = list(stream_strips(predict, read, height, width, window, stride, blend, batch_size))
    return torch.cat([strip.values for strip in strips], dim=1).to(image.device)
