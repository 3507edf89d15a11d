"""Semantic segmentation: fine-tune ViT + UperNet, evaluate with sliding windows, predict masks.

``finetune_segment(config)`` is the whole stage as one call. A run directory ends with
``segmenter.safetensors`` + ``segmenter.json`` (best validation mIoU, or the last epoch
without validation tiles), ``splits/{train,val}.csv`` and, with validation tiles,
``metrics.json``, ``confusion.csv`` and ``confusion.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from affine import Affine
from PIL import Image
from torch import nn

from cspt.config import SegmentConfig
from cspt.data.aoi import SceneArea, bbox_aoi, output_crs
from cspt.data.files import find_images
from cspt.data.georaster import ClassValues, georeference_of, vectorize_classes
from cspt.data.images import ImageReadError, display_rgb, image_info, is_raster, open_raster
from cspt.data.masks import Palette
from cspt.data.pixels import PixelContract
from cspt.data.segmentation import Pair, SegmentationCrops, check_pairs, collate_crops, pair_images, pairs_from_csv
from cspt.data.spatial_split import split_regions
from cspt.data.vector_labels import (
    VectorLabels,
    check_lies_over,
    class_index,
    read_vector_labels,
    scene_label_pairs,
    vector_classes,
)
from cspt.engine.distributed import all_gather_objects, barrier, launched_world_size, resolve_device, shard
from cspt.engine.optim import param_groups_layer_decay
from cspt.engine.progress import scenes_progress
from cspt.engine.run_dir import has_checkpoint
from cspt.engine.streaming import Strip
from cspt.engine.trainer import Trainer, resolve_precision
from cspt.errors import CsptError
from cspt.metrics import segmentation_metrics, write_confusion_csv
from cspt.models.segmenter import Segmenter, build_segmenter
from cspt.plots import plot_confusion, plot_split
from cspt.tasks.common import (
    SPLITS_DIR,
    DescribedModel,
    FineTuneTask,
    arch_of,
    check_normalisation,
    contract_of,
    distributed_run,
    images_in,
    load_described,
    load_init_weights,
    predict_each,
    require_data_for_graph,
    resolved_encoder_fields,
    resolved_taps,
    start_run,
    vector_outputs,
)
from cspt.tasks.maps import (
    MAP_OUTPUTS,
    qualitative_colors,
    scene_strips,
    score_strips,
    strip_labels,
    warp_class_rasters,
    write_class_raster,
)
from cspt.weights.descriptions import SegmenterDescription
from cspt.weights.export import write_weights
from cspt.weights.load import Checkpoint

log = logging.getLogger("cspt")

SEGMENTER = "segmenter.safetensors"


# ---------------------------------------------------------------- palettes and data

def load_palette(palette: str | None, class_names: Sequence[str] | None) -> Palette:
    """A palette YAML, a built-in palette by name, or index masks with ``class_names``."""
    if palette:
        builtins = resources.files("cspt") / "recipes" / "palettes"
        if Path(palette).is_file():
            return Palette.from_yaml(palette)
        if not (builtins / f"{palette}.yaml").is_file():
            names = ", ".join(sorted(p.name.removesuffix(".yaml") for p in builtins.iterdir()))
            raise CsptError(f"{palette}: no such palette file or built-in palette ({names})")
        with resources.as_file(builtins / f"{palette}.yaml") as path:
            return Palette.from_yaml(path)
    if not class_names or len(class_names) < 2:
        raise CsptError("give --palette (colour-coded masks) or --class-names (index masks, at least two)")
    return Palette(list(class_names))


def write_pairs(pairs: Sequence[Pair], path: Path) -> None:
    """``image,mask`` rows (absolute paths) with each pair's :data:`REGION_COLUMNS`, of ``pairs`` to the CSV
    ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", *REGION_COLUMNS])
        writer.writerows([str(p.image.resolve()), str(p.mask.resolve()), *p.box,
                          str(p.zone.resolve()) if p.zone else "", p.zone_value] for p in pairs)


#: the window of its image a split's row gives, and the zone raster that says which of its pixels are the
#: region's (a row without them: the whole image)
REGION_COLUMNS = ("top", "left", "height", "width", "zone", "zone_value")


