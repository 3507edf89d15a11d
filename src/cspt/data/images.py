"""Read any remote-sensing image as stored: JPEG/PNG/TIFF/GeoTIFF/VRT, 8/16-bit or float, 1..N bands.

:func:`read_raw` returns a window's pixels in the file's own type and which of them hold
data (a GeoTIFF's nodata value, internal mask or alpha band; a PNG's alpha). It knows
nothing of models: :class:`cspt.data.pixels.PixelContract` selects bands, masks, scales and
normalises. Rasters go through rasterio (GDAL): a window of a large, tiled or compressed
GeoTIFF or a VRT mosaic touches only that window; a GeoTIFF inside a tar shard is read
through a GDAL in-memory file, with its nodata and masks. Other images go through PIL.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, UnidentifiedImageError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.windows import Window

from cspt.data.formats import IMAGE_SUFFIXES, RASTER_SUFFIXES, TIFF_SUFFIXES  # noqa: F401 (re-exported)
from cspt.data.shards import is_member, member_bytes
from cspt.errors import CsptError

log = logging.getLogger("cspt")

#: the most pixels cspt decodes from one JPEG/PNG by default (remote-sensing scenes are large; PIL's own
#: process-wide guard, ``PIL.Image.MAX_IMAGE_PIXELS``, stays as the host program set it)
DEFAULT_MAX_IMAGE_PIXELS = 2**31
#: GDAL's block cache in MB while cspt reads or writes a raster (GDAL's own default, 5% of the machine's
#: memory, would let a streamed scene's blocks grow the process far past its buffers); set per call through
#: ``rasterio.Env``, never in the process environment, and only where the host has not sized it first
GDAL_CACHE_MB = 256


class ImageReadError(CsptError):
    """An image that cannot be read; datasets skip and count these."""


class BandSelectionError(CsptError):
    """A band selection names a band a file does not have: a setting to fix, not a file to skip."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: size, spectral band count, stored pixel type and alpha band."""

    height: int
    width: int
    bands: int  #: spectral bands (an alpha band is a mask, not counted)
    dtype: str = "uint8"  #: the stored pixel type (numpy name)
    alpha: bool = False  #: the file has an alpha band too (after the spectral ones; a band selection may name it)


@dataclass
class RawPixels:
    """A window as stored: ``values`` ``(H, W, bands)`` in the file's type, ``valid`` ``(H, W)``."""

    values: np.ndarray
    valid: np.ndarray


#: PIL modes whose pixels are not 8-bit
PIL_DTYPES = {"I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32", "1": "bool"}
#: PIL modes with an alpha band, and what they become without it
PIL_ALPHA = {"RGBA": "RGB", "LA": "L", "PA": "RGB", "RGBa": "RGB", "La": "L"}

#: (top, left, height, width) in pixels
WindowBox = tuple[int, int, int, int]

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # a plain TIFF is a picture, not an error


@contextmanager
def gdal_env() -> Iterator[None]:
    """GDAL settings for one read or write (see :data:`GDAL_CACHE_MB`)."""
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        yield


def is_raster(path: Path) -> bool:
    """Whether GDAL reads the file: a TIFF (on disk or in a shard), a VRT, or a GDAL virtual path."""
    return path.suffix.lower() in RASTER_SUFFIXES or str(path).startswith("/vsi")


@contextmanager
def open_raster(path: Path) -> Iterator[rasterio.io.DatasetReader]:
    """A rasterio dataset of a file, GDAL virtual path or shard member; a file GDAL cannot open is an
    :class:`ImageReadError` naming it (to skip and count), whoever opens it."""
    with gdal_env(), ExitStack() as stack:
        try:
            if is_member(path):
                src = stack.enter_context(stack.enter_context(MemoryFile(member_bytes(path))).open())
            else:
                src = stack.enter_context(rasterio.open(gdal_name(path)))
        except RasterioError as err:
            raise ImageReadError(f"{path}: cannot read image header ({_reason(err)})") from None
        yield src


#: an archive handler given an absolute archive path (``/vsizip//data/a.zip/inner.tif``)
ABSOLUTE_ARCHIVE = re.compile(r"^(/vsi(?:zip|tar|7z|rar)/)/(.+?\.(?:zip|tar|tgz|tar\.gz|7z|rar))(/.*)?$", re.I)


def virtual_path(text: str) -> Path:
    """A GDAL virtual path as a :class:`~pathlib.Path` that keeps its meaning: an absolute archive path is put
    in GDAL's braces (``/vsizip/{/data/a.zip}/inner.tif``), since pathlib folds the ``//`` that marks it."""
    found = ABSOLUTE_ARCHIVE.match(text)
    return Path(f"{found[1]}{{/{found[2]}}}{found[3] or ''}" if found else text)


