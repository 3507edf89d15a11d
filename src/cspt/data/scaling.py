"""How raw pixel values map onto the 0-1 scale a model's mean/std refer to.

Readers return pixels on the *dtype scale* (integers divided by their type's maximum, so
11-bit data in a uint16 file lies below 0.03). A scaling maps each band linearly,
``(x - low) / (high - low)``, before the model's mean/std apply. The two fold into one
per-band mean/std pair (:func:`input_statistics`), which is all datasets and models see;
pictures undo only the model's part and so show the scaled pixels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cspt.data.images import ImageReadError, image_info
from cspt.data.stats import valid_pixels
from cspt.errors import CsptError

log = logging.getLogger("cspt")

#: ``--scale`` values other than a file
SCALE_METHODS = ("auto", "dtype", "percentile", "stats")
PERCENTILES = (2.0, 98.0)
#: pixels kept per sampled image for the percentiles (a seeded subsample)
PIXELS_PER_IMAGE = 65536
EIGHT_BIT = {"uint8", "int8", "bool"}


@dataclass(frozen=True)
class Scaling:
    """Per-band ``low``/``high`` on the dtype scale, mapped to 0 and 1, and how they were chosen."""

    method: str
    low: list[float]
    high: list[float]

    def describe(self, dtype: str | None = None) -> str:
        """One line for the log: the range of every band, also in raw values for integer data."""
        peak = np.iinfo(np.dtype(dtype)).max if dtype and np.issubdtype(np.dtype(dtype), np.integer) else None
        bands = []
        for band, (low, high) in enumerate(zip(self.low, self.high), 1):
            raw = f" (raw {low * peak:.0f}-{high * peak:.0f})" if peak else ""
            bands.append(f"band {band} {low:.5g}-{high:.5g}{raw}")
        return f"{self.method}: " + ", ".join(bands)


def input_statistics(mean: Sequence[float], std: Sequence[float], low: Sequence[float] | None = None,
                     high: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
    """The mean/std that normalise dtype-scale pixels as scaling by ``low``/``high`` then ``mean``/``std`` would."""
    if not low or not high:
        return list(mean), list(std)
    spans = [h - lo for lo, h in zip(low, high)]
    return ([lo + m * s for lo, m, s in zip(low, mean, spans)], [sd * s for sd, s in zip(std, spans)])


def stage_statistics(source: Any) -> tuple[list[float], list[float]]:
    """:func:`input_statistics` of a stage's config or of a model's JSON description."""
    get = source.get if isinstance(source, Mapping) else lambda key: getattr(source, key, None)
    return input_statistics(get("mean"), get("std"), get("scale_low"), get("scale_high"))


def to_display(pixels: np.ndarray, low: Sequence[float] | None, high: Sequence[float] | None) -> np.ndarray:
    """Dtype-scale ``(H, W, bands)`` pixels as the model's 0-1 scale sees them (for pictures)."""
    if not low or not high:
        return pixels
    low_, high_ = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return ((pixels - low_) / np.maximum(high_ - low_, 1e-12)).clip(0, 1)


def data_type(files: Sequence[Path]) -> str | None:
    """The pixel type of the first readable file (None: nothing readable)."""
    for path in files:
        try:
            return image_info(path).dtype
        except ImageReadError:
            continue
    return None


def sampled_pixels(files: Sequence[Path], sample: int = 16, window: int = 1024,
                   seed: int = 0) -> tuple[np.ndarray, int]:
    """:func:`~cspt.data.stats.valid_pixels` of central windows of a seeded sample of ``files``, at most
    ``PIXELS_PER_IMAGE`` (seeded) of each, as one ``(N, bands)`` array; and the images used."""
    rng = np.random.default_rng(seed)
    chunks = []
    for _, pixels in valid_pixels(files, sample, seed, window):
        if isinstance(pixels, str) or not len(pixels) or (chunks and pixels.shape[-1] != chunks[0].shape[-1]):
            continue
        if len(pixels) > PIXELS_PER_IMAGE:
            pixels = pixels[rng.choice(len(pixels), PIXELS_PER_IMAGE, replace=False)]
        chunks.append(pixels)
    if not chunks:
        raise CsptError("no readable, valid pixels to measure the scaling on")
    return np.concatenate(chunks), len(chunks)


def measure_scaling(files: Sequence[Path], method: str, mean: Sequence[float], std: Sequence[float]) -> Scaling:
    """``percentile``: each band's 2nd-98th percentile becomes 0-1. ``stats``: the band's own mean/std
    become the model's ``mean``/``std``. Both measured on valid pixels of a seeded sample."""
    pixels, used = sampled_pixels(files)
    if pixels.shape[1] == 1:  # grey data feed every band of the model
        pixels = np.repeat(pixels, len(mean), axis=1)
    if pixels.shape[1] != len(mean):
        raise CsptError(f"the data have {pixels.shape[1]} bands, the model's mean/std {len(mean)}")
    if method == "percentile":
        low, high = np.percentile(pixels, PERCENTILES, axis=0)
        label = f"percentile {PERCENTILES[0]:g}-{PERCENTILES[1]:g}% of {used} image(s)"
    else:
        data_mean, data_std = pixels.mean(0), pixels.std(0)
        span = data_std / np.asarray(std)
        low = data_mean - np.asarray(mean) * span
        high = low + span
        label = f"stats of {used} image(s)"
    high = np.maximum(high, low + 1e-6)  # a constant band stays finite
    return Scaling(label, [round(float(v), 7) for v in low], [round(float(v), 7) for v in high])


def read_scaling_file(path: str | Path) -> Scaling:
    """``low``/``high`` from a JSON file of them, or the scaling a run or model description records."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        described = [p for p in found if p.stem in ("encoder", "classifier", "segmenter", "detector")]
        if not described:
            raise CsptError(f"{path}: --scale names a folder without a model description (encoder.json etc.)")
        path = described[0]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CsptError(f"{path}: --scale is not a method {SCALE_METHODS} nor a readable JSON file ({err})") from None
    low, high = data.get("scale_low", data.get("low")), data.get("scale_high", data.get("high"))
    if not (isinstance(low, list) and isinstance(high, list) and len(low) == len(high) and low):
        raise CsptError(f"{path}: no per-band low/high (or scale_low/scale_high) lists to scale with")
    return Scaling(f"from {path}", [float(v) for v in low], [float(v) for v in high])


def resolve_scaling(scale: str, bands: int, mean: Sequence[float], std: Sequence[float],
                    files: Callable[[], Sequence[Path]], recorded: Scaling | None = None,
                    explicit_statistics: bool = False) -> Scaling | None:
    """The scaling a stage applies (None: the dtype scale), by ``--scale``.

    ``auto``: the dtype scale when ``--mean/--std`` are given (they are then on that scale);
    else the scaling the ``--init`` weights record (empty ``low``: the dtype scale); else the
    dtype scale for 8-bit data and ``stats`` for any other (per-band dataset statistics, as
    TorchGeo's and SatMAE's recipes normalise multispectral data).
    """
    if scale == "auto":
        if explicit_statistics:
            return None
        if recorded is not None and len(recorded.low) in (0, bands):
            return recorded if recorded.low else None
        dtype = data_type(files())
        if dtype is None or dtype in EIGHT_BIT:
            return None
        scale = "stats"
    if scale == "dtype":
        return None
    scaling = measure_scaling(files(), scale, mean, std) if scale in ("percentile", "stats") \
        else read_scaling_file(scale)
    if len(scaling.low) != bands:
        raise CsptError(f"--scale {scale}: {len(scaling.low)} bands of scaling for a {bands}-band model")
    return scaling
