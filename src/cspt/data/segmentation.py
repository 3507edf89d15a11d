"""Image/mask pairs for semantic segmentation: pairing, checks, training crops.

Masks are read as :mod:`cspt.data.masks` says. Every mask is checked once before training: its size
must match its image (or both are georeferenced, and the mask is read on the image's grid) and every
colour must be in the palette.
"""

from __future__ import annotations

import csv
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from rasterio.windows import Window
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from cspt.data.files import find_images
from cspt.data.images import WindowBox, image_info, is_raster, open_raster
from cspt.data.masks import Palette, label_grid, mask_strips, read_mask
from cspt.data.photometric import photometric_distortion
from cspt.data.pixels import PixelContract, Pixels, pad_to
from cspt.data.sampling import load_or_replace
from cspt.errors import CsptError

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")


@dataclass
class Pair:
    """An image, its mask, and the window of them a split gives (``top``, ``left``, ``height``, ``width`` in
    image pixels; by default the whole image); with ``zone``, only the window's pixels valued ``zone_value``
    there are the region's (a split by polygons)."""

    image: Path
    mask: Path
    height: int
    width: int
    top: int = 0
    left: int = 0
    zone: Path | None = None  #: a raster on the image's grid saying which pixels of the window are the region's
    zone_value: int = 0  #: the region's value in ``zone``

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.height, self.width

    def labels(self, palette: Palette, ignore_index: int, box: WindowBox | None = None) -> np.ndarray:
        """The mask over the region (or over ``box``, relative to it), as class indices on the image's grid."""
        top, left, height, width = box or (0, 0, self.height, self.width)
        return read_mask(self.mask, palette, ignore_index, (self.top + top, self.left + left, height, width),
                         label_grid(self.image, self.mask))

    def inside(self, box: WindowBox | None = None) -> np.ndarray | None:
        """Which pixels of the region (or of ``box``, relative to it) are the region's (None: all of them)."""
        if self.zone is None:
            return None
        top, left, height, width = box or (0, 0, self.height, self.width)
        with open_raster(self.zone) as src:
            zone = src.read(1, window=Window(self.left + left, self.top + top, width, height))
        return zone == self.zone_value

    def label_rows(self, palette: Palette, ignore_index: int) -> Callable[[int, int], np.ndarray]:
        """``rows(top, count)``: rows of the region's labels, read window by window from a mask raster (memory of
        the rows), from a decoded copy for other masks (decoded whole anyway)."""
        if is_raster(self.mask):
            return lambda top, count: self.labels(palette, ignore_index, (top, 0, count, self.width))
        labels = self.labels(palette, ignore_index)
        return lambda top, count: labels[top:top + count]


def sibling_masks(image: Path) -> list[Path]:
    """Where the mask of ``.../images/x.jpg`` may be: ``.../masks/x.{png,tif,...}`` (the last ``images``)."""
    parts = image.parent.parts
    if "images" not in parts:
        return []
    at = len(parts) - 1 - parts[::-1].index("images")
    folder = Path(*parts[:at], "masks", *parts[at + 1:])
    return [folder / (image.stem + suffix) for suffix in MASK_SUFFIXES]


def pair_images(images: Sequence[str | Path], masks: Sequence[str | Path] | None) -> list[tuple[Path, Path]]:
    """(image, mask) pairs.

    With ``masks``: ``masks[i]`` mirrors ``images[i]`` (same relative path, any mask
    suffix). Without: every image inside an ``images`` folder has its mask in the
    ``masks`` folder beside it (``tile_1/images/a.jpg`` -> ``tile_1/masks/a.png``), so a
    dataset root can be given as it is. A single ``image,mask`` CSV works too.
    """
    if len(images) == 1 and Path(images[0]).suffix.lower() == ".csv" and not masks:
        return pairs_from_csv(Path(images[0]))
    if masks and len(masks) != len(images):
        raise CsptError(f"give one --masks folder per --images folder ({len(images)} vs {len(masks)})")
    pairs = []
    for i, source in enumerate(map(Path, images)):
        root = source if source.is_dir() else source.parent
        files = find_images([source])
        if masks:
            mask_root = Path(masks[i])
            if not mask_root.is_dir():
                raise CsptError(f"{mask_root}: no such masks folder")
            options = {f: [mask_root / f.relative_to(root).with_suffix(s) for s in MASK_SUFFIXES] for f in files}
        else:
            files = [f for f in files if "masks" not in f.relative_to(root).parts[:-1]]
            options = {f: sibling_masks(f) for f in files}
            if not any(options.values()):
                raise CsptError(f"{source}: no 'images' folder with a 'masks' folder beside it; give --masks")
        for image, candidates in options.items():
            mask = next((m for m in candidates if m.is_file()), None)
            if mask is None:
                where = candidates[0].with_suffix(".*") if candidates else "an 'images'/'masks' folder pair"
                raise CsptError(f"{image}: no mask (looked for {where})")
            pairs.append((image, mask))
    return pairs