def gdal_name(path: Path) -> str:
    """The name GDAL opens: a virtual path keeps the ``//`` of its URL (``/vsicurl/https://...``), which
    :class:`~pathlib.Path` folds into one slash."""
    text = str(path)
    return re.sub(r"^(/vsi\w+/)(\w+):/(?!/)", r"\1\2://", text) if text.startswith("/vsi") else text


def spectral_bands(src: rasterio.io.DatasetReader) -> list[int]:
    """The 1-based bands of a raster that are not alpha (an alpha band is said once per folder: GDAL marks the
    fourth band of a 4-band byte TIFF alpha by default, and that may be a near-infrared band)."""
    bands = [i + 1 for i, interp in enumerate(src.colorinterp) if interp != ColorInterp.alpha]
    if bands and len(bands) < src.count:
        alpha = next(i + 1 for i in range(src.count) if i + 1 not in bands)
        _say_alpha(str(Path(src.name).parent), src.count, alpha)
    return bands or list(range(1, src.count + 1))


@functools.lru_cache(maxsize=256)
def _say_alpha(folder: str, count: int, alpha: int) -> None:
    log.warning("%s: in its %d-band rasters band %d is marked alpha and read as the valid mask, not as data; if "
                "it is a spectral band (near-infrared), pass --bands %s", folder, count, alpha,
                " ".join(map(str, range(1, count + 1))))