def make_split(config: SegmentConfig, palette: Palette, folder: Path) -> dict[str, list[Pair]]:
    """Checked training and (optional) validation regions (a polygon split's zone rasters written in ``folder``);
    logs the pixel share of every class."""
    if not config.images:
        raise CsptError("no --images given")
    pairs, counts = check_pairs(pair_images(config.images, config.masks), palette, config.ignore_index)
    if config.val_images:
        if config.split != "by-file" or config.val_fraction or config.split_polygons or config.test_fraction:
            raise CsptError("--val-images are the validation data: --val-fraction and --split hold some out of "
                            "--images instead; give one or the other")
        val, _ = check_pairs(pair_images(config.val_images, config.val_masks), palette, config.ignore_index)
        splits = {"train": pairs, "val": val}
    elif config.val_fraction > 0 or config.split == "polygons":
        check_split_options(config)
        window, stride = max(1, round(config.crop_size / config.resize)), max(1, round(config.stride / config.resize))
        polygons = read_vector_labels(Path(config.split_polygons), config.split_field) \
            if config.split_polygons else None
        splits = split_regions(pairs, config.split, config.val_fraction, config.split_seed, window, stride,
                               config.block_size, config.split_buffer, polygons, folder, config.test_fraction)
        log.info("split %s: %s", config.split, ", ".join(f"{name} {len(regions)} regions, "
                                                         f"{sum(r.height * r.width for r in regions):,} pixels"
                                                         for name, regions in splits.items()))
    elif config.split != "by-file" or config.block_size or config.split_buffer or config.split_polygons or \
            config.test_fraction:
        raise CsptError(f"--split {config.split}: holds out --val-fraction of the data; give one")
    else:
        splits = {"train": pairs}
    shares = counts / max(1, counts.sum())
    log.info("classes (pixel share): %s", ", ".join(f"{n} {s:.1%}" for n, s in zip(palette.classes, shares,
                                                                                     strict=True)))
    return splits