def pairs_from_csv(path: Path) -> list[tuple[Path, Path]]:
    """The ``image,mask`` rows of a CSV (a header row is optional; relative paths are relative to the CSV)."""
    rows = list(csv.reader(path.read_text().splitlines()))
    start = 1 if rows and [c.strip().lower() for c in rows[0][:2]] == ["image", "mask"] else 0
    pairs = []
    for number, row in enumerate(rows[start:], start + 1):
        if not row:
            continue
        if len(row) < 2:
            raise CsptError(f"{path}:{number}: expected image,mask")
        image, mask = (Path(v.strip()) if Path(v.strip()).is_absolute() else path.parent / v.strip() for v in row[:2])
        for file in (image, mask):
            if not file.is_file():
                raise CsptError(f"{path}:{number}: no such file {file}")
        pairs.append((image, mask))
    if not pairs:
        raise CsptError(f"{path}: names no image/mask pairs")
    return pairs


def check_pairs(pairs: Sequence[tuple[Path, Path]], palette: Palette, ignore_index: int,
                threads: int = 8) -> tuple[list[Pair], np.ndarray]:
    """Read every mask once (strip by strip for rasters): sizes must match, colours must be known. Returns pairs
    and pixel counts per class."""

    def check(pair: tuple[Path, Path]) -> tuple[Pair, np.ndarray]:
        image, mask = pair
        info = image_info(image)
        grid = label_grid(image, mask)
        counts = np.zeros(len(palette.classes), np.int64)
        for labels in mask_strips(mask, palette, ignore_index, image, info.height, info.width, grid):
            counts += np.bincount(labels[labels != ignore_index].ravel(), minlength=len(palette.classes))
        if grid is not None and not counts.any():
            raise CsptError(f"{mask}: no labelled pixel over its image {image.name} (read on the image's grid: "
                            "do they cover the same place?)")
        return Pair(image, mask, info.height, info.width), counts

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(check, pairs))
    return [r[0] for r in results], np.sum([r[1] for r in results], axis=0)