def image_info(path: str | Path) -> ImageInfo:
    """Size, band count and type from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        if is_raster(path):
            with open_raster(path) as src:
                spectral = len(spectral_bands(src))
                return ImageInfo(src.height, src.width, spectral, src.dtypes[0], spectral < src.count)
        with open_pil(path, None) as img:
            return ImageInfo(img.height, img.width, _pil_bands(img), PIL_DTYPES.get(img.mode, "uint8"),
                             img.mode in PIL_ALPHA)
    except ImageReadError:
        raise
    except Exception as err:  # any library's complaint means "unreadable"
        raise ImageReadError(f"{path}: cannot read image header ({_reason(err)})") from None


def dtype_kind(name: str) -> str:
    """NumPy's kind letter of a GDAL data type name (``u``, ``i``, ``f``; ``c`` for every complex type, GDAL's
    complex integers too, which NumPy does not know)."""
    return "c" if name.startswith("complex") else np.dtype(name).kind


def may_lack_data(path: str | Path) -> bool:
    """Whether a file can hold pixels without data by itself: a nodata value, mask or alpha band, or a
    floating-point type (NaN); cheap, from the header."""
    path = Path(path)
    try:
        if is_raster(path):
            with open_raster(path) as src:
                return dtype_kind(src.dtypes[0]) in "fc" or any(
                    flags != [MaskFlags.all_valid] for flags in src.mask_flag_enums)
        with open_pil(path, None) as img:
            return img.mode in PIL_ALPHA or img.mode == "F" or (img.mode == "P" and "transparency" in img.info)
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot read image header ({_reason(err)})") from None


def checked_bands(bands: Sequence[int] | None, available: int, path: Path) -> list[int] | None:
    """``bands`` (1-based), checked against a file with ``available`` bands (None: every band)."""
    if not bands:
        return None
    outside = [b for b in bands if not 1 <= b <= available]
    if outside:
        raise BandSelectionError(f"{path}: band {outside[0]} is out of range: the file has {available} "
                                 f"band(s), numbered from 1 (--bands)")
    return list(bands)


def read_raw(path: str | Path, window: WindowBox | None = None, bands: Sequence[int] | None = None,
             max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> RawPixels:
    """The ``bands`` (1-based file bands, as GDAL numbers them; None: every band but alpha) of a window (None:
    all) and its valid mask (the file's nodata, masks and alpha)."""
    path = Path(path)
    try:
        if is_raster(path):
            with open_raster(path) as src:
                return _raster_window(src, window, bands, path)
        return _pil_window(path, window, bands, max_pixels)
    except (ImageReadError, BandSelectionError):
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot decode image ({_reason(err)})") from None


def _gdal_window(window: WindowBox | None) -> Window | None:
    return None if window is None else Window(window[1], window[0], window[3], window[2])


def _raster_window(src: rasterio.io.DatasetReader, window: WindowBox | None, bands: Sequence[int] | None,
                   path: Path) -> RawPixels:
    chosen = checked_bands(bands, src.count, path) or spectral_bands(src)
    gdal_window = _gdal_window(window)
    values = np.moveaxis(src.read(chosen, window=gdal_window), 0, -1)
    if values.dtype.kind == "c":  # SAR single-look complex: its amplitude (--decibels amplitude for dB)
        values = np.abs(values).astype(np.float32)
    if any(src.colorinterp[b - 1] == ColorInterp.alpha for b in chosen):  # the alpha band read as data: no mask
        nodata = [src.nodatavals[b - 1] for b in chosen]
        valid = np.ones(values.shape[:2], dtype=bool)
        for band, value in enumerate(nodata):
            if value is not None:
                valid &= values[..., band] != value
    elif all(src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in chosen):
        valid = np.ones(values.shape[:2], dtype=bool)
    else:
        valid = (src.read_masks(chosen, window=gdal_window) > 0).all(0)
    return RawPixels(values, valid)


def _pil_window(path: Path, window: WindowBox | None, bands: Sequence[int] | None,
                max_pixels: int | None) -> RawPixels:
    values, alpha = _decode_whole_cached(path, max_pixels) if window is not None else _decode_pil(path, max_pixels)
    if window is not None:
        top, left, height, width = window
        values = values[top:top + height, left:left + width]
        alpha = None if alpha is None else alpha[top:top + height, left:left + width]
    values = values[:, :, None] if values.ndim == 2 else values
    selected = checked_bands(bands, values.shape[-1], path)
    if selected:
        values = values[..., [b - 1 for b in selected]]
    valid = np.ones(values.shape[:2], dtype=bool) if alpha is None else alpha > 0
    return RawPixels(values, valid)


def read_resized(path: str | Path, box: WindowBox, size: int,
                 max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray | None:
    """The ``box`` of an 8-bit RGB or grey JPEG/PNG resized to ``size`` x ``size``, as uint8 ``(H, W, bands)``.

    PIL crops and resizes in one antialiased bicubic pass, and decodes a JPEG at the
    smallest power-of-two reduction (DCT scaling) that still leaves the box at least
    ``size`` pixels wide: a 256 px photo cropped to 64 px is mostly decoded at 128 px.
    Returns None for what this path does not cover (rasters, 16-bit, palette, alpha).
    """
    path = Path(path)
    if is_raster(path):
        return None
    top, left, height, width = box
    try:
        with open_pil(path, max_pixels) as img:
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
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot decode image ({_reason(err)})") from None
    return array[:, :, None] if array.ndim == 2 else array


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """Pixels on the *dtype scale*: integers divided by their type's maximum, floats as they are (float32)."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    return np.array(array, dtype=np.float32)


def display_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(H, W, bands)`` 0-1 pixels as 8-bit RGB for pictures: the first three bands, or grey repeated."""
    bands = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)
    return (np.nan_to_num(bands).clip(0, 1) * 255).round().astype(np.uint8)


def _reason(err: BaseException) -> str:
    """The first line of what went wrong; for GDAL's "see previous exception", the deepest exception it chained
    (a truncated TIFF: "TIFFFillTile:Read error at row 512 ...")."""
    if "previous exception" in str(err):
        while (err.__cause__ or err.__context__) is not None:
            err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _pil_bands(img: Image.Image) -> int:
    if img.mode in PIL_ALPHA:
        return len(img.getbands()) - 1  # alpha is not a spectral band
    if img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        return 3
    return len(img.getbands())


def open_pil(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """``Image.open`` under cspt's own pixel limit ``max_pixels`` (None: none), not PIL's global one.

    An image over PIL's decompression-bomb guard but within ``max_pixels`` is opened by its
    format's registered opener, which does not consult the guard; nothing process-wide is
    changed.
    """
    try:
        image = Image.open(_source(path))
    except Image.DecompressionBombError:
        image = _open_past_pil_guard(path)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot decode image ({_reason(err)})") from None
    if max_pixels and image.width * image.height > max_pixels:
        image.close()
        raise ImageReadError(f"{path}: {image.width} x {image.height} pixels, more than --max-image-pixels "
                             f"{max_pixels}; raise it if the file is trusted")
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
    return io.BytesIO(member_bytes(path)) if is_member(path) else path


def _open_binary(path: Path) -> io.BufferedIOBase:
    return io.BytesIO(member_bytes(path)) if is_member(path) else open(path, "rb")


def read_bytes(path: Path) -> bytes:
    """The encoded file (or shard member), undecoded."""
    try:
        with _open_binary(path) as handle:
            return handle.read()
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({_reason(err)})") from None


def _decode_pil(path: Path, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The pixels and, for images with an alpha band, the alpha (0: no data)."""
    img = open_pil(path, max_pixels)
    with img:
        alpha = None
        if img.mode in PIL_ALPHA:
            alpha = np.asarray(img.getchannel(img.getbands()[-1]))
            img = img.convert(PIL_ALPHA[img.mode])
        elif img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
            converted = img.convert("RGBA" if img.mode == "P" and "transparency" in img.info else "RGB")
            if converted.mode == "RGBA":
                alpha = np.asarray(converted.getchannel("A"))
                converted = converted.convert("RGB")
            img = converted
        return np.asarray(img), alpha


@functools.lru_cache(maxsize=2)
def _decode_whole_cached(path: Path, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Images without random access are decoded whole to cut windows: keep the last few decoded."""
    return _decode_pil(path, max_pixels)
