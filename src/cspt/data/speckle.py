"""SAR speckle filtering: a boxcar (moving) mean of the intensity, on the image's own pixel grid.

A single-look complex (SLC) image is mostly speckle: its intensity is the true backscatter times
an exponential noise of the same size, so a masked autoencoder has almost nothing to predict.
Averaging N x N neighbouring intensities (N*N "looks", as SNAP's boxcar filter does) divides the
speckle's variance by about N*N while keeping the pixel grid, so windows, tiles and labels keep
their coordinates. Sentinel-1 GRD products are multilooked already and need none of it.

A pixel's mean is over the valid pixels of its N x N neighbourhood within the image (fewer at
the image's edges and beside no data), so it is the same whichever window it is read through:
:func:`margin_window` widens a window by the filter's reach before reading.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cspt.data.images import WindowBox
from cspt.errors import CsptError


def check_despeckle(size: int, decibels: str | None, source: object) -> None:
    """A one-line error naming ``source`` unless ``size`` is an odd filter side (1: none), with decibels."""
    if size < 1 or size % 2 == 0:
        raise CsptError(f"{source}: --despeckle {size}: the boxcar's side must be odd (1: no filter)")
    if decibels is None and size > 1:
        raise CsptError(f"{source}: --despeckle averages SAR intensity before decibels; give --decibels too")


def boxcar_mean(values: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """The mean of ``values`` ``(H, W, bands)`` over each pixel's ``size`` x ``size`` neighbourhood (odd
    ``size``), counting only ``valid`` ``(H, W)`` pixels; float64 (a float32 fill value squared stays finite),
    invalid pixels included (their own neighbours' mean, or 0 with none)."""
    reach = size // 2
    weights = torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float64))[None]
    data = torch.from_numpy(np.where(valid[..., None], values, 0.0).astype(np.float64)).permute(2, 0, 1)
    # both pooled with the same divisor: their ratio is the sum over valid neighbours / their count
    sums = F.avg_pool2d(data * weights, size, stride=1, padding=reach, count_include_pad=False)
    counts = F.avg_pool2d(weights[None], size, stride=1, padding=reach, count_include_pad=False)[0]
    mean = torch.where(counts > 0, sums / counts.clamp_min(1e-300), torch.zeros_like(sums))
    return mean.permute(1, 2, 0).numpy()


def margin_window(window: WindowBox, reach: int, height: int, width: int) -> tuple[WindowBox, WindowBox]:
    """``window`` (top, left, height, width) widened by ``reach`` pixels on every side, within an image of
    ``height`` x ``width``; and where the original window lies inside the widened one."""
    top, left, rows, cols = window
    if top < 0 or left < 0:  # the part inside the image, as a plain read returns it
        rows, cols, top, left = rows + min(top, 0), cols + min(left, 0), max(top, 0), max(left, 0)
    outer_top, outer_left = max(top - reach, 0), max(left - reach, 0)
    outer_bottom, outer_right = min(top + rows + reach, height), min(left + cols + reach, width)
    outer = (outer_top, outer_left, outer_bottom - outer_top, outer_right - outer_left)
    return outer, (top - outer_top, left - outer_left, rows, cols)
