"""Class maps of whole scenes, shared by the dense and scene-classification predictors: the model's
input windows read from a file, and the streamed strips written as a georeferenced class GeoTIFF."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cspt.data.georaster import NO_CLASS, RasterWriter, georeference_of
from cspt.data.images import ImageInfo
from cspt.data.sampling import band_tensors, read_masked_bands
from cspt.data.scaling import stage_statistics
from cspt.engine.streaming import Box, Strip, Window


def qualitative_colors(count: int) -> np.ndarray:
    """An RGB colour per class from a qualitative colour map (tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.array([[round(255 * c) for c in cmap(i % 20)[:3]] for i in range(count)], np.uint8)


def normalised_windows(path: Path, info: dict[str, Any]) -> Callable[[Box], Window]:
    """Read a window of ``path`` as the model's input: scaled, normalised, nodata pixels at the mean (0)."""
    in_chans = info["architecture"]["in_chans"]
    mean, std = band_tensors(*stage_statistics(info), in_chans)

    def read(box: Box) -> Window:
        pixels, valid = read_masked_bands(path, in_chans, box)
        return ((pixels - mean) / std) * valid, valid

    return read


def strip_labels(strip: Strip) -> np.ndarray:
    """A strip's class indices, ``NO_CLASS`` where no window predicted."""
    if not len(strip.values):
        return np.full(strip.valid.shape, NO_CLASS, dtype=np.uint8)
    labels = strip.values.argmax(0).to(torch.uint8)
    labels[~strip.valid] = NO_CLASS
    return labels.numpy()


def write_class_raster(strips: Iterable[Strip], path: Path, folder: Path, size: ImageInfo, colors: np.ndarray,
                       probabilities: bool) -> None:
    """``NAME.tif`` (and ``NAME_probabilities.tif``), georeferenced like ``path``, strip by strip."""
    where = georeference_of(path)
    with ExitStack() as stack:
        classes = stack.enter_context(RasterWriter(folder / f"{path.stem}.tif", size.height, size.width, 1, where,
                                                   NO_CLASS, colors))
        probs = stack.enter_context(RasterWriter(folder / f"{path.stem}_probabilities.tif", size.height,
                                                 size.width, len(colors), where, 0)) if probabilities else None
        for strip in strips:
            classes.write(strip.top, strip_labels(strip)[None])
            if probs is not None:
                scores = strip.values.softmax(0) if len(strip.values) else torch.zeros(len(colors), *strip.valid.shape)
                probs.write(strip.top, (scores * strip.valid * 255).round().to(torch.uint8).numpy())
