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
from PIL import Image
from torch import nn

from cspt.checkpoints import Checkpoint
from cspt.config import SegmentConfig
from cspt.data.files import find_images
from cspt.data.georaster import vectorize_classes
from cspt.data.images import (
    TIFF_SUFFIXES,
    ImageInfo,
    ImageReadError,
    display_rgb,
    image_info,
    read_image,
)
from cspt.data.sampling import band_tensors, read_masked_bands
from cspt.data.scaling import stage_statistics, to_display
from cspt.data.segmentation import (
    Pair,
    Palette,
    SegmentationCrops,
    check_pairs,
    collate_crops,
    pair_images,
    read_mask,
    split_pairs,
)
from cspt.data.vector_labels import read_vector_labels, scene_label_pairs, vector_classes
from cspt.engine.distributed import all_gather_objects, barrier, launched_world_size, resolve_device, shard
from cspt.engine.optim import param_groups_layer_decay
from cspt.engine.run_dir import has_checkpoint
from cspt.engine.streaming import Strip, blended_logits, stream_strips
from cspt.engine.trainer import Trainer, resolve_precision
from cspt.errors import CsptError
from cspt.export import write_weights
from cspt.metrics import segmentation_confusion, segmentation_metrics, write_confusion_csv
from cspt.models.segmenter import Segmenter, build_segmenter
from cspt.models.vit import ArchConfig
from cspt.plots import plot_confusion
from cspt.tasks.common import (
    SPLITS_DIR,
    DescribedModel,
    FineTuneTask,
    arch_of,
    check_normalisation,
    distributed_run,
    images_in,
    load_described,
    load_init_weights,
    resolved_encoder_fields,
    resolved_taps,
    start_run,
)
from cspt.tasks.maps import normalised_windows, qualitative_colors, strip_labels, write_class_raster

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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask"])
        writer.writerows([str(p.image.resolve()), str(p.mask.resolve())] for p in pairs)


def make_split(config: SegmentConfig, palette: Palette) -> dict[str, list[Pair]]:
    """Checked training and (optional) validation pairs; logs the pixel share of every class."""
    if not config.images:
        raise CsptError("no --images given")
    pairs, counts = check_pairs(pair_images(config.images, config.masks), palette, config.ignore_index)
    if config.val_images:
        val, _ = check_pairs(pair_images(config.val_images, config.val_masks), palette, config.ignore_index)
        splits = {"train": pairs, "val": val}
    elif config.val_fraction > 0:
        train, val = split_pairs(pairs, config.val_fraction, config.split_seed)
        splits = {"train": train, "val": val}
    else:
        splits = {"train": pairs}
    shares = counts / max(1, counts.sum())
    log.info("classes (pixel share): %s", ", ".join(f"{n} {s:.1%}" for n, s in zip(palette.classes, shares,
                                                                                     strict=True)))
    return splits


def read_split(folder: Path) -> dict[str, list[Pair]]:
    """The pairs a run was started with (sizes re-read from the headers, masks not re-checked)."""
    splits = {}
    for name in ("train", "val"):
        path = folder / f"{name}.csv"
        if path.is_file():
            rows = list(csv.reader(path.read_text().splitlines()))[1:]
            splits[name] = [pair_of(Path(image), Path(mask)) for image, mask in rows]
    return splits


def pair_of(image: Path, mask: Path) -> Pair:
    info = image_info(image)
    return Pair(image, mask, info.height, info.width)


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


def source_window(info: dict[str, Any]) -> tuple[int, int]:
    """The sliding window and stride in image pixels (the network's crop seen at ``resize``)."""
    resize = info["resize"]
    return max(1, round(info["crop_size"] / resize)), max(1, round(info["stride"] / resize))


@torch.no_grad()
def predict_tile(model: nn.Module, image: torch.Tensor, info: dict[str, Any], device: torch.device | None = None,
                 autocast: torch.dtype | None = None, blend: str = "cosine") -> torch.Tensor:
    """Class logits ``(classes, H, W)`` of a whole normalised image, by blended sliding windows."""
    device = device or next(model.parameters()).device
    forward = window_forward(model, info["crop_size"], info["resize"], device, autocast)
    return blended_logits(forward, image, *source_window(info), blend)


