"""Segmentation masks: class palettes, and a mask window read as class indices on its image's grid.

Masks are index images (PNG/TIFF, one band: the class index, ``ignore_index`` for
"don't care") or RGB colour-coded with a palette (``name: [r, g, b]`` per class, plus
colours mapped to ignore). A georeferenced mask raster in another CRS or resolution than its
georeferenced image (a label raster from another source) is read on the image's grid:
reprojected on the fly, nearest neighbour, pixels it does not cover ignored.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from cspt.config import read_yaml
from cspt.data.images import ImageReadError, WindowBox, is_raster, open_pil, open_raster
from cspt.data.vector_labels import SceneGrid, scene_grid
from cspt.errors import CsptError

log = logging.getLogger("cspt")


@dataclass
class Palette:
    """Class names, their mask colours (RGB masks) and the colours that mean "ignore"."""

    classes: list[str]
    colors: list[tuple[int, int, int]] | None = None  #: None: masks hold class indices
    ignore_colors: list[tuple[int, int, int]] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Palette":
        """``classes: {name: [r, g, b], ...}`` and optional ``ignore: [[r, g, b], ...]``."""
        values = read_yaml(path)
        classes = values.get("classes")
        if not isinstance(classes, dict) or len(classes) < 2:
            raise CsptError(f"{path}: needs 'classes:' mapping at least two names to [r, g, b]")
        try:
            colors = [_rgb(c) for c in classes.values()]
            ignore = [_rgb(c) for c in values.get("ignore") or []]
        except (TypeError, ValueError):
            raise CsptError(f"{path}: colours must be [r, g, b] with values 0-255") from None
        if len(set(colors)) != len(colors):
            raise CsptError(f"{path}: two classes share a colour")
        return cls([str(name) for name in classes], colors, ignore)

    def to_dict(self) -> dict:
        return {"classes": self.classes, "colors": self.colors, "ignore_colors": self.ignore_colors}

    @classmethod
    def from_dict(cls, values: dict) -> "Palette":
        colors = [tuple(c) for c in values["colors"]] if values.get("colors") else None
        return cls(list(values["classes"]), colors, [tuple(c) for c in values.get("ignore_colors", [])])


def _rgb(value: Sequence[int]) -> tuple[int, int, int]:
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(value)
    return rgb  # type: ignore[return-value]


def label_grid(image: Path, mask: Path) -> SceneGrid | None:
    """The grid ``mask`` must be read on: ``image``'s, when both are georeferenced rasters on different grids
    (None: they match pixel for pixel, or one of them has no map position). Read once per process and
    version of the two files."""
    if not (is_raster(image) and is_raster(mask)):
        return None
    return _label_grid(image.resolve(), mask.resolve(), _version(image), _version(mask))


def _version(path: Path) -> int:
    """When a file last changed (0 for what is not a plain file: a GDAL virtual path, a shard member)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=4096)
def _label_grid(image: Path, mask: Path, image_version: int, mask_version: int) -> SceneGrid | None:
    target, source = scene_grid(image), scene_grid(mask, "mask")
    if target.crs is None or source.crs is None:
        return None
    same = (source.crs == target.crs and (source.height, source.width) == (target.height, target.width)
            and source.transform.almost_equals(target.transform))
    return None if same else target


def read_mask(path: Path, palette: Palette, ignore_index: int, window: WindowBox | None = None,
              onto: SceneGrid | None = None) -> np.ndarray:
    """The mask (or its ``window``: top, left, height, width) as ``int64`` class indices (``ignore_index`` where
    ignored); with ``onto``, read on that grid (see :func:`label_grid`)."""
    try:
        pixels, covered = _mask_pixels(path, palette, window, onto)
    except (CsptError, ImageReadError):
        raise
    except Exception as err:  # any decoder complaint
        raise ImageReadError(f"{path}: unreadable mask ({err})") from None
    if covered is not None:  # what the mask does not cover: a known value, then ignored
        pixels = pixels.copy()
        pixels[~covered] = palette.colors[0] if palette.colors and pixels.ndim == 3 else 0
    labels = _class_indices(path, pixels, palette, ignore_index)
    if covered is not None:
        labels[~covered] = ignore_index
    return labels


#: pixels of a mask raster read at a time when a whole mask is checked (whole rows: memory independent of the
#: mask's size)
MASK_STRIP_PIXELS = 4_000_000