class SegmentationCrops(Dataset):
    """Training samples, indexed by ``(index, seed)``: a random crop of a scale-jittered region.

    A region (a tile, or the window of a scene a split gives) counts at ``base_scale`` (the
    ``--resize`` option): it gives ``area / crop_size**2`` samples per epoch at that scale (at
    least one), or, with ``windows_per_epoch``, an epoch is that many samples, each drawing its
    region with a chance proportional to its area (from its own seed). A sample draws a
    scale (``base_scale`` times the jitter), places a crop-sized window on the region as
    rescaled by it, reads the region's pixels under that window only and resizes them: a sample
    costs memory of the crop's size whatever the scene's. Image, valid mask and labels share
    the scale, window, flip and 90-degree rotation; the image alone gets photometric distortion
    (any band count). Pixels without data and areas padded to reach the crop size are
    ``ignore_index`` in the labels and 0 after normalisation. A raster image with a raster mask
    is read window by window; other images (decoded whole anyway) are kept decoded, labels as
    compact integers, in a small per-process cache (``cache_pixels`` in total).
    """

    def __init__(self, pairs: Sequence[Pair], palette: Palette, crop_size: int, contract: PixelContract,
                 ignore_index: int = 255, scale_range: Sequence[float] = (0.5, 2.0), photometric: bool = True,
                 base_scale: float = 1.0, cache_pixels: int = 8_000_000, windows_per_epoch: int | None = None):
        area = [round(p.height * base_scale) * round(p.width * base_scale) for p in pairs]
        if windows_per_epoch:  # each sample draws its region by area, with its own seed
            self.entries = list(pairs)
            self.weights = torch.tensor(area, dtype=torch.float64)
        else:
            self.entries = [p for p, a in zip(pairs, area, strict=True) for _ in range(max(1, a // crop_size**2))]
            self.weights = None
        self.length = windows_per_epoch or len(self.entries)
        self.palette = palette
        self.crop_size = crop_size
        self.contract = contract
        self.ignore_index = ignore_index
        self.scale_range = tuple(scale_range)
        self.photometric = photometric
        self.base_scale = base_scale
        self.cache_pixels = cache_pixels
        self.cache: OrderedDict[tuple, tuple[Pixels, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def read(self, index: int, box: WindowBox) -> tuple[Pixels, torch.Tensor]:
        """A window ``box`` of an entry's region (relative to it) through the contract, and its labels,
        ``ignore_index`` where it has no data."""
        pair = self.entries[index]
        if is_raster(pair.image) and is_raster(pair.mask):
            top, left, height, width = box
            pixels = self.contract.read(pair.image, (pair.top + top, pair.left + left, height, width))
            labels = torch.from_numpy(pair.labels(self.palette, self.ignore_index, box))
        else:
            whole, all_labels = self.decoded(pair)
            pixels = whole.crop(*box)
            top, left, height, width = box
            labels = all_labels[top:top + height, left:left + width].long()
        inside = self.entries[index].inside(box)
        if inside is not None:  # pixels of another region: neither seen nor taught
            valid = pixels.valid & torch.from_numpy(inside)
            pixels = Pixels(self.contract.fill(pixels.image, valid), valid)
        return pixels, torch.where(pixels.valid, labels, self.ignore_index)

    def decoded(self, pair: Pair) -> tuple[Pixels, torch.Tensor]:
        """A region of an image that is decoded whole anyway, and its labels (kept in the cache)."""
        key = pair.image, pair.box
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        pixels = self.contract.read(pair.image, pair.box)
        labels = pair.labels(self.palette, self.ignore_index)
        compact = np.uint8 if labels.max(initial=0) <= 255 else np.int32
        self.cache[key] = pixels, torch.from_numpy(labels.astype(compact))
        while len(self.cache) > 1 and sum(m.numel() for _, m in self.cache.values()) > self.cache_pixels:
            self.cache.popitem(last=False)
        return self.cache[key]

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        generator = torch.Generator().manual_seed(seed)
        if self.weights is not None:
            index = int(torch.multinomial(self.weights, 1, generator=generator))
        (pixels, mask), _, skipped = load_or_replace(lambda i: self.crop(i, generator), index, len(self.entries),
                                                     generator)
        pixels, mask = self.augment(pixels, mask, generator)
        return {"image": self.contract.normalise(pixels), "valid": pixels.valid, "mask": mask.long(),
                "skipped": skipped}

    def crop(self, index: int, generator: torch.Generator) -> tuple[Pixels, torch.Tensor]:
        """A random scale and crop-sized window of an entry's region, read and resized to at most the crop."""
        pair = self.entries[index]
        low, high = self.scale_range
        scale = self.base_scale * (low + (high - low) * float(torch.rand(1, generator=generator)))
        scaled_h, scaled_w = max(1, round(pair.height * scale)), max(1, round(pair.width * scale))
        crop_h, crop_w = min(self.crop_size, scaled_h), min(self.crop_size, scaled_w)
        top = int(torch.randint(scaled_h - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(scaled_w - crop_w + 1, (1,), generator=generator))
        rows = math.floor(top / scale), min(pair.height, math.ceil((top + crop_h) / scale))
        cols = math.floor(left / scale), min(pair.width, math.ceil((left + crop_w) / scale))
        pixels, mask = self.read(index, (rows[0], cols[0], rows[1] - rows[0], cols[1] - cols[0]))
        pixels = pixels.resized((crop_h, crop_w), InterpolationMode.BILINEAR)
        return pixels, TF.resize(mask[None], [crop_h, crop_w], interpolation=InterpolationMode.NEAREST)[0]

    def augment(self, pixels: Pixels, mask: torch.Tensor, generator: torch.Generator) -> tuple[Pixels, torch.Tensor]:
        """Padding to the crop size, a flip, a 90-degree turn and photometric distortion."""
        crop = self.crop_size
        crop_h, crop_w = mask.shape
        if crop_h < crop or crop_w < crop:
            pixels = pad_to(pixels, crop, crop, self.contract.mean_tensor)
            mask = TF.pad(mask[None], [0, 0, crop - crop_w, crop - crop_h], fill=self.ignore_index)[0]
        if torch.rand(1, generator=generator) < 0.5:
            pixels, mask = pixels.flip(), mask.flip(-1)
        turns = int(torch.randint(4, (1,), generator=generator))
        pixels, mask = pixels.rot90(turns), mask.rot90(turns, (0, 1))
        if self.photometric:
            pixels = photometric_distortion(pixels, generator, not self.contract.is_sar)
        mask = torch.where(pixels.valid, mask, torch.full_like(mask, self.ignore_index))
        return Pixels(pixels.image.contiguous(), pixels.valid.contiguous()), mask.contiguous()


def collate_crops(samples: list[dict]) -> dict:
    """A batch of training crops: images and masks stacked, the skipped-file messages gathered."""
    return {"image": torch.stack([s["image"] for s in samples]), "mask": torch.stack([s["mask"] for s in samples]),
            "skipped": [m for s in samples for m in s["skipped"]]}