def check_split_options(config: SegmentConfig) -> None:
    """Refuse, in one line, split options the chosen ``--split`` would leave unused."""
    unused = {"blocks": ["split_polygons"], "polygons": ["val_fraction", "test_fraction", "block_size", "split_buffer"],
              "by-file": ["block_size", "split_buffer", "split_polygons"],
              "random": ["block_size", "split_buffer", "split_polygons"]}.get(config.split, [])
    given = [name for name in unused if getattr(config, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CsptError(f"--split {config.split} does not use {flags}")


def read_split(folder: Path) -> dict[str, list[Pair]]:
    """The regions a run was started with (image sizes re-read from the headers, masks not re-checked)."""
    splits = {}
    for name in ("train", "val", "test"):
        path = folder / f"{name}.csv"
        if path.is_file():
            rows = list(csv.reader(path.read_text().splitlines()))[1:]
            splits[name] = [pair_of(Path(row[0]), Path(row[1]), row[2:]) for row in rows]
    return splits


def pair_of(image: Path, mask: Path, box: Sequence[str] = ()) -> Pair:
    """An image and its mask over ``box`` (the :data:`REGION_COLUMNS`; none: the whole image, sized from its
    header)."""
    if box:
        top, left, height, width = map(int, box[:4])
        zone, value = (Path(box[4]), int(box[5])) if len(box) > 5 and box[4] else (None, 0)
        return Pair(image, mask, height, width, top, left, zone, value)
    info = image_info(image)
    return Pair(image, mask, info.height, info.width)


def validation_polygons(config: SegmentConfig) -> VectorLabels:
    """The validation polygons of a ``--split polygons`` run (its example's area)."""
    polygons = read_vector_labels(Path(config.split_polygons), config.split_field)
    return dataclasses.replace(polygons, features=[(g, name) for g, name in polygons.features if name == "val"])


def region_bbox(area: SceneArea) -> list[float]:
    """A region's bounds in its scene's CRS, a quarter pixel inside its edges (so that, as an area of interest, it
    holds the region's pixels and no others)."""
    corners = [area.transform @ (col, row) for col in (0.25, area.width - 0.25) for row in (0.25, area.height - 0.25)]
    xs, ys = zip(*corners, strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


def draw_split(splits: dict[str, list[Pair]], target: Path, method: str) -> Path:
    """``target``: where the training and validation regions lie on their images."""
    sizes = {}
    for pair in sorted((p for regions in splits.values() for p in regions), key=lambda p: p.image.name):
        if pair.image not in sizes:
            info = image_info(pair.image)
            sizes[pair.image] = info.height, info.width
    return plot_split({name: [(p.image, p.box) for p in pairs] for name, pairs in splits.items()}, sizes, target,
                      f"split: {method}")


def region_area(pair: Pair) -> SceneArea | None:
    """A split's region as the area :func:`~cspt.tasks.maps.scene_strips` reads (None: the whole image)."""
    info = image_info(pair.image)
    if pair.box == (0, 0, info.height, info.width) and pair.zone is None:
        return None
    inside = pair.inside()
    return SceneArea(pair.top, pair.left, pair.height, pair.width,
                     np.ones((pair.height, pair.width), bool) if inside is None else inside,
                     georeference_of(pair.image).transform @ Affine.translation(pair.left, pair.top))


# ---------------------------------------------------------------- inference and evaluation

def window_forward(model: nn.Module, crop_size: int, resize: float, device: torch.device,
                   autocast: torch.dtype | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class logits of a batch of image windows, each resized by ``resize`` for the network and back."""

    def forward(crops: torch.Tensor) -> torch.Tensor:
        size = crops.shape[-2:]
        crops = crops.to(device)
        if resize != 1.0:
            crops = F.interpolate(crops, size=(crop_size, crop_size), mode="bilinear", antialias=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(crops)
        if resize != 1.0:
            logits = F.interpolate(logits.float(), size=size, mode="bilinear")
        return logits

    return forward


def source_window(info: SegmenterDescription) -> tuple[int, int]:
    """The sliding window and stride in image pixels (the network's crop seen at ``resize``)."""
    return max(1, round(info.crop_size / info.resize)), max(1, round(info.stride / info.resize))


def evaluate_pairs(model: nn.Module, pairs: Sequence[Pair], info: SegmenterDescription, contract: PixelContract,
                   device: torch.device, precision: str = "auto", blend: str = "cosine") -> dict[str, Any]:
    """Sliding-window metrics (mIoU, OA, mean F1, per class, confusion) over each pair's region (the whole tile,
    or a window of it a spatial split gives), scored on the very
    predictions ``cspt predict segment`` writes (:func:`~cspt.tasks.maps.scene_strips`); pixels without
    data are not scored, and counted.

    In a process group every process must call it: each scores its share of the tiles,
    and all of them get the metrics of every tile.
    """
    palette = Palette.from_dict(info.palette)
    classes, ignore = palette.classes, info.ignore_index
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    model = model.to(device).eval()
    forward = window_forward(model, info.crop_size, info.resize, device, resolve_precision(precision, device))
    skipped = invalid = 0
    for pair in scenes_progress(shard(pairs)):
        try:
            area = region_area(pair)
            _, strips = scene_strips(forward, pair.image, contract, *source_window(info), blend, area=area)
            scored = score_strips(strips, pair.label_rows(palette, ignore), len(classes), ignore)
            scored.invalid -= 0 if area is None else int(area.inside.size - area.inside.sum())  # not the region's
        except ImageReadError as err:
            log.warning("skipped unreadable tile: %s", err)
            skipped += 1
            continue
        confusion += scored.confusion
        invalid += scored.invalid
    shares = all_gather_objects((confusion, skipped, invalid))
    metrics = segmentation_metrics(sum(c for c, _, _ in shares), classes)
    metrics["skipped_tiles"] = sum(n for _, n, _ in shares)
    metrics["invalid_pixels"] = sum(n for _, _, n in shares)
    return metrics


def write_segmentation_metrics(metrics: dict[str, Any], folder: Path, title: str) -> None:
    """``metrics.json``, ``confusion.csv`` and ``confusion.png`` (titled ``title``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_confusion_csv(metrics["confusion"], metrics["classes"], folder / "confusion.csv")
    plot_confusion(metrics["confusion"], metrics["classes"], folder / "confusion.png",
                   f"{title}: mIoU {metrics['miou']:.3f}, OA {metrics['oa']:.3f}")


def model_from_description(info: SegmenterDescription, drop_path: float = 0.0) -> Segmenter:
    """The segmenter a description describes, without its weights."""
    return build_segmenter(info.arch, len(info.palette["classes"]), channels=info.channels,
                           aux_channels=info.aux_channels or None, style=info.pyramid, taps=info.taps,
                           drop_path=drop_path)


def load_segmenter(checkpoint: str | Path) -> DescribedModel:
    """A fine-tuned segmenter and its description (palette, architecture, windows, normalisation)."""
    return load_described(checkpoint, SEGMENTER, "segment", model_from_description)


def evaluate_segmenter(checkpoint: str | Path, images: Sequence[str] | None = None,
                       masks: Sequence[str] | None = None, output: str | Path | None = None,
                       device: str = "auto", blend: str = "cosine",
                       max_image_pixels: int | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate on ``images`` (+ ``masks``), default the run's test regions (else its validation regions); returns
    metrics and folder."""
    described = load_segmenter(checkpoint)
    model, info, weights = described
    require_data_for_graph(weights, images, "--images and --masks")
    run_dir = weights.parent
    palette = Palette.from_dict(info.palette)
    held = None
    if images:
        pairs, _ = check_pairs(pair_images(images, masks), palette, info.ignore_index)
        folder = Path(output) if output else run_dir / "evaluation" / Path(images[0]).name
    else:
        splits = read_split(run_dir / SPLITS_DIR)
        held = "test" if splits.get("test") else "val"
        if not splits.get(held):
            raise CsptError(f"{run_dir}: no validation or test regions in {SPLITS_DIR}/; pass --images (and --masks)")
        pairs = splits[held]
        folder = Path(output) if output else run_dir / "evaluation" / "test" if held == "test" else run_dir
        log.info("scoring the run's %s regions", "test" if held == "test" else "validation")
    metrics = evaluate_pairs(model, pairs, info, described.contract(max_image_pixels),
                             torch.device(resolve_device(device)), precision="fp32", blend=blend)  # as predicted
    metrics.update(checkpoint=str(weights), tiles=len(pairs), **({"split": held} if held else {}))
    write_segmentation_metrics(metrics, folder, "segmentation")
    log.info("mIoU %.4f, OA %.4f, mean F1 %.4f on %d tiles", metrics["miou"], metrics["oa"], metrics["mean_f1"],
             len(pairs))
    return metrics, folder


def class_colors(palette: Palette) -> np.ndarray:
    """An RGB colour per class: the palette's, or a qualitative colour map for index masks."""
    return np.array(palette.colors, dtype=np.uint8) if palette.colors else qualitative_colors(len(palette.classes))


def predict_segmenter(checkpoint: str | Path, images: Sequence[str], output: str | Path, draw: bool = False,
                      device: str = "auto", blend: str = "cosine", probabilities: bool = False,
                      vectorize: str | None = None, batch_size: int = 8,
                      max_image_pixels: int | None = None, aoi: VectorLabels | None = None,
                      dst_crs: str | None = None) -> Path:
    """Class maps of every image, predicted window by window (any size; bounded memory).

    A GeoTIFF or VRT gives ``NAME.tif``: a Cloud-Optimised GeoTIFF of classes (see
    :func:`~cspt.tasks.maps.write_class_raster`) with the input's CRS and transform, a colour table and
    nodata where the input has no data, its class names in ``NAME.tif.aux.xml`` and ``NAME.qml`` (with
    ``probabilities``, ``NAME_probabilities.tif``: one uint8 band per class); ``vectorize`` (``gpkg``,
    ``geojson`` or ``shp``) adds one polygon per connected region. With ``aoi``
    (:mod:`cspt.data.aoi`), only the part of each raster inside it is predicted and written; with
    ``dst_crs``, the rasters and polygons are warped to that CRS. Other images give ``NAME.png`` and
    ``NAME_color.png``. With ``draw``, every image also gives ``NAME_overlay.jpg``.
    """
    described = load_segmenter(checkpoint)
    model, info, _ = described
    contract = described.contract(max_image_pixels)
    palette = Palette.from_dict(info.palette)
    colors = class_colors(palette)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(resolve_device(device))
    forward = window_forward(model.to(torch_device), info.crop_size, info.resize, torch_device)
    values, crs = ClassValues.of(palette.classes), output_crs(dst_crs, vectorize)

    def predict(path: Path, area: SceneArea | None) -> None:
        size, strips = scene_strips(forward, path, contract, *source_window(info), blend, batch_size, area)
        if not is_raster(path):
            labels = write_class_pictures(strips, path, folder, colors)
            if draw:
                write_overlay(path, labels, colors, folder, contract)
            return
        write_class_raster(strips, path, folder, size, palette.classes, colors, probabilities, area)
        if draw:
            with open_raster(folder / f"{path.stem}.tif") as written_map:
                write_overlay(path, values.to_indices(written_map.read(1)), colors, folder, contract, area)
        warp_class_rasters(folder, path.stem, crs)
        if vectorize:
            target = folder / f"{path.stem}.{vectorize}"
            features = vectorize_classes(folder / f"{path.stem}.tif", target, palette.classes)
            log.info("%s: %d class regions", target, features)

    return predict_each(find_images(list(images), exclude=[folder]), folder, contract,
                        [*MAP_OUTPUTS, *vector_outputs(vectorize)], predict, "images", aoi, crs)


def painted(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Class indices as RGB (black where 255: no data)."""
    return np.concatenate([colors, np.zeros((256 - len(colors), 3), np.uint8)])[labels]


def write_class_pictures(strips: Iterable[Strip], path: Path, folder: Path, colors: np.ndarray) -> np.ndarray:
    """``NAME.png`` (indices, 255 where the image has no data) and ``NAME_color.png``; returns the indices."""
    labels = np.concatenate([strip_labels(strip) for strip in strips])
    Image.fromarray(labels).save(folder / f"{path.stem}.png")
    Image.fromarray(painted(labels, colors)).save(folder / f"{path.stem}_color.png")
    return labels


def write_overlay(path: Path, labels: np.ndarray, colors: np.ndarray, folder: Path, contract: PixelContract,
                  area: SceneArea | None = None) -> Path:
    """``NAME_overlay.jpg``: the class colours blended over the image (or ``area``'s window of it) as its
    contract scales it."""
    box = None if area is None else (area.top, area.left, area.height, area.width)
    picture = display_rgb(contract.picture(contract.read(path, box)))
    target = folder / f"{path.stem}_overlay.jpg"
    Image.fromarray((0.5 * picture + 0.5 * painted(labels, colors)).astype(np.uint8)).save(target, quality=90)
    return target


# ---------------------------------------------------------------- fine-tuning

def training_images(config: SegmentConfig) -> Callable[[], list[Path]]:
    """The training images (scenes with --labels), listed when called."""
    images = list(config.scenes) if config.labels else list(config.images)
    return images_in(images, lambda table: [image for image, _ in pairs_from_csv(table)])


def resolve_config(config: SegmentConfig, init: Checkpoint | None = None) -> SegmentConfig:
    """Architecture (input size = crop size), stride and pyramid taps; checks that need them."""
    if config.crop_size is not None:
        config = dataclasses.replace(config, img_size=config.crop_size)
    if config.labels:
        config = dataclasses.replace(config, palette=None, class_names=label_classes(config))
    elif config.background:
        raise CsptError("--background names the class of pixels under no polygon of --labels; without --labels "
                        "the masks say every pixel's class")
    config = dataclasses.replace(config, **resolved_encoder_fields(config, init, training_images(config)))
    stride = config.stride or max(1, round(config.img_size * 2 / 3))
    taps = resolved_taps(config)
    check_batch_norm_batch(config)
    if not 0 < stride <= config.img_size:
        raise CsptError(f"--stride {stride} must lie in 1..{config.img_size} (the crop size)")
    if config.resize <= 0:
        raise CsptError(f"--resize {config.resize} must be positive")
    if config.windows_per_epoch is not None and config.windows_per_epoch < 1:
        raise CsptError(f"--windows-per-epoch {config.windows_per_epoch} must be at least 1")
    return dataclasses.replace(config, crop_size=config.img_size, stride=stride, taps=taps)


def vector_labels_of(config: SegmentConfig) -> VectorLabels:
    """``--labels``, each feature classed by ``--class-field``; without one, every feature is the one class
    ``--class-names`` gives beside ``--background`` (else named after the file)."""
    single = None
    if not config.class_field:
        named = [c for c in config.class_names or [] if c != config.background]
        if len(named) > 1:
            raise CsptError(f"--class-names {' '.join(named)}: without --class-field every feature of "
                            f"{config.labels} is one class; name one (beside --background)")
        single = named[0] if named else None
    return read_vector_labels(Path(config.labels), config.class_field, single)


def label_classes(config: SegmentConfig) -> list[str]:
    """The classes of vector labels: ``--background`` first, then ``--class-names`` (which must name every
    class the labels hold) or the labels' own, sorted."""
    if not config.scenes:
        raise CsptError("--labels needs --scenes (the GeoTIFFs they label)")
    labels = vector_labels_of(config)
    found = vector_classes(labels)
    check_lies_over(labels, config.scenes)
    named = [c for c in config.class_names or found if c != config.background]
    class_index(labels, named)
    classes = ([config.background] if config.background else []) + named
    if len(classes) < 2:
        raise CsptError(f"{config.labels}: its features hold one class ({', '.join(found)}); give --background "
                        "NAME to learn it against the pixels under no polygon, or a --class-field with more")
    return classes


def check_batch_norm_batch(config: SegmentConfig) -> None:
    """The pyramid and heads use BatchNorm: at least 2 crops per batch, per process, or over all the
    processes of a GPU job (its BatchNorm layers are synchronised)."""
    world = launched_world_size()
    synced = world > 1 and resolve_device(config.device) == "cuda"
    if config.batch_size * (world if synced else 1) < 2:
        where = "per process (BatchNorm is synchronised over processes on GPUs only)" if world > 1 else ""
        raise CsptError(f"--batch-size {config.batch_size}: the pyramid and heads use BatchNorm, which needs at "
                        f"least 2 crops {where or 'per batch'}")


def pixel_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels; 0 for a batch without any (every crop over pixels
    without data or outside its region), where the mean would be NaN."""
    labelled = (masks != ignore_index).sum().clamp(min=1)
    return F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="sum") / labelled


class SegmentTask(FineTuneTask):
    """Fine-tuning ViT + UperNet, for the :class:`~cspt.engine.Trainer`."""

    monitor = "val_miou"

    def __init__(self, config: SegmentConfig, palette: Palette, splits: dict[str, list[Pair]],
                 init: Checkpoint | None = None):
        self.config = config
        self.palette = palette
        self.splits = splits
        self.arch = arch_of(config)
        self.init = init
        super().__init__()

    def build_model(self, load_init: bool) -> nn.Module:
        model = model_from_description(self.describe(Path(), ""), self.config.drop_path)
        if load_init:
            load_init_weights(model.backbone.encoder, self.config, self.init, ("head.",),
                              training_images(self.config))
        self.init = None
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups_layer_decay(model, model.backbone.encoder, self.arch.depth, self.config.weight_decay,
                                        self.config.layer_decay)

    def train_data(self) -> tuple[SegmentationCrops, Any]:
        cfg = self.config
        check_normalisation([pair.image for pair in self.splits["train"]], contract_of(cfg), self.dist.is_main)
        dataset = SegmentationCrops(self.splits["train"], self.palette, cfg.crop_size, contract_of(cfg),
                                    cfg.ignore_index, cfg.scale_range, cfg.photometric, cfg.resize,
                                    windows_per_epoch=cfg.windows_per_epoch)
        return dataset, collate_crops

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        out = model(images)
        ignore = self.config.ignore_index
        if isinstance(out, tuple):
            logits, aux = out
            return pixel_loss(logits, masks, ignore) + self.config.aux_weight * pixel_loss(aux, masks, ignore)
        return pixel_loss(out, masks, ignore)

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any] | None:
        cfg = self.config
        if not self.evaluates_after(epoch, "val" in self.splits):
            return None
        done = epoch + 1
        metrics = evaluate_pairs(model, self.splits["val"], self.describe(run_dir, ""), contract_of(cfg),
                                 next(model.parameters()).device, cfg.precision)
        model.train()
        if self.improves(metrics["miou"], epoch) and self.dist.is_main:
            write_weights(model.state_dict(), run_dir / SEGMENTER,
                          self.describe(run_dir, f"best validation mIoU {metrics['miou']:.4f} at epoch {done}"))
            write_segmentation_metrics({**metrics, "epoch": done}, run_dir, "validation tiles")
        return {"val_miou": metrics["miou"], "val_oa": metrics["oa"], "val_mean_f1": metrics["mean_f1"],
                "best_val_miou": self.best["val_miou"], "val_invalid_pixels": metrics["invalid_pixels"]}

    def on_fit_end(self, model: nn.Module, run_dir: Path) -> None:
        if "val" not in self.splits and self.dist.is_main:
            write_weights(model.state_dict(), run_dir / SEGMENTER, self.describe(run_dir, "last epoch"))
            log.info("no validation tiles: kept the last epoch; evaluate it with cspt evaluate segment")
        if "val" in self.splits and self.dist.is_main:  # the report's example: the first validation region drawn
            example = self.splits["val"][0]
            area = region_area(example)
            if area is not None and not georeference_of(example.image).is_georeferenced:
                log.info("no example drawing: the first validation region is part of a picture without a map "
                         "position, which cspt predict segment draws whole")
                return
            aoi = None if area is None else validation_polygons(self.config) if example.zone else \
                bbox_aoi(region_bbox(area))
            predict_segmenter(run_dir, [str(example.image)], run_dir / "examples", draw=True,
                              device=str(next(model.parameters()).device.type), aoi=aoi)

    def describe(self, run_dir: Path, selected: str) -> SegmenterDescription:
        """``segmenter.json``: how to rebuild, feed and read the model, and where it came from."""
        cfg = self.config
        stage = {"stage": "fine-tuning (semantic segmentation)", "run": str(run_dir),
                 "data": cfg.images or cfg.scenes, "train_tiles": len(self.splits["train"]), "epochs": cfg.epochs,
                 "selected": selected, "config": dataclasses.asdict(cfg)}
        return SegmenterDescription(architecture=self.arch.to_dict(), pixels=contract_of(cfg).to_dict(),
                                    palette=self.palette.to_dict(), ignore_index=cfg.ignore_index,
                                    pyramid=cfg.pyramid, taps=cfg.taps, channels=cfg.channels,
                                    aux_channels=cfg.aux_channels, crop_size=cfg.crop_size, stride=cfg.stride,
                                    resize=cfg.resize, selected=selected, lineage=self.parents + [stage])


def finetune_segment(config: SegmentConfig, resume: str | Path | bool | None = None,
                     overrides: dict[str, Any] | None = None) -> Path:
    """Run (or continue) segmentation fine-tuning; returns the run directory."""
    config, run_dir, init = start_run(SegmentConfig, config, resume, overrides, resolve_config)
    palette = load_palette(config.palette, config.class_names)
    with distributed_run(config, run_dir) as dist:
        splits_dir = run_dir / SPLITS_DIR
        if dist.is_main and not ((splits_dir / "train.csv").is_file() and has_checkpoint(run_dir)):
            for stale in splits_dir.glob("*.csv"):
                stale.unlink()
            source = config
            if config.labels:  # the polygons burnt onto each scene's grid, then pairs like any others
                labels = vector_labels_of(config)
                table = scene_label_pairs(config.scenes, labels, palette.classes, run_dir / "labels",
                                          config.ignore_index, config.background)
                source = dataclasses.replace(config, images=[str(table)], masks=None)
            made = make_split(source, palette, splits_dir)
            for name, pairs in made.items():
                write_pairs(pairs, splits_dir / f"{name}.csv")
            if "val" in made:
                draw_split(made, splits_dir / "map.png", config.split if not config.val_images else "--val-images")
        barrier()
        splits = read_split(splits_dir)
        if dist.is_main:
            log.info("data: %s regions (splits in %s)",
                     ", ".join(f"{n} {len(p)}" for n, p in splits.items()), splits_dir)
        Trainer(config, run_dir, dist).fit(SegmentTask(config, palette, splits, init))
    return run_dir
