"""The pixel contract: how a file becomes a model input, the same way in every stage.

One order, everywhere::

    read a window -> select bands -> valid mask -> (SAR: despeckle, decibels) -> scale to [0, 1] -> augment
    -> normalise -> invalid = 0

A :class:`PixelContract` holds everything that order needs (the bands, the per-band
scaling, the extra nodata value, the normalisation) and what the bands are (names,
wavelengths: :mod:`cspt.data.bands`); it is made once per run from the data
and the flags, written into the run directory and into every model description, and handed
to every reader, dataset and inference path as an argument. Nothing of it lives in the
environment or in module state.

Between the read and the normalisation pixels travel as :class:`Pixels`: the image on the
model's 0-1 scale, with invalid pixels already at the band mean (so that resampling near
them stays sane and they normalise to exactly 0), and the valid mask, which every
geometric augmentation carries along. A pixel is invalid where its file says so (a
GeoTIFF's nodata value, internal mask or alpha band, a PNG's alpha), where any selected
band is NaN or infinite, or where any selected band equals the contract's ``nodata``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from cspt.atomic import atomic_write
from cspt.data.bands import Band, describe, display_order, is_radar
from cspt.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageInfo,
    ImageReadError,
    RawPixels,
    WindowBox,
    dtype_kind,
    image_info,
    may_lack_data,
    read_raw,
    read_resized,
    to_unit_float,
)
from cspt.data.normalisation import default_normalisation
from cspt.data.speckle import boxcar_mean, check_despeckle, margin_window
from cspt.errors import CsptError

#: the version of :meth:`PixelContract.to_dict`'s layout: 2 added ``despeckle``, written as 1 without it (a release
#: that reads only 1 then refuses a despeckled model instead of reading its pixels unfiltered)
CONTRACT_VERSION = 2


@dataclass(frozen=True)
class Pixels:
    """An image on the model's 0-1 scale, ``(bands, H, W)`` float32, and its valid mask ``(H, W)``.

    Invalid pixels hold the band mean (the normalised zero).
    """

    image: torch.Tensor
    valid: torch.Tensor

    def flip(self, dim: int = -1) -> Pixels:
        return Pixels(self.image.flip(dim), self.valid.flip(dim))

    def rot90(self, turns: int) -> Pixels:
        return Pixels(self.image.rot90(turns, (-2, -1)), self.valid.rot90(turns, (-2, -1)))

    def crop(self, top: int, left: int, height: int, width: int) -> Pixels:
        rows, cols = slice(top, top + height), slice(left, left + width)
        return Pixels(self.image[:, rows, cols], self.valid[rows, cols])

    def resized(self, size: Sequence[int], interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> Pixels:
        """Resized to ``size`` (antialiased; the mask by nearest neighbour)."""
        image = TF.resize(self.image, list(size), interpolation=interpolation, antialias=True)
        valid = TF.resize(self.valid[None], list(size), interpolation=InterpolationMode.NEAREST)[0]
        return Pixels(image, valid)


@dataclass(frozen=True)
class PixelContract:
    """How a file becomes a model input (see the module doc)."""

    mean: tuple[float, ...]  #: per band, on the 0-1 scale: what normalises to 0
    std: tuple[float, ...]  #: per band: what normalises to 1
    bands: tuple[int, ...] | None = None  #: the file bands read, 1-based, in order (None: all but alpha)
    low: tuple[float, ...] | None = None  #: per band, on the dtype scale (integers / type maximum): becomes 0
    high: tuple[float, ...] | None = None  #: per band, on the dtype scale: becomes 1 (None with ``low``: 0-1)
    nodata: float | None = None  #: a raw value meaning "no data" in every file, beside each file's own
    scaling: str = "dtype"  #: how ``low``/``high`` were chosen, for logs and reports
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS  #: the largest JPEG/PNG decoded (None: no limit)
    spectral: tuple[Band, ...] | None = None  #: what each model band is (None: not known)
    decibels: str | None = None  #: SAR: ``amplitude`` or ``intensity`` values read as decibels (see to_decibels)
    despeckle: int | None = None  #: SAR: the side of a boxcar mean of the intensity before decibels (odd, >= 3)

    def __post_init__(self) -> None:
        bands = len(self.mean)
        if bands < 1 or len(self.std) != bands:
            raise CsptError(f"pixel contract: mean and std need one value per band, got {len(self.mean)} and "
                            f"{len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise CsptError(f"pixel contract: every std must be positive, got {list(self.std)}")
        if (self.low is None) != (self.high is None):
            raise CsptError("pixel contract: give both the scaling's low and high values, or neither")
        if self.low is not None and (len(self.low) != bands or len(self.high) != bands):
            raise CsptError(f"pixel contract: {len(self.low)} bands of scaling for {bands} bands of mean/std")
        if self.bands is not None and len(self.bands) not in (1, bands):
            raise CsptError(f"pixel contract: {len(self.bands)} bands selected for a {bands}-band model")
        if self.nodata is not None and math.isnan(self.nodata):
            object.__setattr__(self, "nodata", None)  # NaN is always invalid
        if self.spectral is not None and len(self.spectral) != bands:
            raise CsptError(f"pixel contract: metadata for {len(self.spectral)} bands, {bands} bands of mean/std")
        if self.decibels not in (None, *DECIBEL_INPUTS):
            raise CsptError(f"pixel contract: decibels of {self.decibels!r}; one of {', '.join(DECIBEL_INPUTS)}")
        if self.despeckle is not None:
            check_despeckle(self.despeckle, self.decibels, "pixel contract")
            if self.despeckle == 1:
                object.__setattr__(self, "despeckle", None)  # a 1 x 1 boxcar: none

    @property
    def in_chans(self) -> int:
        return len(self.mean)

    @property
    def is_sar(self) -> bool:
        """Whether the bands are radar (read as decibels, or described as radar): no colour augmentation."""
        return self.decibels is not None or is_radar(self.spectral)

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``version`` first)."""
        values = {"version": CONTRACT_VERSION if self.despeckle else 1}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "spectral":
                value = None if value is None else tuple(dataclasses.asdict(band) for band in value)
            values[field.name] = list(value) if isinstance(value, tuple) else value
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: object = "pixel contract") -> PixelContract:
        """The contract :meth:`to_dict` wrote; a one-line error naming ``source`` when it is not one."""
        version = values.get("version", CONTRACT_VERSION)
        if version > CONTRACT_VERSION:
            raise CsptError(f"{source}: pixel contract version {version} is newer than this cspt reads "
                            f"({CONTRACT_VERSION}); upgrade cspt")
        try:
            return cls(mean=_floats(values["mean"]), std=_floats(values["std"]), bands=_ints(values.get("bands")),
                       low=_floats(values.get("low")), high=_floats(values.get("high")),
                       nodata=None if values.get("nodata") is None else float(values["nodata"]),
                       scaling=str(values.get("scaling", "dtype")),
                       max_image_pixels=values.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                       spectral=None if values.get("spectral") is None else
                       tuple(Band(**band) for band in values["spectral"]), decibels=values.get("decibels"),
                       despeckle=values.get("despeckle"))
        except (KeyError, TypeError, ValueError) as err:
            raise CsptError(f"{source}: not a pixel contract ({type(err).__name__}: {err})") from None

    @classmethod
    def from_description(cls, info: Mapping[str, Any], in_chans: int | None = None,
                         source: object = "model description") -> PixelContract:
        """The contract a model description records: its ``pixels``, or the keys older cspt releases wrote
        (``mean``, ``std``, ``bands``, ``scale_low``, ``scale_high``); defaults for ``in_chans`` bands
        where it records none."""
        if isinstance(info.get("pixels"), Mapping):
            return cls.from_dict(info["pixels"], source)
        bands = in_chans or len(info.get("mean") or []) or info.get("architecture", {}).get("in_chans", 3)
        mean, std = default_normalisation(bands)
        if isinstance(info.get("mean"), list) and isinstance(info.get("std"), list) and info["mean"]:
            mean, std = info["mean"], info["std"]
        low, high = info.get("scale_low"), info.get("scale_high")
        scaled = isinstance(low, list) and isinstance(high, list) and low and len(low) == len(high)
        return cls.from_dict({"mean": mean, "std": std, "bands": info.get("bands"),
                              "low": low if scaled else None, "high": high if scaled else None,
                              "scaling": f"recorded with {source}" if scaled else "dtype"}, source)

    def replace(self, **changes: Any) -> PixelContract:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for the log: bands, nodata, scaling and normalisation."""
        bands = " ".join(map(str, self.bands)) if self.bands else "all"
        scale = "the dtype scale" if self.low is None else \
            f"{self.scaling}: " + ", ".join(f"{lo:.5g}-{hi:.5g}" for lo, hi in zip(self.low, self.high))
        nodata = f", nodata {self.nodata:g}" if self.nodata is not None else ""
        nodata += f" ({describe(self.spectral)})" if self.spectral else ""
        nodata += f", {self.decibels} in dB" if self.decibels else ""
        nodata += f" after a {self.despeckle}x{self.despeckle} boxcar" if self.despeckle else ""
        return (f"bands {bands}{nodata}; scaling {scale}; mean {[round(v, 4) for v in self.mean]}, "
                f"std {[round(v, 4) for v in self.std]}")

    # ------------------------------------------------------------ reading

    def check_bands(self, info: ImageInfo, path: Path) -> None:
        """A one-line error when a file cannot give this contract's bands."""
        if self.bands:
            count = info.bands + info.alpha
            outside = [b for b in self.bands if not 1 <= b <= count]
            if outside:
                raise CsptError(f"{path}: band {outside[0]} is out of range: the file has {count} band(s), "
                                "numbered from 1 (--bands)")
            return
        if info.bands not in (1, self.in_chans):
            raise CsptError(f"{path}: has {info.bands} bands, the model takes {self.in_chans}; select "
                            f"{self.in_chans} with --bands, or take all with --in-chans {info.bands} (or --sensor)")

    def read_unit(self, path: str | Path, window: WindowBox | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`read_unit` of a window under this contract's bands and nodata."""
        return read_unit(path, window, self.bands, self.nodata, self.max_image_pixels, self.decibels,
                         self.despeckle)

    def read(self, path: str | Path, window: WindowBox | None = None) -> Pixels:
        """A window (None: the whole image) as :class:`Pixels`: selected, masked, scaled, invalid at the mean."""
        unit, valid = self.read_unit(path, window)
        return self.from_unit(unit, valid, path)

    def from_unit(self, unit: np.ndarray, valid: np.ndarray, source: object) -> Pixels:
        """Dtype-scale ``(H, W, bands)`` pixels and their valid mask as :class:`Pixels` (grey is repeated)."""
        image = torch.from_numpy(np.ascontiguousarray(self.scale(unit))).permute(2, 0, 1)
        image = self._matched(image, source)
        valid_t = torch.from_numpy(np.ascontiguousarray(valid))
        return Pixels(self.fill(image, valid_t), valid_t)

    def scale(self, unit: np.ndarray) -> np.ndarray:
        """Dtype-scale ``(..., bands)`` values on the model's 0-1 scale (``low`` -> 0, ``high`` -> 1)."""
        if self.low is None:
            return unit
        low = np.asarray(self.low, np.float32)
        span = np.maximum(np.asarray(self.high, np.float32) - low, np.float32(1e-12))
        return (unit - low) / span  # grey data (one band) broadcast to every band of the model

    def _matched(self, image: torch.Tensor, source: object) -> torch.Tensor:
        bands = image.shape[0]
        if bands == self.in_chans:
            return image
        if bands == 1:
            return image.expand(self.in_chans, -1, -1).contiguous()
        raise ImageReadError(f"{source}: has {bands} bands, the model takes {self.in_chans} (select them with "
                             "--bands)")

    def read_resized_crop(self, path: str | Path, box: WindowBox, size: int, info: ImageInfo | None = None) -> Pixels:
        """The ``box`` of an image resized to ``size`` x ``size`` (bicubic, antialiased).

        8-bit RGB or grey JPEG/PNG read with every band, no ``--nodata`` and no decibels take PIL's reduced decode
        (:func:`~cspt.data.images.read_resized`, every pixel valid); other images are read as a window, masked
        and resized here.
        """
        if self.bands is None and self.nodata is None and self.decibels is None:
            small = read_resized(path, box, size, self.max_image_pixels)
            if small is not None:
                return self.from_unit(to_unit_float(small), np.ones(small.shape[:2], dtype=bool), path)
        return self.read(path, box).resized([size, size])

    def valid(self, path: str | Path, window: WindowBox | None = None) -> np.ndarray:
        """Which pixels of a window hold data under this contract."""
        return self.read_unit(path, window)[1]

    def picture(self, pixels: Pixels) -> np.ndarray:
        """``(H, W, 3)`` 0-1 pixels to draw: true or false colour from the bands (:func:`display_order`)."""
        order = display_order(self.spectral, pixels.image.shape[0])[0]
        return pixels.image[order].permute(1, 2, 0).numpy()

    def may_lack_data(self, path: str | Path) -> bool:
        """Whether some pixel of a file may be invalid under this contract (from the header)."""
        return self.nodata is not None or may_lack_data(path)

    def info(self, path: str | Path) -> ImageInfo:
        """The file's header, checked against the contract's bands."""
        found = image_info(path)
        self.check_bands(found, Path(path))
        if self.decibels == "intensity" and dtype_kind(found.dtype) == "c":
            raise CsptError(f"{path}: complex values are read as their amplitude: use --decibels amplitude")
        return found

    # ------------------------------------------------------------ normalisation

    @property
    def mean_tensor(self) -> torch.Tensor:
        return torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)

    @property
    def std_tensor(self) -> torch.Tensor:
        return torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def fill(self, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``image`` with its invalid pixels at the band mean (the normalised zero)."""
        return torch.where(valid, image, self.mean_tensor.to(image.dtype))

    def normalise(self, pixels: Pixels) -> torch.Tensor:
        """``(image - mean) / std``, invalid pixels exactly 0."""
        return ((pixels.image - self.mean_tensor) / self.std_tensor) * pixels.valid

    def unnormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., bands, H, W)`` back on the 0-1 scale (for pictures)."""
        return images * self.std_tensor.to(images.device) + self.mean_tensor.to(images.device)


CONTRACT_FILE = "pixels.json"


def write_contract(contract: PixelContract, folder: Path) -> Path:
    """``folder/pixels.json``, written atomically (a temporary file renamed into place)."""
    target = Path(folder) / CONTRACT_FILE
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps(contract.to_dict(), indent=2) + "\n"))
    return target


