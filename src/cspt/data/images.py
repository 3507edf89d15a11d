"""Read any remote-sensing image: JPEG/PNG/TIFF/GeoTIFF, 8/16-bit or float, 1..N bands.

Pixels come back as ``float32`` arrays of shape ``(H, W, bands)`` on a 0-1 scale
(integer types divided by their maximum: :mod:`cspt.data.scaling` maps the data's real range
onto the model's). TIFFs are read through rasterio (GDAL): a window of a large, tiled or
compressed GeoTIFF touches only that window; TIFFs inside tar shards go through tifffile.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import tifffile
from PIL import Image, UnidentifiedImageError
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from cspt.data.shards import is_member, open_member
from cspt.errors import CsptError

#: the most pixels cspt decodes from one JPEG/PNG (remote-sensing scenes are large; PIL's own guard,
#: ``PIL.Image.MAX_IMAGE_PIXELS``, stays as the host program set it); ``--max-image-pixels`` changes it
MAX_PIXELS_VARIABLE = "CSPT_MAX_IMAGE_PIXELS"
#: the 1-based bands every reader returns, in order (``--bands``; unset: all, in file order), for this process
#: and the loader processes it starts
BANDS_VARIABLE = "CSPT_BANDS"
DEFAULT_MAX_IMAGE_PIXELS = 2**31

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff"}

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # a plain TIFF is a picture, not an error
#: GDAL's block cache (read and write) in MB unless the environment sets it: GDAL's own default, 5% of the
#: machine's memory, would let a streamed scene's blocks grow the process far past its buffers
os.environ.setdefault("GDAL_CACHEMAX", "256")


class ImageReadError(CsptError):
    """An image that cannot be read; datasets skip and count these."""


class BandSelectionError(CsptError):
    """``--bands`` names a band a file does not have: a setting to fix, not a file to skip."""


@dataclass(frozen=True)
class ImageInfo:
    height: int
    width: int
    bands: int
    dtype: str = "uint8"  #: the stored pixel type (numpy name)


#: PIL modes whose pixels are not 8-bit
PIL_DTYPES = {"I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32", "1": "bool"}


#: (top, left, height, width) in pixels
WindowBox = tuple[int, int, int, int]


def image_info(path: str | Path) -> ImageInfo:
    """Size and band count from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        if is_raster(path):
            with rasterio.open(path) as src:
                info = ImageInfo(src.height, src.width, src.count, src.dtypes[0])
        elif path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(_source(path)) as tif:
                series = tif.series[0]
                info = ImageInfo(*_tiff_info(series.shape, series.axes), series.dtype.name)
        else:
            with open_pil(path) as img:
                info = ImageInfo(img.height, img.width, _pil_bands(img), PIL_DTYPES.get(img.mode, "uint8"))
    except Exception as err:  # any library's complaint means "unreadable"
        raise ImageReadError(f"{path}: cannot read image header ({_reason(err)})") from None
    selected = selected_bands(info.bands, path)
    return dataclasses.replace(info, bands=len(selected)) if selected else info


def set_band_selection(bands: Sequence[int] | None) -> None:
    """Read only these 1-based bands, in this order, from every image (None: all bands)."""
    os.environ[BANDS_VARIABLE] = " ".join(str(b) for b in bands or [])


def band_selection() -> list[int]:
    """The ``--bands`` in force (empty: all)."""
    return [int(b) for b in os.environ.get(BANDS_VARIABLE, "").split()]


def selected_bands(available: int, path: Path) -> list[int]:
    """:func:`band_selection`, checked against a file with ``available`` bands."""
    bands = band_selection()
    outside = [b for b in bands if not 1 <= b <= available]
    if outside:
        raise BandSelectionError(f"{path}: --bands {outside[0]} is out of range: the file has {available} "
                                 f"band(s), numbered from 1")
    return bands


def read_image(path: str | Path, window: WindowBox | None = None) -> np.ndarray:
    """Pixels ``(H, W, bands)`` as float32 on a 0-1 scale, optionally only a window."""
    path = Path(path)
    try:
        if is_raster(path):
            with rasterio.open(path) as src:
                array = _raster_pixels(src, window)
        elif path.suffix.lower() in TIFF_SUFFIXES:
            array = _read_tiff_member(path, window)
        else:
            array = _read_pil(path, window)
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot decode image ({_reason(err)})") from None
    return _selected_unit_float(array, path)


