"""Pieces every dataset shares: seeded crops and RNGs, and skipping unreadable files."""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch

from cspt.data.images import ImageInfo, ImageReadError, WindowBox, image_info
from cspt.data.pixels import PixelContract, Pixels
from cspt.errors import CsptError

T = TypeVar("T")
MAX_REPLACEMENTS = 20


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
    h, w = largest_box(height, width)  # torchvision's fallback
    return (height - h) // 2, (width - w) // 2, h, w


def largest_box(height: int, width: int) -> tuple[int, int]:
    """The largest box :func:`random_box` takes: the whole image, cut to the nearest allowed aspect ratio."""
    return min(height, round(width * 4 / 3)), min(width, round(height * 4 / 3))


def random_resized_crop(pixels: Pixels, size: int, min_scale: float, generator: torch.Generator) -> Pixels:
    """A seeded RandomResizedCrop (bicubic, antialiased) of pixels in memory to ``size`` x ``size``."""
    return pixels.crop(*random_box(*pixels.valid.shape, min_scale, generator)).resized([size, size])


def read_random_resized_crop(contract: PixelContract, path: Path, size: int, min_scale: float,
                             generator: torch.Generator, info: ImageInfo | None = None) -> Pixels:
    """A seeded RandomResizedCrop read straight from the file: only the box is decoded and resized."""
    info = info or image_info(path)
    return contract.read_resized_crop(path, random_box(info.height, info.width, min_scale, generator), size, info)


def resize_centre_crop(pixels: Pixels, size: int, crop_ratio: float = 1.0) -> Pixels:
    """Resize the short side to ``size / crop_ratio``, then take the central ``size`` square."""
    height, width = pixels.valid.shape
    short = int(round(size / crop_ratio))
    scale = short / min(height, width)
    resized = pixels.resized([max(size, round(height * scale)), max(size, round(width * scale))])
    top, left = (resized.valid.shape[0] - size) // 2, (resized.valid.shape[1] - size) // 2
    return resized.crop(top, left, size, size)


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