def mask_strips(path: Path, palette: Palette, ignore_index: int, image: Path, height: int, width: int,
                onto: SceneGrid | None = None) -> Iterator[np.ndarray]:
    """The mask of a ``height`` x ``width`` ``image`` (on ``onto``'s grid when given) as class indices: strip by
    strip for a raster (memory of a strip, whatever the mask's size), whole for other images. A mask of another
    size (and not on another grid) is refused in one line."""
    if not is_raster(path):
        labels = read_mask(path, palette, ignore_index)
        if labels.shape != (height, width):
            raise CsptError(f"{path}: mask is {labels.shape[1]}x{labels.shape[0]} but its image {image.name} is "
                            f"{width}x{height}")
        yield labels
        return
    try:
        with open_raster(path) as src:
            nodata, stored = src.nodata, (src.height, src.width)
    except Exception as err:  # GDAL: not a raster, corrupt
        raise ImageReadError(f"{path}: unreadable mask ({str(err).splitlines()[0] if str(err) else err})") from None
    if palette.colors is None and nodata is not None and 0 <= nodata < len(palette.classes) and nodata % 1 == 0:
        log.warning("%s: declares nodata %g, the index of class %s: its pixels are not labelled", path, nodata,
                    palette.classes[int(nodata)])
    if onto is None and stored != (height, width):
        raise CsptError(f"{path}: mask is {stored[1]}x{stored[0]} but its image {image.name} is {width}x{height}; "
                        "a mask on another grid needs both to be georeferenced rasters")
    step = max(1, MASK_STRIP_PIXELS // width)
    for top in range(0, height, step):
        yield read_mask(path, palette, ignore_index, (top, 0, min(step, height - top), width), onto)


def _mask_pixels(path: Path, palette: Palette, window: WindowBox | None,
                 onto: SceneGrid | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored pixels ``(H, W)`` or ``(H, W, 3)`` of a mask window, and which of them the mask covers (None:
    all): a raster's own nodata or alpha, and what it does not reach on ``onto``'s grid, are not labelled.
    Rasters are read window by window (through a warped view with ``onto``), other images whole."""
    if not is_raster(path):
        with open_pil(path) as image:
            pixels = np.asarray(image.convert("RGB") if palette.colors and image.mode != "RGB" else image)
        if window is not None:
            top, left, height, width = window
            pixels = pixels[top:top + height, left:left + width]
        return pixels, None
    gdal_window = None if window is None else Window(window[1], window[0], window[3], window[2])
    with open_raster(path) as src:
        if onto is None:
            covered = None if src.mask_flag_enums[0] == [MaskFlags.all_valid] else \
                src.read_masks(1, window=gdal_window) > 0  # the mask's own nodata or alpha: not labelled
            return _raster_mask(src, palette, gdal_window), covered
        with WarpedVRT(src, crs=onto.crs, transform=onto.transform, width=onto.width, height=onto.height,
                       resampling=Resampling.nearest, add_alpha=True) as warped:
            covered = warped.read(warped.count, window=gdal_window) > 0
            return _raster_mask(warped, palette, gdal_window, warped.count - 1), covered


def _raster_mask(src: DatasetReader | WarpedVRT, palette: Palette, window: Window | None,
                 count: int | None = None) -> np.ndarray:
    """A mask raster's window: its first band (indices, or its colour table's colours for a colour-coded mask;
    a second band is an alpha band) or its first three (RGB)."""
    count = count or src.count
    if count <= 2:
        values = src.read(1, window=window)
        if palette.colors:
            try:
                table = src.colormap(1)
            except ValueError:  # grey levels, as colours
                return np.repeat(values[..., None], 3, axis=-1)
            colours = np.zeros((256, 3), np.uint8)
            for index, rgba in table.items():
                colours[index] = rgba[:3]
            return colours[values]
        return values
    return np.moveaxis(src.read([1, 2, 3], window=window), 0, -1)


def _class_indices(path: Path, pixels: np.ndarray, palette: Palette, ignore_index: int) -> np.ndarray:
    """Stored mask pixels as class indices: checked index values, or colours looked up in the palette."""
    if palette.colors is None:
        if pixels.ndim != 2:
            raise CsptError(f"{path}: an index mask needs one band, found {pixels.shape[-1]} "
                            "(for colour-coded masks give a --palette)")
        labels = pixels.astype(np.int64)
        bad = np.unique(labels[(labels != ignore_index) & ((labels < 0) | (labels >= len(palette.classes)))])
        if bad.size:
            raise CsptError(f"{path}: class indices {', '.join(map(str, bad[:8]))} outside 0-"
                            f"{len(palette.classes) - 1} (and ignore {ignore_index})")
        return labels
    if pixels.ndim != 3 or pixels.shape[-1] < 3:
        raise CsptError(f"{path}: a colour-coded mask needs RGB pixels")
    packed = (pixels[..., 0].astype(np.int64) << 16) | (pixels[..., 1].astype(np.int64) << 8) | pixels[..., 2]
    lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette.colors)}
    lookup.update({(r << 16) | (g << 8) | b: ignore_index for r, g, b in palette.ignore_colors})
    codes = np.array(sorted(lookup), dtype=np.int64)
    position = np.searchsorted(codes, packed).clip(max=len(codes) - 1)
    known = codes[position] == packed
    if not known.all():
        unknown = np.unique(packed[~known])
        found = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:8].tolist())
        raise CsptError(f"{path}: colours not in the palette: {found}; add them to the palette's classes "
                        "or its ignore list")
    return np.array([lookup[int(c)] for c in codes], dtype=np.int64)[position]


