"""Pieces every dataset shares: band matching, seeded crops, and skipping unreadable files."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from cspt.data.images import ImageInfo, ImageReadError, WindowBox, image_info, read_image, read_masked, read_resized
from cspt.errors import CsptError

T = TypeVar("T")
MAX_REPLACEMENTS = 20


def match_bands(pixels: torch.Tensor, in_chans: int, source: object) -> torch.Tensor:
    """``(bands, H, W)`` pixels with the model's band count (grey images are repeated)."""
    bands = pixels.shape[0]
    if bands == in_chans:
        return pixels
    if bands == 1:
        return pixels.expand(in_chans, -1, -1)
    raise ImageReadError(f"{source}: has {bands} bands, the model expects {in_chans}")


def read_bands(path: Path, in_chans: int, window: WindowBox | None = None) -> torch.Tensor:
    """An image (or a window of it) as ``(in_chans, H, W)`` on the 0-1 scale (see :func:`match_bands`)."""
    return match_bands(torch.from_numpy(read_image(path, window)).permute(2, 0, 1), in_chans, path)


def read_masked_bands(path: Path, in_chans: int, window: WindowBox | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`read_bands` and the valid-pixel mask ``(H, W)`` of the same window, from one read."""
    pixels, valid = read_masked(path, window)
    return match_bands(torch.from_numpy(pixels).permute(2, 0, 1), in_chans, path), torch.from_numpy(valid)


def band_tensors(mean: Sequence[float], std: Sequence[float], in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean``/``std`` as ``(bands, 1, 1)`` tensors, checked against the band count."""
    if len(mean) != in_chans or len(std) != in_chans:
        raise CsptError(f"mean/std have {len(mean)}/{len(std)} values for {in_chans} bands")
    return (torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))


@contextmanager
def seeded_rngs(generator: torch.Generator) -> Iterator[None]:
    """Run a block with the global torch, numpy and ``random`` RNGs seeded from ``generator``.

    Library transforms (torchvision, timm) draw from the global RNGs; this makes them a
    function of the sample's seed and leaves the callers' RNG state as it was.
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def random_box(height: int, width: int, min_scale: float, generator: torch.Generator) -> WindowBox:
    """RandomResizedCrop's box (area ``min_scale``-1, aspect 3/4-4/3), drawn from ``generator``.

    torchvision's ``RandomResizedCrop.get_params`` draws from the global RNG, which would
    have to be forked and reseeded for every sample; this is its rule on a generator.
    """
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        u_area, u_ratio, u_top, u_left = torch.rand(4, generator=generator).tolist()
        target = area * (min_scale + (1.0 - min_scale) * u_area)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    # torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio
    h, w = min(height, round(width * 4 / 3)), min(width, round(height * 4 / 3))
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: torch.Tensor, size: int, min_scale: float,
                        generator: torch.Generator) -> torch.Tensor:
    """A seeded RandomResizedCrop (bicubic, antialiased) of pixels in memory to ``size`` x ``size``."""
    top, left, h, w = random_box(image.shape[-2], image.shape[-1], min_scale, generator)
    return TF.resized_crop(image, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC,
                           antialias=True)


def read_random_resized_crop(path: Path, in_chans: int, size: int, min_scale: float, generator: torch.Generator,
                             info: ImageInfo | None = None) -> torch.Tensor:
    """A seeded RandomResizedCrop read straight from the file: only the box is decoded and resized.

    8-bit JPEG/PNG take PIL's reduced decode (:func:`~cspt.data.images.read_resized`);
    other images are read as a window and resized by torchvision.
    """
    info = info or image_info(path)
    box = random_box(info.height, info.width, min_scale, generator)
    pixels = read_resized(path, box, size)
    if pixels is None:
        return TF.resize(read_bands(path, in_chans, box), [size, size], interpolation=InterpolationMode.BICUBIC,
                         antialias=True)
    return match_bands(torch.from_numpy(pixels).permute(2, 0, 1), in_chans, path)


def resize_centre_crop(image: torch.Tensor, size: int, crop_ratio: float = 1.0) -> torch.Tensor:
    """Resize the short side to ``size / crop_ratio``, then take the central ``size`` square."""
    short = int(round(size / crop_ratio))
    image = TF.resize(image, [short], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(image, [size, size])


def load_or_replace(load: Callable[[int], T], index: int, count: int,
                    generator: torch.Generator) -> tuple[T, int, list[str]]:
    """``load(index)``, or of another seeded index when a file is unreadable.

    Returns the result, the index it came from, and the messages of the files skipped.
    """
    skipped = []
    for _ in range(MAX_REPLACEMENTS):
        try:
            return load(index), index, skipped
        except ImageReadError as err:
            skipped.append(str(err))
            index = int(torch.randint(count, (1,), generator=generator))
    raise CsptError(f"{MAX_REPLACEMENTS} unreadable images in a row; last: {skipped[-1]}")
