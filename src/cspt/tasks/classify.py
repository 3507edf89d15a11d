"""Scene classification: fine-tune a ViT (the MAE/CSPT recipe), evaluate it, predict with it.

``finetune_classify(config)`` is the whole stage as one call. A run directory ends with
``classifier.safetensors`` + ``classifier.json`` (the best validation epoch, or the last
one without a validation split), ``splits/`` and the test evaluation: ``metrics.json``,
``confusion.csv``, ``confusion.png`` and ``predictions.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from cspt.config import ClassifyConfig, LabelledDataConfig
from cspt.data.aoi import SceneArea, output_crs
from cspt.data.classification import (
    LabelledImages,
    LabelledSet,
    collate_labelled,
    keep_label_fraction,
    read_label_csv,
    read_labelled,
    stratified_split,
    write_label_csv,
)
from cspt.data.files import find_images
from cspt.data.images import read_raw
from cspt.data.vector_labels import VectorLabels
from cspt.engine.distributed import DistContext, barrier, is_main_process, resolve_device
from cspt.engine.inference import Outputs, run_inference
from cspt.engine.loading import default_num_workers
from cspt.engine.optim import param_groups_layer_decay
from cspt.engine.progress import scenes_progress
from cspt.engine.run_dir import has_checkpoint
from cspt.engine.trainer import Trainer, resolve_precision
from cspt.errors import CsptError
from cspt.metrics import classification_metrics, segmentation_metrics, write_confusion_csv
from cspt.models.classifier import NOT_FOR_CLASSIFIER, build_classifier
from cspt.plots import plot_confusion
from cspt.tasks.common import (
    SPLITS_DIR,
    DescribedModel,
    FineTuneTask,
    arch_of,
    check_normalisation,
    check_prediction_inputs,
    contract_of,
    distributed_run,
    finish_prediction,
    images_in,
    load_described,
    load_init_weights,
    predict_each,
    require_data_for_graph,
    resolved_encoder_fields,
    start_run,
)
from cspt.tasks.maps import (
    MAP_OUTPUTS,
    qualitative_colors,
    scene_strips,
    score_strips,
    warp_class_rasters,
    write_class_raster,
)
from cspt.weights.descriptions import ClassifierDescription
from cspt.weights.export import write_weights
from cspt.weights.load import Checkpoint

log = logging.getLogger("cspt")

CLASSIFIER = "classifier.safetensors"
EVAL_BATCH = 64


# ---------------------------------------------------------------- splits

def make_splits(config: LabelledDataConfig) -> dict[str, LabelledSet]:
    """train / val / test sets from ``--data`` (stratified fractions) or explicit sources."""
    if config.data and (config.train or config.val or config.test):
        raise CsptError("give --data (split by --train-fraction) or --train with --val/--test, not both")
    if config.data:
        fractions = {"train": config.train_fraction}
        if config.val_fraction > 0:
            fractions["val"] = config.val_fraction
        splits = stratified_split(read_labelled(config.data, exclude=[config.output]), fractions, config.split_seed,
                                  config.data)
    elif config.train:
        train = read_labelled(config.train, exclude=[config.output])
        splits = {"train": train}
        for name in ("val", "test"):
            source = getattr(config, name)
            if source:
                splits[name] = read_labelled(source, train.classes)
        if len(splits) == 1:
            raise CsptError(f"{config.train}: --train needs --val or --test to evaluate on")
    else:
        raise CsptError("no data: give --data DIR (split by --train-fraction) or --train DIR with --val/--test")
    splits["train"] = keep_label_fraction(splits["train"], config.label_fraction, config.split_seed)
    empty = [name for name, count in zip(splits["train"].classes, splits["train"].counts()) if count == 0]
    if empty:
        raise CsptError(f"{config.train or config.data}: no training image for class(es) {', '.join(empty)}")
    return splits


def write_splits(splits: dict[str, LabelledSet], folder: Path) -> None:
    """``train/val/test.csv`` (absolute paths) and ``classes.txt`` (written last: marks completion)."""
    for name, data in splits.items():
        write_label_csv(data, folder / f"{name}.csv")
    (folder / "classes.txt").write_text("\n".join(splits["train"].classes) + "\n")


def read_splits(folder: Path) -> dict[str, LabelledSet]:
    """The train / val / test sets :func:`write_splits` wrote to ``folder`` (those present)."""
    classes = (folder / "classes.txt").read_text().split("\n")[:-1]
    return {name: read_label_csv(folder / f"{name}.csv", classes)
            for name in ("train", "val", "test") if (folder / f"{name}.csv").is_file()}


def has_splits(run_dir: Path) -> bool:
    """Whether a run directory holds its complete splits (``classes.txt`` is written last)."""
    return (run_dir / SPLITS_DIR / "classes.txt").is_file()


def describe_splits(splits: dict[str, LabelledSet]) -> str:
    """One line: the number of classes and the images of each split."""
    sizes = ", ".join(f"{name} {len(data)}" for name, data in splits.items())
    return f"{len(splits['train'].classes)} classes; images: {sizes}"


# ---------------------------------------------------------------- saving and loading classifiers

def write_classifier(model: nn.Module, path: Path, info: ClassifierDescription) -> Path:
    """``classifier.safetensors`` (timm keys, head included) with its ``classifier.json``."""
    return write_weights(model.state_dict(), path, info)


def load_classifier(checkpoint: str | Path) -> DescribedModel:
    """A fine-tuned classifier and its description (classes, architecture, normalisation)."""
    return load_described(checkpoint, CLASSIFIER, "classify", lambda info: build_classifier(
        info.arch, len(info.classes), info.global_pool))


# ---------------------------------------------------------------- evaluation

def eval_dataset(data: LabelledSet, described: DescribedModel, max_image_pixels: int | None = None) -> LabelledImages:
    """``data`` as a classifier's evaluation reads it: its pixel contract, resize and centre crop."""
    return LabelledImages(data, described.contract(max_image_pixels), described.info.arch.img_size,
                          train=False, crop_ratio=described.info.eval_crop_ratio)


