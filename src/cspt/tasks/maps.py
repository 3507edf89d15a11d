"""Class maps of whole scenes, shared by the dense and scene-classification tasks: the one inference function
over a scene (:func:`scene_strips`), what evaluation scores of it, and what prediction writes of it.

Evaluation and prediction both call :func:`scene_strips`, so what is scored is what is written:
the same windows, read through the same pixel contract, blended the same way; pixels
without data are never predicted, never scored, and written as nodata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rasterio.crs import CRS

from cspt.data.aoi import SceneArea
from cspt.data.georaster import (
    NO_CLASS,
    PROBABILITY_NODATA,
    ClassValues,
    Georeference,
    RasterWriter,
    georeference_of,
    reproject_raster,
    write_class_sidecars,
)
from cspt.data.images import ImageInfo
from cspt.data.pixels import PixelContract, Pixels
from cspt.engine.streaming import Box, Strip, Window, stream_strips
from cspt.metrics import segmentation_confusion


def qualitative_colors(count: int) -> np.ndarray:
    """An RGB colour per class from a qualitative colour map (tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.array([[round(255 * c) for c in cmap(i % 20)[:3]] for i in range(count)], np.uint8)


def contract_windows(path: Path, contract: PixelContract, area: SceneArea | None = None) -> Callable[[Box], Window]:
    """Read a window of ``path`` as the model's input: through the contract, normalised, invalid pixels 0. With
    ``area``, windows are relative to its pixel window and its pixels outside the area are invalid."""

    def read(box: Box) -> Window:
        if area is None:
            pixels = contract.read(path, box)
            return contract.normalise(pixels), pixels.valid
        top, left, height, width = box
        pixels = contract.read(path, (area.top + top, area.left + left, height, width))
        valid = pixels.valid & torch.from_numpy(area.inside[top:top + height, left:left + width])
        return contract.normalise(Pixels(pixels.image, valid)), valid

    return read


def scene_strips(forward: Callable[[torch.Tensor], torch.Tensor], path: Path, contract: PixelContract,
                 window: int, stride: int, blend: str = "cosine", batch_size: int = 8,
                 area: SceneArea | None = None) -> tuple[ImageInfo, Iterator[Strip]]:
    """The size of the scene (or of ``area``'s window), and its per-pixel scores strip by strip
    (:func:`~cspt.engine.streaming.stream_strips` over windows read through ``contract``): evaluation and
    prediction both run this."""
    info = contract.info(path)
    if area is not None:
        info = dataclasses.replace(info, height=area.height, width=area.width)
    return info, stream_strips(forward, contract_windows(path, contract, area), info.height, info.width, window,
                               stride, blend, batch_size)


def warp_class_rasters(folder: Path, stem: str, crs: CRS | None) -> None:
    """``--dst-crs``: the class raster ``STEM.tif`` (and its probabilities) warped to ``crs``."""
    if crs is None:
        return
    for written in (folder / f"{stem}.tif", folder / f"{stem}_probabilities.tif"):
        if written.is_file():
            reproject_raster(written, crs)


def strip_labels(strip: Strip) -> np.ndarray:
    """A strip's class indices, ``NO_CLASS`` where no window predicted (no data)."""
    if not len(strip.values):
        return np.full(strip.valid.shape, NO_CLASS, dtype=np.uint8)
    labels = strip.values.argmax(0).to(torch.uint8)
    labels[~strip.valid] = NO_CLASS
    return labels.numpy()


@dataclass
class ScoredScene:
    """What evaluation counted on one scene."""

    confusion: torch.Tensor
    invalid: int = 0  #: pixels without data (neither predicted nor scored)


def score_strips(strips: Iterable[Strip], label_rows: Callable[[int, int], np.ndarray], classes: int,
                 ignore_index: int) -> ScoredScene:
    """The confusion matrix of a scene's strips against its labels, ``label_rows(top, count)`` giving the
    ``(count, W)`` rows from ``top`` (read strip by strip: memory of a strip); pixels without data are not
    scored."""
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    invalid = 0
    for strip in strips:
        rows = strip.valid.shape[0]
        target = torch.from_numpy(label_rows(strip.top, rows).astype(np.int64))
        target[~strip.valid] = ignore_index
        invalid += int((~strip.valid).sum())
        predicted = torch.from_numpy(strip_labels(strip).astype(np.int64))
        confusion += segmentation_confusion(predicted, target, classes, ignore_index)
    return ScoredScene(confusion, invalid)


#: what a class map of one input may consist of (``{}``: the input's stem): the GeoTIFF and its sidecars, the
#: probabilities, or the pictures of a plain image, and the overlay
MAP_OUTPUTS = ("{}.tif", "{}.tif.aux.xml", "{}.qml", "{}_probabilities.tif", "{}.png", "{}_color.png",
               "{}_overlay.jpg")


def write_class_raster(strips: Iterable[Strip], path: Path, folder: Path, size: ImageInfo, classes: Sequence[str],
                       colors: np.ndarray, probabilities: bool, area: SceneArea | None = None) -> None:
    """``NAME.tif`` (and ``NAME_probabilities.tif``, one band per class), Cloud-Optimised GeoTIFFs georeferenced
    like ``path`` (or ``area``'s window of it), written strip by strip with nodata where the scene has none;
    each class stored as its :class:`~cspt.data.georaster.ClassValues` value (the user's integer codes where
    the class names are codes), the class names in ``NAME.tif.aux.xml`` and ``NAME.qml``. A scene that fails
    part-way leaves none of these."""
    where = georeference_of(path)
    if area is not None:
        where = Georeference(where.crs, area.transform)
    target = folder / f"{path.stem}.tif"
    values = ClassValues.of(classes)
    with ExitStack() as stack:
        labels = stack.enter_context(RasterWriter(target, size.height, size.width, 1, where, values.nodata,
                                                  dict(zip(values.values, colors, strict=True)), names=["class"],
                                                  dtype=values.dtype))
        probs = stack.enter_context(RasterWriter(folder / f"{path.stem}_probabilities.tif", size.height,
                                                 size.width, len(classes), where, PROBABILITY_NODATA,
                                                 scale=1 / (PROBABILITY_NODATA - 1), names=classes,
                                                 overviews="AVERAGE")) if probabilities else None
        for strip in strips:
            labels.write(strip.top, values.from_indices(strip_labels(strip))[None])
            if probs is not None:
                scores = strip.values.softmax(0) if len(strip.values) else torch.zeros(len(classes),
                                                                                       *strip.valid.shape)
                levels = (scores * (PROBABILITY_NODATA - 1)).round().to(torch.uint8)
                levels[:, ~strip.valid] = PROBABILITY_NODATA
                probs.write(strip.top, levels.numpy())
    write_class_sidecars(target, values, colors)