def read_contract(folder: Path) -> PixelContract | None:
    """The contract :func:`write_contract` left in ``folder`` (None: none there)."""
    target = Path(folder) / CONTRACT_FILE
    return PixelContract.from_dict(json.loads(target.read_text()), target) if target.is_file() else None


def read_unit(path: str | Path, window: WindowBox | None = None, bands: Sequence[int] | None = None,
              nodata: float | None = None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
              decibels: str | None = None, despeckle: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``bands`` of a window on the dtype scale ``(H, W, bands)`` (``decibels``: in dB; ``despeckle``: after
    a boxcar mean of the intensity, :mod:`cspt.data.speckle`) and its valid mask ``(H, W)``, unscaled (what
    :mod:`cspt.data.scaling` measures); invalid pixels hold 0."""
    if despeckle and despeckle > 1:
        return _despeckled_decibels(path, window, bands, nodata, max_pixels, decibels, despeckle)
    raw = read_raw(path, window, bands, max_pixels)
    valid = valid_mask(raw, nodata)
    unit = to_decibels(raw.values, decibels) if decibels else to_unit_float(raw.values)
    unit[~valid] = 0.0
    return unit, valid


def _despeckled_decibels(path: str | Path, window: WindowBox | None, bands: Sequence[int] | None,
                         nodata: float | None, max_pixels: int | None, decibels: str | None,
                         size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_unit` with a ``size`` x ``size`` boxcar mean of the intensity before decibels (read with the
    filter's margin, so a pixel's value does not depend on the window it is read through)."""
    check_despeckle(size, decibels, path)
    inner = None
    if window is not None:
        info = image_info(path)
        window, inner = margin_window(window, size // 2, info.height, info.width)
    raw = read_raw(path, window, bands, max_pixels)
    valid = valid_mask(raw, nodata)
    intensity = np.square(raw.values, dtype=np.float64) if decibels == "amplitude" else raw.values
    unit = to_decibels(boxcar_mean(intensity, valid, size), "intensity")
    if inner is not None:
        top, left, rows, cols = inner
        unit, valid = unit[top:top + rows, left:left + cols], valid[top:top + rows, left:left + cols]
    unit[~valid] = 0.0
    return unit, valid


#: what ``--decibels`` converts: amplitude (20 log10) or intensity / power (10 log10)
DECIBEL_INPUTS = ("amplitude", "intensity")
#: the intensity floor before the logarithm: -50 dB, the noise floor of spaceborne SAR is about -25
DECIBEL_FLOOR = 1e-5


def to_decibels(values: np.ndarray, kind: str) -> np.ndarray:
    """SAR amplitude or intensity (complex values: their amplitude, already) as float32 decibels: the
    intensity (amplitude squared) is floored at ``DECIBEL_FLOOR`` (-50 dB), so zero and negative values become
    -50 dB, not minus infinity; NaN stays NaN."""
    intensity = np.square(values, dtype=np.float64) if kind == "amplitude" else values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        return (10 * np.log10(np.maximum(intensity, DECIBEL_FLOOR))).astype(np.float32)


def valid_mask(raw: RawPixels, nodata: float | None = None) -> np.ndarray:
    """Where a window holds data: its file says so, no band is NaN or infinite, and none equals ``nodata``."""
    valid = raw.valid.copy()
    if np.issubdtype(raw.values.dtype, np.floating):
        valid &= np.isfinite(raw.values).all(-1)
    if nodata is not None and not math.isnan(nodata):
        valid &= ~(raw.values == nodata).any(-1)
    return valid


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _ints(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return tuple(int(v) for v in values) if values else None


def pad_to(pixels: Pixels, height: int, width: int, fill: torch.Tensor) -> Pixels:
    """``pixels`` padded at the bottom and right to ``height`` x ``width``: the padding invalid, at ``fill``."""
    h, w = pixels.valid.shape
    if (h, w) == (height, width):
        return pixels
    image = fill.to(pixels.image.dtype).expand(pixels.image.shape[0], height, width).clone()
    valid = torch.zeros(height, width, dtype=torch.bool)
    image[:, :h, :w] = pixels.image
    valid[:h, :w] = pixels.valid
    return Pixels(image, valid)