def inference_workers(requested: int | None, device: torch.device) -> int:
    """Loader processes for inference: ``requested``, else the default for one process on ``device``."""
    return requested if requested is not None else default_num_workers(DistContext(0, 1, 0, device))


def classify_outputs(model: nn.Module, dataset: LabelledImages, device: torch.device,
                     batch_size: int = EVAL_BATCH, num_workers: int | None = None,
                     precision: str = "auto") -> Outputs:
    """Class probabilities of every readable image of ``dataset``."""
    model = model.to(device).eval()
    return run_inference(lambda x: model(x).softmax(-1), dataset, collate_labelled, batch_size, device,
                         inference_workers(num_workers, device), resolve_precision(precision, device),
                         desc="evaluating")


def write_evaluation(metrics: dict[str, Any], outputs: Outputs, data: LabelledSet, folder: Path,
                     title: str) -> None:
    """``metrics.json``, ``confusion.csv``, ``confusion.png`` and ``predictions.csv`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_confusion_csv(metrics["confusion"], data.classes, folder / "confusion.csv")
    plot_confusion(metrics["confusion"], data.classes, folder / "confusion.png",
                   f"{title}: OA {metrics['oa']:.3f}, kappa {metrics['kappa']:.3f}")
    write_predictions(outputs, data.paths, data.classes, folder / "predictions.csv", data.labels)


def write_predictions(outputs: Outputs, paths: Sequence[Path], classes: Sequence[str], path: Path,
                      labels: Sequence[int] | None = None) -> None:
    """``path,label,score`` per image (plus ``true`` when labels are known)."""
    scores, predicted = outputs.values.max(1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "score"] + (["true"] if labels is not None else []))
        for index, label, score in zip(outputs.indices.tolist(), predicted.tolist(), scores.tolist()):
            row = [str(paths[index]), classes[label], f"{score:.6f}"]
            writer.writerow(row + ([classes[labels[index]]] if labels is not None else []))


def evaluate_classifier(checkpoint: str | Path, data: str | Path | None = None, output: str | Path | None = None,
                        batch_size: int = EVAL_BATCH, device: str = "auto", num_workers: int | None = None,
                        max_image_pixels: int | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate a classifier on ``data`` (default: its run's test split); returns metrics and folder.

    In a process group every process evaluates its share; the main one writes the files.
    """
    described = load_classifier(checkpoint)
    model, info, weights = described
    require_data_for_graph(weights, data, "--data")
    run_dir = weights.parent
    if data is not None:
        labelled = read_labelled(data, info.classes)
        folder = Path(output) if output else run_dir / "evaluation" / Path(data).stem
        source = str(data)
    else:
        split = next((run_dir / SPLITS_DIR / f"{name}.csv" for name in ("test", "val")
                      if (run_dir / SPLITS_DIR / f"{name}.csv").is_file()), None)
        if split is None:
            raise CsptError(f"{run_dir}: no {SPLITS_DIR}/test.csv; pass --data to evaluate on")
        labelled = read_label_csv(split, info.classes)
        folder, source = Path(output) if output else run_dir, str(split)
    outputs = classify_outputs(model, eval_dataset(labelled, described, max_image_pixels),
                               torch.device(resolve_device(device)), batch_size, num_workers)
    for message in outputs.skipped:
        log.warning("skipped unreadable image: %s", message)
    if len(outputs.labels) == 0:
        raise CsptError(f"{source}: no readable image to evaluate")
    metrics = classification_metrics(outputs.values.argmax(1), outputs.labels, info.classes)
    metrics.update(checkpoint=str(weights), data=source, skipped_images=len(outputs.skipped))
    if is_main_process():
        write_evaluation(metrics, outputs, labelled, folder, Path(source).stem)
        log.info("OA %.4f, AA %.4f, kappa %.4f on %d images of %s", metrics["oa"], metrics["aa"],
                 metrics["kappa"], metrics["images"], source)
    return metrics, folder


