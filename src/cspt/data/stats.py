"""Per-band mean and standard deviation of a set of images (``cspt stats``, scaling, sanity checks)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cspt.data.images import ImageReadError, WindowBox, image_info
from cspt.data.pixels import PixelContract, read_unit
from cspt.errors import CsptError


@dataclass
class BandStatistics:
    """Per-band mean and std of a sample of images: images used, files skipped (and why), pixels left out as no data."""

    mean: list[float]
    std: list[float]
    images: int
    skipped: list[str]
    invalid: int = 0  #: pixels left out as no data


def valid_pixels(files: Sequence[Path], max_images: int | None, seed: int = 0, window: int | None = None,
                 bands: Sequence[int] | None = None, nodata: float | None = None,
                 decibels: str | None = None, despeckle: int | None = None,
                 ) -> Iterator[tuple[Path, np.ndarray | str, int]]:
    """Each file of a seeded sample of at most ``max_images`` of ``files`` with its valid pixels ``(N, bands)``
    in float64 on the dtype scale (``bands`` selected, ``nodata`` left out; ``decibels``: SAR values in dB, after
    a ``despeckle`` boxcar), or
    why it cannot be read; and how many of its pixels were invalid.

    ``window``: read only a central window of at most this many pixels a side of each
    image (large scenes then cost little).
    """
    files = list(files)
    if max_images is not None and len(files) > max_images:
        files = random.Random(seed).sample(files, max_images)
    for path in files:
        try:
            unit, valid = read_unit(path, central_box(path, window) if window else None, bands, nodata,
                                    decibels=decibels, despeckle=despeckle)
        except ImageReadError as err:
            yield path, str(err), 0
            continue
        yield path, unit.astype(np.float64)[valid], int((~valid).sum())


def band_statistics(files: Sequence[Path], max_images: int | None = 1000, seed: int = 0,
                    window: int | None = None, bands: Sequence[int] | None = None,
                    nodata: float | None = None, decibels: str | None = None,
                    despeckle: int | None = None) -> BandStatistics:
    """Mean and std of every band on the dtype scale, over the :func:`valid_pixels` of a seeded sample."""
    total = total_sq = None
    count, width, used, invalid, skipped = 0, None, 0, 0, []
    for path, pixels, masked in valid_pixels(files, max_images, seed, window, bands, nodata, decibels, despeckle):
        if isinstance(pixels, str):
            skipped.append(pixels)
            continue
        if width is None:
            width = pixels.shape[-1]
            total, total_sq = np.zeros(width), np.zeros(width)
        if pixels.shape[-1] != width:
            skipped.append(f"{path}: has {pixels.shape[-1]} bands, others have {width}")
            continue
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        count += pixels.shape[0]
        invalid += masked
        used += 1
    if not used or not count:
        last = f" ({len(skipped)} skipped; last: {skipped[-1]})" if skipped else ""
        raise CsptError(f"no readable images with valid pixels to compute statistics from{last}")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return BandStatistics([round(float(m), 6) for m in mean], [round(float(s), 6) for s in std], used, skipped,
                          invalid)


#: what a pretrained ViT expects of a normalised band: a mean near 0 and a spread near 1
FAR_MEAN, NARROW_STD, WIDE_STD = 3.0, 0.05, 20.0


def central_box(path: Path, side: int) -> WindowBox:
    """The central window of at most ``side`` x ``side`` pixels of an image."""
    info = image_info(path)
    height, width = min(side, info.height), min(side, info.width)
    return (info.height - height) // 2, (info.width - width) // 2, height, width


TRAINING_ADVICE = ("for data of more than 8 bits use --scale percentile (or stats), or pass them as "
                   "--mean/--std")


def normalisation_mismatch(files: Sequence[Path], contract: PixelContract, sample: int = 16,
                           window: int = 1024, advice: str = TRAINING_ADVICE) -> str | None:
    """One line when ``contract`` does not fit the data, else None.

    Measures a seeded sample of ``files`` (:func:`band_statistics` on a central window)
    and puts the result through the contract's scaling and normalisation: a band whose
    mean lies beyond 3 or whose std is below 0.05 (or above 20) is one the model sees as
    nearly constant or saturated, as 11-bit data in a uint16 file is under ImageNet's
    statistics.
    """
    try:
        data = band_statistics(files, sample, window=window, bands=contract.bands, nodata=contract.nodata,
                               decibels=contract.decibels, despeckle=contract.despeckle)
    except CsptError:  # nothing readable: the loader reports the files
        return None
    if len(data.mean) not in (1, contract.in_chans):
        return None
    low = np.zeros(contract.in_chans) if contract.low is None else np.asarray(contract.low)
    span = np.ones(contract.in_chans) if contract.high is None else np.asarray(contract.high) - low
    seen_mean = ((np.asarray(data.mean) - low) / span - np.asarray(contract.mean)) / np.asarray(contract.std)
    seen_std = np.asarray(data.std) / span / np.asarray(contract.std)
    bad = [f"band {b + 1} mean {seen_mean[b]:.2f} std {seen_std[b]:.3f}" for b in range(contract.in_chans)
           if abs(seen_mean[b]) > FAR_MEAN or not NARROW_STD <= seen_std[b] <= WIDE_STD]
    if not bad:
        return None
    measured = ", ".join(f"{m:.4f}/{s:.4f}" for m, s in zip(data.mean, data.std))
    return (f"normalisation does not fit the data: after it, {'; '.join(bad)} (a ViT expects about 0 and 1); "
            f"the data's own mean/std on the 0-1 scale of their type are {measured} (measured on {data.images} "
            f"image(s)): {advice}")