def evaluate_pairs(model: nn.Module, pairs: Sequence[Pair], info: dict[str, Any], device: torch.device,
                   precision: str = "auto") -> dict[str, Any]:
    """Sliding-window metrics (mIoU, OA, mean F1, per class, confusion) over whole tiles.

    In a process group every process must call it: each scores its share of the tiles,
    and all of them get the metrics of every tile.
    """
    palette = Palette.from_dict(info["palette"])
    classes, ignore = palette.classes, info["ignore_index"]
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    model = model.to(device).eval()
    autocast = resolve_precision(precision, device)
    in_chans = info["architecture"]["in_chans"]
    mean, std = band_tensors(*stage_statistics(info), in_chans)
    skipped = 0
    for pair in shard(pairs):
        try:
            pixels, valid = read_masked_bands(pair.image, in_chans)
            image = (pixels - mean) / std
            labels = read_mask(pair.mask, palette, ignore)
            labels[~valid.numpy()] = ignore  # no data: not scored
            target = torch.from_numpy(labels)
        except ImageReadError as err:
            log.warning("skipped unreadable tile: %s", err)
            skipped += 1
            continue
        logits = predict_tile(model, image, info, device, autocast)
        confusion += segmentation_confusion(logits.argmax(0).cpu(), target, len(classes), ignore)
    shares = all_gather_objects((confusion, skipped))
    metrics = segmentation_metrics(sum(c for c, _ in shares), classes)
    metrics["skipped_tiles"] = sum(n for _, n in shares)
    return metrics