def read_valid(path: str | Path, window: WindowBox | None = None) -> np.ndarray:
    """Which pixels ``(H, W)`` hold data: False where a GeoTIFF's nodata value, mask or alpha says none."""
    path = Path(path)
    if is_raster(path):
        try:
            with rasterio.open(path) as src:
                return _raster_valid(src, window)
        except Exception as err:
            raise ImageReadError(f"{path}: cannot read its nodata mask ({_reason(err)})") from None
    if window is None:
        info = image_info(path)
        return np.ones((info.height, info.width), dtype=bool)
    return np.ones(window[2:], dtype=bool)


def read_masked(path: str | Path, window: WindowBox | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_image` and :func:`read_valid` of the same window, a GeoTIFF opened once."""
    path = Path(path)
    if not is_raster(path):
        return read_image(path, window), read_valid(path, window)
    try:
        with rasterio.open(path) as src:
            array, valid = _raster_pixels(src, window), _raster_valid(src, window)
    except Exception as err:
        raise ImageReadError(f"{path}: cannot decode image ({_reason(err)})") from None
    return _selected_unit_float(array, path), valid


def is_raster(path: Path) -> bool:
    """Whether rasterio (GDAL) reads the file: a TIFF on disk (TIFFs in tar shards go through tifffile)."""
    return path.suffix.lower() in TIFF_SUFFIXES and not is_member(path)


def _gdal_window(window: WindowBox | None) -> Window | None:
    return None if window is None else Window(window[1], window[0], window[3], window[2])


def _raster_pixels(src: rasterio.io.DatasetReader, window: WindowBox | None) -> np.ndarray:
    return np.moveaxis(src.read(window=_gdal_window(window)), 0, -1)


def _raster_valid(src: rasterio.io.DatasetReader, window: WindowBox | None) -> np.ndarray:
    if src.nodata is None and all(flag == MaskFlags.all_valid for flag in src.mask_flag_enums[0]):
        return np.ones((src.height, src.width) if window is None else window[2:], dtype=bool)
    return src.dataset_mask(window=_gdal_window(window)) > 0


def _selected_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """The ``--bands`` of decoded pixels, on the 0-1 scale."""
    array = array[:, :, None] if array.ndim == 2 else array
    selected = selected_bands(array.shape[-1], path)
    return to_unit_float(array[..., [b - 1 for b in selected]] if selected else array, path)


def read_resized(path: str | Path, box: WindowBox, size: int) -> np.ndarray | None:
    """The ``box`` of an 8-bit RGB or grey JPEG/PNG resized to ``size`` x ``size``, as 0-1 ``(H, W, bands)``.

    PIL crops and resizes in one antialiased bicubic pass, and decodes a JPEG at the
    smallest power-of-two reduction (DCT scaling) that still leaves the box at least
    ``size`` pixels wide: a 256 px photo cropped to 64 px is mostly decoded at 128 px.
    Returns None for what this path does not cover (TIFF, 16-bit, palette, alpha, ``--bands``).
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES or band_selection():
        return None
    top, left, height, width = box
    try:
        with open_pil(path) as img:
            if img.mode not in ("RGB", "L"):
                return None
            full_width, full_height = img.size
            reduction = 1
            while reduction < 8 and min(height, width) // (2 * reduction) >= size:
                reduction *= 2
            if reduction > 1:
                img.draft(img.mode, (-(-full_width // reduction), -(-full_height // reduction)))
            sx, sy = img.width / full_width, img.height / full_height
            region = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
            array = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=region))
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file") from None
    except Exception as err:
        raise ImageReadError(f"{path}: cannot decode image ({_reason(err)})") from None
    return to_unit_float(array, path)


def display_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, bands)`` 0-1 pixels as 8-bit RGB for pictures: the first three bands, or grey repeated."""
    bands = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)
    return (bands.clip(0, 1) * 255).round().astype(np.uint8)


def to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer pixels divided by their type's maximum; floats as they are."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    if np.issubdtype(array.dtype, np.floating):
        return np.ascontiguousarray(array, dtype=np.float32)
    raise ImageReadError(f"{path}: unsupported pixel type {array.dtype}")


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _pil_bands(img: Image.Image) -> int:
    if img.mode in ("RGBA", "LA", "PA"):
        return len(img.getbands()) - 1  # alpha is not a spectral band
    if img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        return 3
    return len(img.getbands())


def _read_pil(path: Path, window: WindowBox | None) -> np.ndarray:
    if window is None:
        return _decode_pil(path)
    top, left, height, width = window
    return _decode_whole_cached(path)[top : top + height, left : left + width]


def set_max_image_pixels(limit: int | None) -> None:
    """The most pixels cspt will decode from one JPEG/PNG image (None: no limit), for this process
    and the loader processes it starts."""
    os.environ[MAX_PIXELS_VARIABLE] = str(limit or 0)


def max_image_pixels() -> int | None:
    value = os.environ.get(MAX_PIXELS_VARIABLE)
    limit = int(value) if value and value.strip().isdigit() else DEFAULT_MAX_IMAGE_PIXELS
    return limit or None


def open_pil(path: Path) -> Image.Image:
    """``Image.open`` under cspt's own pixel limit (:func:`max_image_pixels`), not PIL's global one.

    An image over PIL's decompression-bomb guard but within cspt's limit is opened by its
    format's registered opener, which does not consult the guard; nothing process-wide
    is changed.
    """
    try:
        image = Image.open(_source(path))
    except Image.DecompressionBombError:
        image = _open_past_pil_guard(path)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file") from None
    limit = max_image_pixels()
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise ImageReadError(f"{path}: {image.width} x {image.height} pixels, more than --max-image-pixels "
                             f"{limit}; raise it if the file is trusted")
    return image


def _open_past_pil_guard(path: Path) -> Image.Image:
    """Open ``path`` with the first registered PIL format that accepts its header."""
    Image.init()
    with _open_binary(path) as handle:
        prefix = handle.read(16)
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        if accept is not None and not accept(prefix):
            continue
        try:
            return factory(_source(path))
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise ImageReadError(f"{path}: not an image file")


def _source(path: Path) -> Path | io.BytesIO:
    """What a reader opens: the file, or the bytes of a shard member (``SHARD.tar::NAME``)."""
    return open_member(path) if is_member(path) else path


def _open_binary(path: Path) -> io.BufferedIOBase:
    return open_member(path) if is_member(path) else open(path, "rb")


def read_bytes(path: Path) -> bytes:
    """The encoded file (or shard member), undecoded."""
    try:
        with _open_binary(path) as handle:
            return handle.read()
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({_reason(err)})") from None


def _decode_pil(path: Path) -> np.ndarray:
    img = open_pil(path)
    with img:
        if img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "PA"):
            img = img.convert("RGB")
        elif img.mode == "LA":
            img = img.convert("L")
        return np.asarray(img)


def _tiff_info(shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    array_like = np.empty(shape, dtype=np.uint8)
    return _tiff_to_hwc(array_like, axes).shape


def _tiff_to_hwc(array: np.ndarray, axes: str) -> np.ndarray:
    """Reorder a tifffile array with ``axes`` (e.g. YXS, SYX, CYX, QYX) to ``(H, W, bands)``."""
    if array.ndim == 2:
        return array[:, :, None]
    y, x = axes.index("Y"), axes.index("X")
    band_axes = [i for i in range(array.ndim) if i not in (y, x)]
    array = np.moveaxis(array, [y, x], [0, 1])
    return array.reshape(array.shape[0], array.shape[1], -1) if band_axes else array[:, :, None]


def _read_tiff_member(path: Path, window: WindowBox | None) -> np.ndarray:
    """A TIFF inside a tar shard (no random access): decoded whole, the last few kept, the window cut."""
    if window is None:
        return _decode_tiff(path)
    hwc = _decode_whole_cached(path)
    top, left, height, width = window
    return np.array(hwc[top : top + height, left : left + width])


def _decode_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(_source(path)) as tif:
        series = tif.series[0]
        return _tiff_to_hwc(series.asarray(), series.axes)


@functools.lru_cache(maxsize=2)
def _decode_whole_cached(path: Path) -> np.ndarray:
    """Files without random access are decoded whole to cut windows: keep the last few decoded."""
    return _decode_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES else _decode_pil(path)
