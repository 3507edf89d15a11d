"""Per-band mean and standard deviation of a set of images (for ``mean``/``std`` configs)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cspt.data.images import ImageReadError, WindowBox, image_info, read_masked
from cspt.errors import CsptError


@dataclass
class BandStatistics:
    mean: list[float]
    std: list[float]
    images: int
    skipped: list[str]


def valid_pixels(files: Sequence[Path], max_images: int | None, seed: int = 0,
                 window: int | None = None) -> Iterator[tuple[Path, np.ndarray | str]]:
    """Each file of a seeded sample of at most ``max_images`` of ``files`` with its valid (not nodata)
    pixels ``(N, bands)`` in float64 on the 0-1 scale, or why it cannot be read.

    ``window``: read only a central window of at most this many pixels a side of each
    image (large scenes then cost little).
    """
    files = list(files)
    if max_images is not None and len(files) > max_images:
        files = random.Random(seed).sample(files, max_images)
    for path in files:
        try:
            pixels, valid = read_masked(path, central_box(path, window) if window else None)
        except ImageReadError as err:
            yield path, str(err)
            continue
        yield path, pixels.astype(np.float64)[valid]


def band_statistics(files: Sequence[Path], max_images: int | None = 1000, seed: int = 0,
                    window: int | None = None) -> BandStatistics:
    """Mean and std of every band on the 0-1 scale, over the :func:`valid_pixels` of a seeded sample."""
    total = total_sq = None
    count, bands, used, skipped = 0, None, 0, []
    for path, pixels in valid_pixels(files, max_images, seed, window):
        if isinstance(pixels, str):
            skipped.append(pixels)
            continue
        if bands is None:
            bands = pixels.shape[-1]
            total, total_sq = np.zeros(bands), np.zeros(bands)
        if pixels.shape[-1] != bands:
            skipped.append(f"{path}: has {pixels.shape[-1]} bands, others have {bands}")
            continue
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        count += pixels.shape[0]
        used += 1
    if not used or not count:
        last = f" ({len(skipped)} skipped; last: {skipped[-1]})" if skipped else ""
        raise CsptError(f"no readable images to compute statistics from{last}")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return BandStatistics([round(float(m), 6) for m in mean], [round(float(s), 6) for s in std], used, skipped)


#: what a pretrained ViT expects of a normalised band: a mean near 0 and a spread near 1
FAR_MEAN, NARROW_STD, WIDE_STD = 3.0, 0.05, 20.0


def central_box(path: Path, side: int) -> WindowBox:
    """The central window of at most ``side`` x ``side`` pixels of an image."""
    info = image_info(path)
    height, width = min(side, info.height), min(side, info.width)
    return (info.height - height) // 2, (info.width - width) // 2, height, width


def normalisation_mismatch(files: Sequence[Path], mean: Sequence[float], std: Sequence[float],
                           sample: int = 16, window: int = 1024) -> str | None:
    """One line when ``mean``/``std`` do not fit the data, else None.

    Measures a seeded sample of ``files`` (:func:`band_statistics` on a central window)
    and normalises the result: a band whose mean lies beyond 3 or whose std is below
    0.05 (or above 20) is one the model sees as nearly constant or saturated, as 11-bit
    data in a uint16 file is under ImageNet's statistics.
    """
    try:
        data = band_statistics(files, sample, window=window)
    except CsptError:  # nothing readable: the loader reports the files
        return None
    if len(data.mean) != len(mean):
        return None
    seen_mean = (np.asarray(data.mean) - np.asarray(mean)) / np.asarray(std)
    seen_std = np.asarray(data.std) / np.asarray(std)
    bad = [f"band {b + 1} mean {seen_mean[b]:.2f} std {seen_std[b]:.3f}" for b in range(len(mean))
           if abs(seen_mean[b]) > FAR_MEAN or not NARROW_STD <= seen_std[b] <= WIDE_STD]
    if not bad:
        return None
    measured = ", ".join(f"{m:.4f}/{s:.4f}" for m, s in zip(data.mean, data.std))
    return (f"normalisation does not fit the data: after it, {'; '.join(bad)} (a ViT expects about 0 and 1); "
            f"the data's own mean/std on the 0-1 scale are {measured} (measured on {data.images} image(s)): "
            "for data of more than 8 bits use --scale percentile (or stats), or pass them as --mean/--std")
