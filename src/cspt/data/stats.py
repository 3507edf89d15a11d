"""Per-band mean and standard deviation of a set of images (for ``mean``/``std`` configs)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cspt.data.images import ImageReadError, read_image
from cspt.errors import CsptError


@dataclass
class BandStatistics:
    mean: list[float]
    std: list[float]
    images: int
    skipped: list[str]


def band_statistics(files: Sequence[Path], max_images: int | None = 1000, seed: int = 0) -> BandStatistics:
    """Mean and std of every band on the 0-1 scale, over a seeded sample of ``files``."""
    files = list(files)
    if max_images is not None and len(files) > max_images:
        files = random.Random(seed).sample(files, max_images)
    total = total_sq = None
    count, bands, used, skipped = 0, None, 0, []
    for path in files:
        try:
            pixels = read_image(path).astype(np.float64)
        except ImageReadError as err:
            skipped.append(str(err))
            continue
        if bands is None:
            bands = pixels.shape[-1]
            total, total_sq = np.zeros(bands), np.zeros(bands)
        if pixels.shape[-1] != bands:
            skipped.append(f"{path}: has {pixels.shape[-1]} bands, others have {bands}")
            continue
        flat = pixels.reshape(-1, bands)
        total += flat.sum(0)
        total_sq += (flat**2).sum(0)
        count += flat.shape[0]
        used += 1
    if not used:
        raise CsptError("no readable images to compute statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return BandStatistics([round(float(m), 6) for m in mean], [round(float(s), 6) for s in std], used, skipped)
