"""How raw pixel values map onto the 0-1 scale a model's mean/std refer to (``--scale``).

Readers give pixels on the *dtype scale* (integers divided by their type's maximum, so
11-bit data in a uint16 file lies below 0.03; floats as stored). A scaling maps each
band linearly, ``(x - low) / (high - low)``, onto the model's 0-1 scale; the
:class:`~cspt.data.pixels.PixelContract` applies it before any augmentation and before
the model's mean/std.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cspt.data.images import ImageReadError, dtype_kind, image_info
from cspt.data.pixels import PixelContract
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
        peak = np.iinfo(np.dtype(dtype)).max if dtype and dtype_kind(dtype) in "ui" else None
        bands = []
        for band, (low, high) in enumerate(zip(self.low, self.high), 1):
            raw = f" (raw {low * peak:.0f}-{high * peak:.0f})" if peak else ""
            bands.append(f"band {band} {low:.5g}-{high:.5g}{raw}")
        return f"{self.method}: " + ", ".join(bands)


def data_type(files: Sequence[Path]) -> str | None:
    """The pixel type of the first readable file (None: nothing readable)."""
    for path in files:
        try:
            return image_info(path).dtype
        except ImageReadError:
            continue
    return None


def sampled_pixels(files: Sequence[Path], contract: PixelContract, sample: int = 16, window: int = 1024,
                   seed: int = 0) -> tuple[np.ndarray, int]:
    """The valid pixels (the contract's bands and nodata) of central windows of a seeded sample of ``files``,
    at most ``PIXELS_PER_IMAGE`` (seeded) of each, as one ``(N, bands)`` array; and the images used."""
    rng = np.random.default_rng(seed)
    chunks, skipped = [], []
    for _, pixels, _ in valid_pixels(files, sample, seed, window, contract.bands, contract.nodata,
                                      contract.decibels, contract.despeckle):
        if isinstance(pixels, str):
            skipped.append(pixels)
            continue
        if not len(pixels) or (chunks and pixels.shape[-1] != chunks[0].shape[-1]):
            continue
        if len(pixels) > PIXELS_PER_IMAGE:
            pixels = pixels[rng.choice(len(pixels), PIXELS_PER_IMAGE, replace=False)]
        chunks.append(pixels)
    if not chunks:
        last = f" ({len(skipped)} unreadable; last: {skipped[-1]})" if skipped else ""
        raise CsptError(f"no readable, valid pixels to measure the scaling on{last}")
    return np.concatenate(chunks), len(chunks)


def measure_scaling(files: Sequence[Path], method: str, contract: PixelContract) -> Scaling:
    """``percentile``: each band's 2nd-98th percentile becomes 0-1. ``stats``: the band's own mean/std
    become the contract's ``mean``/``std``. Both measured on valid pixels of a seeded sample, read with the
    contract's bands and nodata."""
    pixels, used = sampled_pixels(files, contract)
    if pixels.shape[1] == 1:  # grey data feed every band of the model
        pixels = np.repeat(pixels, contract.in_chans, axis=1)
    if pixels.shape[1] != contract.in_chans:
        raise CsptError(f"the data have {pixels.shape[1]} bands, the model's mean/std {contract.in_chans}")
    if method == "percentile":
        low, high = np.percentile(pixels, PERCENTILES, axis=0)
        label = f"percentile {PERCENTILES[0]:g}-{PERCENTILES[1]:g}% of {used} image(s)"
    else:
        data_mean, data_std = pixels.mean(0), pixels.std(0)
        span = data_std / np.asarray(contract.std)
        low = data_mean - np.asarray(contract.mean) * span
        high = low + span
        label = f"stats of {used} image(s)"
    high = np.maximum(high, low + 1e-6)  # a constant band stays finite
    return Scaling(label, [round(float(v), 7) for v in low], [round(float(v), 7) for v in high])


def read_scaling_file(path: str | Path) -> Scaling:
    """``low``/``high`` from a JSON file of them, or the scaling a run or model description records."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        described = [p for p in found if p.stem in ("pixels", "encoder", "classifier", "segmenter", "detector")]
        if not described:
            raise CsptError(f"{path}: --scale names a folder without a pixel contract or model description "
                            "(pixels.json, encoder.json etc.)")
        path = described[0]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CsptError(f"{path}: --scale is not a method {SCALE_METHODS} nor a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise CsptError(f"{path}: no per-band low/high lists to scale with")
    data = data.get("pixels", data)
    low = data.get("low", data.get("scale_low"))
    high = data.get("high", data.get("scale_high"))
    if not (isinstance(low, list) and isinstance(high, list) and len(low) == len(high) and low):
        raise CsptError(f"{path}: no per-band low/high (or scale_low/scale_high) lists to scale with")
    return Scaling(f"from {path}", [float(v) for v in low], [float(v) for v in high])


def resolve_scaling(scale: str, contract: PixelContract, files: Callable[[], Sequence[Path]],
                    recorded: PixelContract | None = None, explicit_statistics: bool = False) -> Scaling | None:
    """The scaling a stage applies (None: the dtype scale), by ``--scale``, for an unscaled ``contract``.

    ``auto``: the dtype scale when ``--mean/--std`` are given (they are then on that scale);
    else the scaling the ``--init`` weights record (``recorded``, when its band count and decibels fit);
    else the dtype scale for 8-bit data (not read as decibels) and ``stats`` for any other (per-band dataset
    statistics, as TorchGeo's and SatMAE's recipes normalise multispectral data).
    """
    if scale == "auto":
        if explicit_statistics:
            return None
        if recorded is not None and recorded.in_chans == contract.in_chans and recorded.low is not None \
                and recorded.decibels == contract.decibels and recorded.despeckle == contract.despeckle:
            return Scaling(recorded.scaling, list(recorded.low), list(recorded.high))
        dtype = data_type(files())
        if dtype is None or (dtype in EIGHT_BIT and not contract.decibels):
            return None
        scale = "stats"
    if scale == "dtype":
        return None
    scaling = measure_scaling(files(), scale, contract) if scale in ("percentile", "stats") \
        else read_scaling_file(scale)
    if len(scaling.low) != contract.in_chans:
        raise CsptError(f"--scale {scale}: {len(scaling.low)} bands of scaling for a {contract.in_chans}-band model")
    return scaling