def write_segmentation_metrics(metrics: dict[str, Any], folder: Path, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_confusion_csv(metrics["confusion"], metrics["classes"], folder / "confusion.csv")
    plot_confusion(metrics["confusion"], metrics["classes"], folder / "confusion.png",
                   f"{title}: mIoU {metrics['miou']:.3f}, OA {metrics['oa']:.3f}")


def model_from_description(info: dict[str, Any], drop_path: float = 0.0) -> Segmenter:
    return build_segmenter(ArchConfig.from_dict(info["architecture"]), len(info["palette"]["classes"]),
                           info["channels"], info["aux_channels"] or None, info["pyramid"], info["taps"], drop_path)


def load_segmenter(checkpoint: str | Path) -> DescribedModel:
    return load_described(checkpoint, SEGMENTER, "segment", model_from_description)


def evaluate_segmenter(checkpoint: str | Path, images: Sequence[str] | None = None,
                       masks: Sequence[str] | None = None, output: str | Path | None = None,
                       device: str = "auto") -> tuple[dict[str, Any], Path]:
    """Evaluate on ``images`` (+ ``masks``), default the run's validation tiles; returns metrics and folder."""
    model, info, weights = load_segmenter(checkpoint)
    run_dir = weights.parent
    palette = Palette.from_dict(info["palette"])
    if images:
        pairs, _ = check_pairs(pair_images(images, masks), palette, info["ignore_index"])
        folder = Path(output) if output else run_dir / "evaluation" / Path(images[0]).name
    else:
        split = read_split(run_dir / SPLITS_DIR).get("val")
        if not split:
            raise CsptError(f"{run_dir}: no validation tiles in {SPLITS_DIR}/; pass --images (and --masks)")
        pairs, folder = split, Path(output) if output else run_dir
    metrics = evaluate_pairs(model, pairs, info, torch.device(resolve_device(device)))
    metrics.update(checkpoint=str(weights), tiles=len(pairs))
    write_segmentation_metrics(metrics, folder, "segmentation")
    log.info("mIoU %.4f, OA %.4f, mean F1 %.4f on %d tiles", metrics["miou"], metrics["oa"], metrics["mean_f1"],
             len(pairs))
    return metrics, folder


def class_colors(palette: Palette) -> np.ndarray:
    """An RGB colour per class: the palette's, or a qualitative colour map for index masks."""
    return np.array(palette.colors, dtype=np.uint8) if palette.colors else qualitative_colors(len(palette.classes))


def predict_segmenter(checkpoint: str | Path, images: Sequence[str], output: str | Path, draw: bool = False,
                      device: str = "auto", blend: str = "cosine", probabilities: bool = False,
                      vectorize: str | None = None, batch_size: int = 8) -> Path:
    """Class maps of every image, predicted window by window (any size; bounded memory).

    A TIFF gives ``NAME.tif``: class indices with the input's CRS and transform, a colour
    table and 255 where the input has no data (with ``probabilities``, ``NAME_probabilities.tif``:
    one uint8 band per class); ``vectorize`` (``gpkg``, ``geojson`` or ``shp``) adds one polygon
    per connected region. Other images give ``NAME.png`` and ``NAME_color.png`` (+ ``NAME_overlay.jpg``
    with ``draw``).
    """
    model, info, _ = load_segmenter(checkpoint)
    palette = Palette.from_dict(info["palette"])
    colors = class_colors(palette)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(resolve_device(device))
    forward = window_forward(model.to(torch_device), info["crop_size"], info["resize"], torch_device)
    written = 0
    for path in find_images(list(images), exclude=[folder]):
        try:
            size = image_info(path)
            strips = stream_strips(forward, normalised_windows(path, info), size.height, size.width,
                                   *source_window(info), blend, batch_size)
            if path.suffix.lower() in TIFF_SUFFIXES:
                write_class_raster(strips, path, folder, size, colors, probabilities)
                if vectorize:
                    target = folder / f"{path.stem}.{vectorize}"
                    features = vectorize_classes(folder / f"{path.stem}.tif", target, palette.classes)
                    log.info("%s: %d class regions", target, features)
            else:
                write_class_pictures(strips, path, folder, size, colors, draw, info)
        except ImageReadError as err:
            log.warning("skipped unreadable image: %s", err)
            continue
        written += 1
    log.info("wrote class maps of %d images to %s", written, folder)
    return folder


def write_class_pictures(strips: Iterable[Strip], path: Path, folder: Path, size: ImageInfo, colors: np.ndarray,
                         draw: bool, info: dict[str, Any]) -> None:
    """``NAME.png`` (indices), ``NAME_color.png`` and, with ``draw``, ``NAME_overlay.jpg``."""
    labels = np.concatenate([strip_labels(strip) for strip in strips])
    Image.fromarray(labels).save(folder / f"{path.stem}.png")
    Image.fromarray(colors[labels]).save(folder / f"{path.stem}_color.png")
    if draw:
        picture = display_rgb(to_display(read_image(path), info.get("scale_low"), info.get("scale_high")))
        overlay = (0.5 * picture + 0.5 * colors[labels]).astype(np.uint8)
        Image.fromarray(overlay).save(folder / f"{path.stem}_overlay.jpg", quality=90)


# ---------------------------------------------------------------- fine-tuning

def resolve_config(config: SegmentConfig, init: Checkpoint | None = None) -> SegmentConfig:
    """Architecture (input size = crop size), stride and pyramid taps; checks that need them."""
    if config.crop_size is not None:
        config = dataclasses.replace(config, img_size=config.crop_size)
    if config.labels:
        if not config.scenes or not config.class_field:
            raise CsptError("--labels needs --scenes (the GeoTIFFs they label) and --class-field")
        config = dataclasses.replace(config, palette=None, class_names=config.class_names or vector_classes(
            read_vector_labels(Path(config.labels), config.class_field)))
    images = list(config.scenes) if config.labels else list(config.images)
    config = dataclasses.replace(config, **resolved_encoder_fields(config, init, images_in(images)))
    stride = config.stride or max(1, round(config.img_size * 2 / 3))
    taps = resolved_taps(config)
    check_batch_norm_batch(config)
    if not 0 < stride <= config.img_size:
        raise CsptError(f"--stride {stride} must lie in 1..{config.img_size} (the crop size)")
    if config.resize <= 0:
        raise CsptError(f"--resize {config.resize} must be positive")
    return dataclasses.replace(config, crop_size=config.img_size, stride=stride, taps=taps)


def check_batch_norm_batch(config: SegmentConfig) -> None:
    """The pyramid and heads use BatchNorm: at least 2 crops per batch, per process, or over all the
    processes of a GPU job (its BatchNorm layers are synchronised)."""
    world = launched_world_size()
    synced = world > 1 and resolve_device(config.device) == "cuda"
    if config.batch_size * (world if synced else 1) < 2:
        where = "per process (BatchNorm is synchronised over processes on GPUs only)" if world > 1 else ""
        raise CsptError(f"--batch-size {config.batch_size}: the pyramid and heads use BatchNorm, which needs at "
                        f"least 2 crops {where or 'per batch'}")


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
            load_init_weights(model.backbone.encoder, self.config, self.init, ("head.",))
        self.init = None
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups_layer_decay(model, model.backbone.encoder, self.arch.depth, self.config.weight_decay,
                                        self.config.layer_decay)

    def train_data(self) -> tuple[SegmentationCrops, Any]:
        cfg = self.config
        check_normalisation([pair.image for pair in self.splits["train"]], cfg, self.dist.is_main)
        dataset = SegmentationCrops(self.splits["train"], self.palette, cfg.crop_size, cfg.in_chans,
                                    *stage_statistics(cfg), cfg.ignore_index, cfg.scale_range, cfg.photometric,
                                    cfg.resize)
        return dataset, collate_crops

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        out = model(images)
        ignore = self.config.ignore_index
        if isinstance(out, tuple):
            logits, aux = out
            return (F.cross_entropy(logits, masks, ignore_index=ignore)
                    + self.config.aux_weight * F.cross_entropy(aux, masks, ignore_index=ignore))
        return F.cross_entropy(out, masks, ignore_index=ignore)

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any] | None:
        cfg = self.config
        if not self.evaluates_after(epoch, "val" in self.splits):
            return None
        done = epoch + 1
        metrics = evaluate_pairs(model, self.splits["val"], self.describe(run_dir, ""),
                                 next(model.parameters()).device, cfg.precision)
        model.train()
        if self.improves(metrics["miou"], epoch) and self.dist.is_main:
            write_weights(model.state_dict(), run_dir / SEGMENTER,
                          self.describe(run_dir, f"best validation mIoU {metrics['miou']:.4f} at epoch {done}"))
            write_segmentation_metrics({**metrics, "epoch": done}, run_dir, "validation tiles")
        return {"val_miou": metrics["miou"], "val_oa": metrics["oa"], "val_mean_f1": metrics["mean_f1"],
                "best_val_miou": self.best["val_miou"]}

    def on_fit_end(self, model: nn.Module, run_dir: Path) -> None:
        if "val" not in self.splits and self.dist.is_main:
            write_weights(model.state_dict(), run_dir / SEGMENTER, self.describe(run_dir, "last epoch"))
            log.info("no validation tiles: kept the last epoch; evaluate it with cspt evaluate segment")

    def describe(self, run_dir: Path, selected: str) -> dict[str, Any]:
        """``segmenter.json``: how to rebuild, feed and read the model, and where it came from."""
        cfg = self.config
        stage = {"stage": "fine-tuning (semantic segmentation)", "run": str(run_dir), "data": cfg.images,
                 "train_tiles": len(self.splits["train"]), "epochs": cfg.epochs, "selected": selected,
                 "config": dataclasses.asdict(cfg)}
        return {"task": "segment", "architecture": self.arch.to_dict(), "format": "cspt segmenter",
                "palette": self.palette.to_dict(), "ignore_index": cfg.ignore_index, "mean": cfg.mean,
                "std": cfg.std, "bands": cfg.bands, "scale_low": cfg.scale_low, "scale_high": cfg.scale_high,
                "pyramid": cfg.pyramid, "taps": cfg.taps, "channels": cfg.channels, "aux_channels": cfg.aux_channels,
                "crop_size": cfg.crop_size, "stride": cfg.stride,
                "resize": cfg.resize, "selected": selected, "lineage": self.parents + [stage]}


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
                labels = read_vector_labels(Path(config.labels), config.class_field)
                table = scene_label_pairs(config.scenes, labels, palette.classes, run_dir / "labels",
                                          config.ignore_index)
                source = dataclasses.replace(config, images=[str(table)], masks=None)
            for name, pairs in make_split(source, palette).items():
                write_pairs(pairs, splits_dir / f"{name}.csv")
        barrier()
        splits = read_split(splits_dir)
        if dist.is_main:
            log.info("data: %s tiles (splits in %s)",
                     ", ".join(f"{n} {len(p)}" for n, p in splits.items()), splits_dir)
        Trainer(config, run_dir, dist).fit(SegmentTask(config, palette, splits, init))
    return run_dir