def predict_classifier(checkpoint: str | Path, images: Sequence[str], output: str | Path,
                       batch_size: int = EVAL_BATCH, device: str = "auto", num_workers: int | None = None,
                       max_image_pixels: int | None = None) -> Path:
    """Write ``path,label,score`` for every readable image in ``images`` to the CSV ``output``."""
    described = load_classifier(checkpoint)
    model, info, _ = described
    files = find_images(list(images))
    check_prediction_inputs(files, described.contract(max_image_pixels))
    data = LabelledSet(files, [0] * len(files), info.classes)
    outputs = classify_outputs(model, eval_dataset(data, described, max_image_pixels),
                               torch.device(resolve_device(device)), batch_size, num_workers)
    for message in outputs.skipped:
        log.warning("skipped unreadable image: %s", message)
    output = Path(output)
    if len(outputs.indices):
        output.parent.mkdir(parents=True, exist_ok=True)
        write_predictions(outputs, files, info.classes, output)
    else:
        output.unlink(missing_ok=True)  # an earlier run's predictions are not this run's
    log.info("predicted %d images (%d unreadable skipped)", len(outputs.indices), len(outputs.skipped))
    return finish_prediction(output, outputs.skipped, len(files), "images")


def scene_forward(model: nn.Module, img_size: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class scores of a batch of scene windows, each resized to the model's input, spread over its pixels."""
    model = model.to(device).eval()

    def forward(crops: torch.Tensor) -> torch.Tensor:
        inputs = F.interpolate(crops.to(device), size=(img_size, img_size), mode="bilinear", antialias=True)
        return model(inputs)[:, :, None, None].expand(-1, -1, *crops.shape[-2:])

    return forward


def check_scene_windows(window: int, stride: int | None) -> int:
    """The stride of scene windows (default: the window); a one-line error for gaps between windows."""
    stride = stride or window
    if window < 1 or not 1 <= stride <= window:
        raise CsptError(f"--stride {stride} must lie in 1..{window} (the --window): a larger step leaves pixels no "
                        "window covers")
    return stride


def predict_scene_classes(checkpoint: str | Path, scenes: Sequence[str], output: str | Path, window: int,
                          stride: int | None = None, blend: str = "none", device: str = "auto", batch_size: int = 32,
                          probabilities: bool = False, max_image_pixels: int | None = None,
                          aoi: VectorLabels | None = None, dst_crs: str | None = None) -> Path:
    """A class map of every (large) scene: each ``window`` x ``window`` window, resized to the model's input,
    gets one class; written as ``NAME.tif``, georeferenced like the scene, nodata where it has no data (see
    :mod:`cspt.tasks.maps`). With ``stride`` below ``window`` and a smooth ``blend``, overlapping windows'
    scores are blended. ``aoi`` and ``dst_crs``: only the area of interest, warped to that CRS (as
    :func:`~cspt.tasks.segment.predict_segmenter`)."""
    stride = check_scene_windows(window, stride)
    described = load_classifier(checkpoint)
    contract = described.contract(max_image_pixels)
    forward = scene_forward(described.model, described.info.arch.img_size,
                            torch.device(resolve_device(device)))
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    colors = qualitative_colors(len(described.info.classes))
    crs = output_crs(dst_crs)

    def predict(path: Path, area: SceneArea | None) -> None:
        shape, strips = scene_strips(forward, path, contract, window, stride, blend, batch_size, area)
        write_class_raster(strips, path, folder, shape, described.info.classes, colors, probabilities, area)
        warp_class_rasters(folder, path.stem, crs)
        log.info("%s: class map of %d x %d px windows written to %s", path, window, window, folder)

    return predict_each(find_images(list(scenes), exclude=[folder]), folder, contract, MAP_OUTPUTS, predict,
                        "scenes", aoi, crs)


def evaluate_scene_classes(checkpoint: str | Path, scenes: Sequence[str], masks: Sequence[str], window: int,
                           stride: int | None = None, blend: str = "none", device: str = "auto",
                           batch_size: int = 32, ignore_index: int = 255,
                           max_image_pixels: int | None = None) -> dict[str, Any]:
    """Per-pixel scores of the class maps :func:`predict_scene_classes` writes against label rasters (``masks``,
    one per scene, class indices in the classifier's order, ``ignore_index`` unscored): the same windows and
    blend, so what is scored is what is written; pixels without data are not scored, and counted."""
    if len(scenes) != len(masks):
        raise CsptError(f"give one label raster per scene ({len(scenes)} scenes, {len(masks)} --masks)")
    stride = check_scene_windows(window, stride)
    described = load_classifier(checkpoint)
    contract = described.contract(max_image_pixels)
    classes = described.info.classes
    forward = scene_forward(described.model, described.info.arch.img_size,
                            torch.device(resolve_device(device)))
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    invalid = 0
    for scene, mask in scenes_progress(zip(map(Path, scenes), map(Path, masks), strict=True), len(scenes)):
        labels = read_label_raster(mask, len(classes), ignore_index)
        shape, strips = scene_strips(forward, scene, contract, window, stride, blend, batch_size)
        if labels.shape != (shape.height, shape.width):
            raise CsptError(f"{mask}: {labels.shape[1]} x {labels.shape[0]} pixels, its scene {scene} is "
                            f"{shape.width} x {shape.height}")
        scored = score_strips(strips, lambda top, rows: labels[top:top + rows], len(classes), ignore_index)
        confusion += scored.confusion
        invalid += scored.invalid
    return {**segmentation_metrics(confusion, classes), "invalid_pixels": invalid, "scenes": len(scenes)}


def read_label_raster(path: Path, classes: int, ignore_index: int) -> np.ndarray:
    """A one-band raster of class indices (``ignore_index``: not scored), checked against ``classes``."""
    labels = read_raw(path).values[..., 0].astype(np.int64)
    bad = np.unique(labels[(labels != ignore_index) & ((labels < 0) | (labels >= classes))])
    if bad.size:
        raise CsptError(f"{path}: class indices {', '.join(map(str, bad[:8]))} outside 0-{classes - 1} (and "
                        f"ignore {ignore_index})")
    return labels


# ---------------------------------------------------------------- fine-tuning

def mixes(config: ClassifyConfig) -> bool:
    """Whether batches go through mixup/cutmix (then targets are soft)."""
    return (config.mixup > 0 or config.cutmix > 0) and config.mixup_prob > 0


def training_images(config: ClassifyConfig) -> Callable[[], list[Path]]:
    """The training images, listed when called."""
    return images_in([config.train or config.data], lambda table: read_label_csv(table).paths)


def resolve_config(config: ClassifyConfig, init: Checkpoint | None = None) -> ClassifyConfig:
    """Architecture and normalisation from flags, preset and ``--init``; checks that need them."""
    config = dataclasses.replace(config, **resolved_encoder_fields(config, init, training_images(config)))
    if mixes(config) and config.batch_size % 2:
        raise CsptError(f"mixup/cutmix need an even --batch-size, got {config.batch_size}")
    if not 0 < config.eval_crop_ratio <= 1:
        raise CsptError(f"--eval-crop-ratio {config.eval_crop_ratio} must lie in (0, 1]")
    return config


class ClassifyTask(FineTuneTask):
    """Fine-tuning a ViT classifier, for the :class:`~cspt.engine.Trainer`."""

    monitor = "val_oa"

    def __init__(self, config: ClassifyConfig, splits: dict[str, LabelledSet], init: Checkpoint | None = None):
        self.config = config
        self.splits = splits
        self.classes = splits["train"].classes
        self.arch = arch_of(config)
        self.init = init
        self.mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                           switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing,
                           num_classes=len(self.classes)) if mixes(config) else None
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif config.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(config.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.ema: ModelEmaV3 | None = None
        self.ema_state: dict | None = None  #: EMA weights from a resumed state, until the EMA exists
        super().__init__()

    def build_model(self, load_init: bool) -> nn.Module:
        cfg = self.config
        model = build_classifier(self.arch, len(self.classes), cfg.global_pool, cfg.drop_path)
        if load_init:
            drop = NOT_FOR_CLASSIFIER + (("norm.",) if cfg.global_pool == "avg" else ())
            load_init_weights(model, cfg, self.init, drop, training_images(cfg))
        self.init = None
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups_layer_decay(model, model, self.arch.depth, self.config.weight_decay,
                                        self.config.layer_decay)

    def train_data(self) -> tuple[LabelledImages, Any]:
        cfg = self.config
        contract = contract_of(cfg)
        check_normalisation(self.splits["train"].paths, contract, self.dist.is_main)
        dataset = LabelledImages(self.splits["train"], contract, cfg.img_size, train=True, min_scale=cfg.min_scale,
                                 rand_augment=cfg.rand_augment, reprob=cfg.reprob)
        return dataset, collate_labelled

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        images = batch["image"].to(device, non_blocking=True)
        targets = batch["label"].to(device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        return self.criterion(model(images), targets)

    def ema_model(self, model: nn.Module) -> nn.Module:
        """The model to evaluate and keep: the EMA copy when ``--ema`` is on."""
        if self.config.ema is None:
            return model
        if self.ema is None:
            self.ema = ModelEmaV3(model, decay=self.config.ema)
            if self.ema_state is not None:
                self.ema.load_state_dict(self.ema_state)
                self.ema_state = None
        return self.ema.module

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.config.ema is not None:
            self.ema_model(model)
            self.ema.update(model, step)

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any] | None:
        cfg = self.config
        if not self.evaluates_after(epoch, "val" in self.splits):
            return None
        done = epoch + 1
        net = self.ema_model(model)
        val = LabelledImages(self.splits["val"], contract_of(cfg), cfg.img_size, train=False,
                             crop_ratio=cfg.eval_crop_ratio)
        outputs = classify_outputs(net, val, next(net.parameters()).device, num_workers=cfg.num_workers,
                                   precision=cfg.precision)
        metrics = classification_metrics(outputs.values.argmax(1), outputs.labels, self.classes)
        net.train()
        if self.improves(metrics["oa"], epoch) and self.dist.is_main:
            write_classifier(net, run_dir / CLASSIFIER,
                             self.describe(run_dir, f"best validation OA {metrics['oa']:.4f} at epoch {done}"))
        return {"val_oa": metrics["oa"], "val_aa": metrics["aa"], "val_kappa": metrics["kappa"],
                "best_val_oa": self.best["val_oa"]}

    def on_fit_end(self, model: nn.Module, run_dir: Path) -> None:
        if "val" not in self.splits and self.dist.is_main:
            write_classifier(self.ema_model(model), run_dir / CLASSIFIER, self.describe(run_dir, "last epoch"))
        barrier()  # the kept weights are on disk before any process reads them back
        cfg = self.config
        evaluate_classifier(run_dir, device=str(next(model.parameters()).device.type),
                            num_workers=cfg.num_workers)

    def describe(self, run_dir: Path, selected: str) -> ClassifierDescription:
        """``classifier.json``: what the weights are, how to feed them, where they came from."""
        cfg = self.config
        stage = {"stage": "fine-tuning (scene classification)", "run": str(run_dir),
                 "data": cfg.data or cfg.train, "train_images": len(self.splits["train"]),
                 "label_fraction": cfg.label_fraction, "epochs": cfg.epochs, "selected": selected,
                 "config": dataclasses.asdict(cfg)}
        return ClassifierDescription(architecture=self.arch.to_dict(), pixels=contract_of(cfg).to_dict(),
                                     classes=self.classes, global_pool=cfg.global_pool,
                                     eval_crop_ratio=cfg.eval_crop_ratio, selected=selected,
                                     lineage=self.parents + [stage])

    def state_dict(self) -> dict[str, Any]:
        ema = self.ema.state_dict() if self.ema is not None else self.ema_state
        return {**super().state_dict(), "ema": ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ema_state = state.get("ema")


def finetune_classify(config: ClassifyConfig, resume: str | Path | bool | None = None,
                      overrides: dict[str, Any] | None = None) -> Path:
    """Run (or continue) classification fine-tuning, then evaluate; returns the run directory.

    The train/val/test split is fixed when the run starts (``RUN_DIR/splits``) and reused
    by every later step (resume, ``cspt evaluate``).
    """
    config, run_dir, init = start_run(ClassifyConfig, config, resume, overrides, resolve_config)
    with distributed_run(config, run_dir) as dist:
        splits_dir = run_dir / SPLITS_DIR
        if dist.is_main and not (has_splits(run_dir) and has_checkpoint(run_dir)):  # a continued run keeps it
            write_splits(make_splits(config), splits_dir)
        barrier()
        splits = read_splits(splits_dir)
        if dist.is_main:
            log.info("data: %s (splits in %s)", describe_splits(splits), splits_dir)
        Trainer(config, run_dir, dist).fit(ClassifyTask(config, splits, init))
    return run_dir
