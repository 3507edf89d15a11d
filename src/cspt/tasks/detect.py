"""Object detection: fine-tune ViT + Faster R-CNN on scene tiles, evaluate and predict whole scenes.

``finetune_detect(config)`` is the whole stage as one call. A run directory ends with
``detector.safetensors`` + ``detector.json`` (best validation mAP@0.5, or the last
epoch) and, with validation scenes, ``metrics.json`` (VOC mAP@0.5 with per-class AP,
COCO mAP@[.5:.95]). Whole scenes are always read through the same sliding windows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import nn

from cspt.config import DetectConfig
from cspt.data.aoi import SceneArea, output_crs
from cspt.data.detection import Annotations, Scene, read_annotations
from cspt.data.files import find_images
from cspt.data.georaster import georeference_of, write_boxes
from cspt.data.images import display_rgb, gdal_name, is_raster
from cspt.data.pixels import PixelContract, Pixels
from cspt.data.scene_tiles import (
    DetectionTiles,
    box_window,
    collate_tiles,
    make_tiles,
    mostly_valid,
    read_window,
)
from cspt.data.vector_labels import VectorLabels
from cspt.engine.distributed import all_gather_objects, barrier, resolve_device, shard
from cspt.engine.optim import param_groups_layer_decay
from cspt.engine.progress import scenes_progress
from cspt.engine.sliding import sliding_window_detections
from cspt.engine.trainer import Trainer, resolve_precision
from cspt.errors import CsptError
from cspt.metrics import best_f1_threshold, coco_map, image_outcomes, precision_recall_at, voc_map
from cspt.models.detector import build_detector, detector_encoder
from cspt.tasks.common import (
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
from cspt.weights.descriptions import DetectorDescription
from cspt.weights.export import write_sidecar, write_weights
from cspt.weights.load import Checkpoint

log = logging.getLogger("cspt")

DETECTOR = "detector.safetensors"
#: the most training tiles the operating point is chosen on
OPERATING_TILES = 256
#: outline of a drawn detection by its outcome against the labels: hit, false alarm (or unlabelled), difficult
OUTCOME_COLOURS = {1: (40, 230, 40), 0: (255, 40, 40), -1: (160, 160, 160)}
MISSED_COLOUR = (0, 200, 255)  #: outline of a labelled object no detection found


# ---------------------------------------------------------------- inference and evaluation

def model_from_description(info: DetectorDescription, drop_path: float = 0.0) -> nn.Module:
    """The detector a description describes; it normalises its inputs with the pixel contract's mean/std."""
    contract = info.contract
    return build_detector(info.arch, len(info.classes), contract.mean, contract.std, style=info.pyramid,
                          taps=info.taps, fpn_channels=info.fpn_channels, anchor_sizes=info.anchor_sizes,
                          detections_per_image=info.detections_per_image, score_threshold=info.score_threshold,
                          roi_samples=info.roi_samples, drop_path=drop_path, nms_iou=info.nms_iou,
                          box_head=info.box_head, rpn_proposals=info.rpn_proposals)


def as_detections(found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision detector's output for one image on the CPU, in fp32, with 0-based class indices."""
    return {"boxes": found["boxes"].float().cpu(), "scores": found["scores"].float().cpu(),
            "labels": found["labels"].cpu() - 1}


@torch.no_grad()
def detect_scene(model: nn.Module, image: Path, height: int, width: int, info: DetectorDescription,
                 contract: PixelContract, device: torch.device, autocast: torch.dtype | None = None,
                 area: SceneArea | None = None) -> dict[str, torch.Tensor]:
    """Boxes (scene pixels), scores and 0-based class indices of a whole scene (or of ``area`` of it: its
    pixels outside the area read as pixels without data, boxes centred outside it dropped), by sliding
    windows read one by one through ``contract`` (windows without data are not run; their pixels without
    data are at the normalised zero); evaluation and prediction both run this."""
    size = info.tile_size
    nothing = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    top0, left0, rows, cols = (0, 0, height, width) if area is None else (area.top, area.left, area.height,
                                                                           area.width)

    def read(top: int, left: int) -> Pixels:
        window = read_window(contract, image, top0 + rows, left0 + cols, top0 + top, left0 + left, size)
        if area is None:
            return window
        inside = torch.zeros(size, size, dtype=torch.bool)
        part = torch.from_numpy(area.inside[top:top + size, left:left + size])
        inside[:part.shape[0], :part.shape[1]] = part
        valid = window.valid & inside
        return Pixels(contract.fill(window.image, valid), valid)

    def predict(offsets: list[tuple[int, int]]) -> list[dict]:
        windows = [read(top, left) for top, left in offsets]
        with_data = [bool(window.valid.any()) for window in windows]
        inputs = [window.image.to(device) for window, valid in zip(windows, with_data, strict=True) if valid]
        if not inputs:
            return [nothing] * len(offsets)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            found = iter(model(inputs))
        return [as_detections(next(found)) if valid else nothing for valid in with_data]

    model.eval()
    found = sliding_window_detections(predict, rows, cols, size, info.tile_overlap, info.nms_iou)
    if area is not None:
        centres = ((found["boxes"][:, :2] + found["boxes"][:, 2:]) / 2).long()
        columns, lines = centres[:, 0].clamp(0, cols - 1), centres[:, 1].clamp(0, rows - 1)
        kept = torch.from_numpy(area.inside)[lines, columns]
        found = {key: value[kept] for key, value in found.items()}
        found["boxes"] = found["boxes"] + torch.tensor([left0, top0, left0, top0], dtype=found["boxes"].dtype)
    return found


def ground_truth(scene: Scene, classes: Sequence[str],
                 contract: PixelContract | None = None) -> dict[str, torch.Tensor]:
    """A scene's labelled objects as metrics take them; with ``contract``, objects mostly over pixels without
    data count as difficult (neither a hit nor a miss)."""
    index = {name: i for i, name in enumerate(classes)}
    difficult = torch.from_numpy(scene.difficult).clone()
    if contract is not None and len(scene.boxes) and contract.may_lack_data(scene.image):
        for number, box in enumerate(scene.boxes.tolist()):
            difficult[number] |= not mostly_valid(contract.valid(scene.image, box_window(box)))
    return {"boxes": torch.from_numpy(scene.boxes).float(),
            "labels": torch.tensor([index[label] for label in scene.labels], dtype=torch.long),
            "difficult": difficult}


def evaluate_scenes(model: nn.Module, scenes: Sequence[Scene], info: DetectorDescription, contract: PixelContract,
                    device: torch.device, precision: str = "auto") -> tuple[dict[str, Any], list[dict]]:
    """VOC mAP@0.5 (per class, difficult ignored) and COCO mAP of whole-scene detections (every scene's
    detections counted, those without objects included).

    In a process group every process must call it: each detects in its share of the
    scenes, and all of them get the metrics and detections of every scene.
    """
    autocast = resolve_precision(precision, device)
    model = model.to(device)
    mine = {i: detect_scene(model, scenes[i].image, scenes[i].height, scenes[i].width, info, contract, device,
                            autocast)
            for i in scenes_progress(shard(range(len(scenes))))}
    found = {i: d for part in all_gather_objects(mine) for i, d in part.items()}
    detections = [found[i] for i in range(len(scenes))]
    truths = [ground_truth(s, info.classes, contract) for s in scenes]
    metrics = {**voc_map(detections, truths, info.classes), **coco_map(detections, truths),
               "scenes": len(scenes), "objects": int(sum(len(t["labels"]) for t in truths))}
    return metrics, detections


def load_detector(checkpoint: str | Path) -> DescribedModel:
    """A fine-tuned detector and its description (classes, architecture, tiling, normalisation)."""
    return load_described(checkpoint, DETECTOR, "detect", model_from_description)


def evaluate_detector(checkpoint: str | Path, annotations: str | None = None, images: str | None = None,
                          fmt: str = "auto", output: str | Path | None = None, device: str = "auto",
                      draw: bool = False, max_image_pixels: int | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate on ``annotations`` + ``images`` (default: the run's validation set, into the run's
    metrics.json with its operating point); with ``draw``, also ``drawn/NAME.png``: each scene's detections against
    its labels (:func:`draw_against_labels`)."""
    described = load_detector(checkpoint)
    model, info, weights = described
    require_data_for_graph(weights, annotations, "--annotations and --images")
    contract = described.contract(max_image_pixels)
    run_dir = weights.parent
    own_validation = annotations is None
    if own_validation:
        annotations, images, fmt = info.val, info.val_images, info.format
        if not annotations:
            raise CsptError(f"{run_dir}: trained without --val; pass --annotations and --images")
        folder = Path(output) if output else run_dir
    else:
        if not images:
            raise CsptError("--annotations needs --images (the folder of the annotated images)")
        folder = Path(output) if output else run_dir / "evaluation" / Path(annotations).stem
    scenes = read_annotations(annotations, images, fmt, info.classes, info.class_field).scenes
    metrics, detections = evaluate_scenes(model, scenes, info, contract, torch.device(resolve_device(device)),
                                          precision="fp32")  # in the precision predict_detector writes
    metrics.update(checkpoint=str(weights), annotations=str(annotations))
    if own_validation:  # which weights were kept, and the operating point chosen on training tiles, stay
        metrics.update(selected=info.selected, **({"operating_point": info.operating_point}
                                                  if info.operating_point else {}))
    folder.mkdir(parents=True, exist_ok=True)
    for scene, found in zip(scenes, detections, strict=True) if draw else ():
        draw_against_labels(scene, found, info, contract, folder / "drawn" / f"{scene.image.stem}.png")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("mAP@0.5 (VOC) %.4f, mAP@[.5:.95] (COCO) %.4f on %d scenes", metrics["map50"], metrics["map"],
             len(scenes))
    return metrics, folder


def predict_detector(checkpoint: str | Path, images: Sequence[str], output: str | Path, draw: bool = False,
                     device: str = "auto", min_score: float | None = None, vector_format: str = "gpkg",
                     max_image_pixels: int | None = None, aoi: VectorLabels | None = None,
                     dst_crs: str | None = None) -> Path:
    """Every detection the model keeps, for evaluation tools: ``detections.json`` (COCO style, with scores,
    pixel coordinates) and ``dota/NAME.txt``; the detections scoring at least ``min_score`` (default: the
    operating point chosen on the training scenes, else 0.5), for maps and eyes: for a georeferenced scene
    ``NAME.gpkg`` (or ``vector_format``: geojson, shp) of the boxes as polygons in its CRS with class and
    score, and, with ``draw``, ``drawn/NAME.png``. With ``aoi``, only the detections centred inside the area of
    interest; with ``dst_crs``, the map outputs in that CRS (pixel outputs stay in scene pixels). A scene
    that cannot be read is named in the log and skipped; the others are written, and then
    :func:`~cspt.tasks.common.finish_prediction` says what failed."""
    described = load_detector(checkpoint)
    model, info, _ = described
    contract = described.contract(max_image_pixels)
    chosen_by = ("--min-score" if min_score is not None else "the operating point chosen on the training scenes"
                 if info.operating_point else "no operating point recorded")
    if min_score is None:
        min_score = operating_threshold(info)
    log.info("maps and drawings: the detections scoring %.3f or more (%s); detections.json and dota/: every "
             "detection", min_score, chosen_by)
    torch_device = torch.device(resolve_device(device))
    classes = info.classes
    folder = Path(output)
    (folder / "dota").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}
    model = model.to(torch_device)
    paths = find_images(list(images), exclude=[folder])
    image_ids, crs = {path: number for number, path in enumerate(paths, 1)}, output_crs(dst_crs, vector_format)

    def predict(path: Path, area: SceneArea | None) -> None:
        size = contract.info(path)
        found = detect_scene(model, path, size.height, size.width, info, contract, torch_device, area=area)
        image_id = image_ids[path]
        coco["images"].append({"id": image_id, "file_name": gdal_name(path), "height": size.height,
                               "width": size.width})
        lines = []
        for box, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist(),
                                     strict=True):
            x1, y1, x2, y2 = box
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "score": score, "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            lines.append(f"{x1:.1f} {y1:.1f} {x2:.1f} {y1:.1f} {x2:.1f} {y2:.1f} {x1:.1f} {y2:.1f} "
                         f"{classes[label]} {score:.4f}")
        (folder / "dota" / f"{path.stem}.txt").write_text("".join(line + "\n" for line in lines))
        confident = found["scores"] >= min_score
        found = {key: value[confident] for key, value in found.items()}
        where = georeference_of(path)
        if where.is_georeferenced:
            target = folder / f"{path.stem}.{vector_format}"
            write_boxes(target, found["boxes"].numpy(), found["labels"].numpy(), found["scores"].numpy(), classes,
                        where, crs)
            log.info("%s: %d boxes in %s", target, len(found["boxes"]), crs or where.crs)
        elif is_raster(path):
            log.warning("%s has no CRS: its boxes are in detections.json and dota/ in pixel coordinates only, "
                        "with no %s on the map", path, vector_format)
        if draw:
            draw_boxes(path, found, classes, folder / "drawn" / f"{path.stem}.png", contract)

    def write_coco() -> None:
        if coco["images"]:
            (folder / "detections.json").write_text(json.dumps(coco) + "\n")
            log.info("%d detections in %d images", len(coco["annotations"]), len(coco["images"]))
        else:  # an earlier run's detections are not this run's
            (folder / "detections.json").unlink(missing_ok=True)

    return predict_each(paths, folder, contract, ["dota/{}.txt", "drawn/{}.png", *vector_outputs(vector_format)],
                        predict, "images", aoi, crs, write_coco)


def operating_threshold(info: DetectorDescription) -> float:
    """The score threshold of the operating point chosen on the training scenes, else 0.5."""
    return (info.operating_point or {}).get("threshold", 0.5)


def draw_boxes(image: Path, found: dict[str, torch.Tensor], classes: Sequence[str], target: Path,
               contract: PixelContract, truth: dict[str, torch.Tensor] | None = None) -> None:
    """The image (as the model's scaling shows it) with its boxes; class and score beside each (when few).

    Without ``truth`` every box is red. With ``truth`` (the image's labelled objects) a detection
    matching one at IoU 0.5 (VOC's rule) is green, a false alarm red, one on a difficult object grey,
    and each labelled object that no detection found is outlined in cyan.
    """
    canvas = Image.fromarray(display_rgb(contract.picture(contract.read(image))))
    pen = ImageDraw.Draw(canvas)
    colours = [OUTCOME_COLOURS[0]] * len(found["scores"])
    if truth is not None:
        outcome, taken = image_outcomes(found, truth)
        colours = [OUTCOME_COLOURS[o] for o in outcome.tolist()]
        for box in truth["boxes"][~taken & ~truth["difficult"]].tolist():
            pen.rectangle(box, outline=MISSED_COLOUR, width=1)
    for box, score, label, colour in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist(),
                                         colours, strict=True):
        pen.rectangle(box, outline=colour, width=2)
        if len(found["scores"]) <= 50:
            pen.text((box[0] + 2, box[1] + 1), f"{classes[label]} {score:.2f}", fill=(255, 255, 0))
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target)


def draw_against_labels(scene: Scene, found: dict[str, torch.Tensor], info: DetectorDescription,
                        contract: PixelContract, target: Path) -> Path:
    """``target``: the scene's detections at the operating point (:func:`operating_threshold`), hits and false
    alarms told apart against its labelled objects, the missed ones outlined."""
    confident = found["scores"] >= operating_threshold(info)
    draw_boxes(scene.image, {k: v[confident] for k, v in found.items()}, info.classes, target, contract,
               ground_truth(scene, info.classes, contract))
    return target


# ---------------------------------------------------------------- fine-tuning

def resolve_config(config: DetectConfig, init: Checkpoint | None = None) -> DetectConfig:
    """Architecture (input size = tile size), pyramid taps and classes; checks that need them."""
    if config.tile_size is not None:
        config = dataclasses.replace(config, img_size=config.tile_size)
    config = dataclasses.replace(config, **resolved_encoder_fields(config, init, images_in([config.images])))
    taps = resolved_taps(config)
    if not 0 <= config.tile_overlap < config.img_size:
        raise CsptError(f"--tile-overlap {config.tile_overlap} must be below the tile size {config.img_size}")
    if config.rpn_proposals is not None and config.rpn_proposals < 1:
        raise CsptError(f"--rpn-proposals {config.rpn_proposals}: give at least 1 proposal per image")
    if not config.train or not config.images:
        raise CsptError("give --train ANNOTATIONS and --images FOLDER")
    return dataclasses.replace(config, tile_size=config.img_size, taps=taps)


class DetectTask(FineTuneTask):
    """Fine-tuning ViT + Faster R-CNN on scene tiles, for the :class:`~cspt.engine.Trainer`."""

    monitor = "val_map50"

    def __init__(self, config: DetectConfig, train: Annotations, val: Annotations | None,
                 init: Checkpoint | None = None):
        self.config = config
        self.train = train
        self.val = val
        self.arch = arch_of(config)
        self.init = init
        self.kept_detections: list[dict] | None = None  #: the validation detections of the kept weights
        super().__init__()

    def build_model(self, load_init: bool) -> nn.Module:
        model = model_from_description(self.describe(Path(), ""), self.config.drop_path)
        if load_init:
            load_init_weights(detector_encoder(model), self.config, self.init, ("head.",),
                              images_in([self.config.images]))
        self.init = None
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups_layer_decay(model, detector_encoder(model), self.arch.depth,
                                        self.config.weight_decay, self.config.layer_decay)

    def train_data(self) -> tuple[DetectionTiles, Any]:
        cfg = self.config
        contract = contract_of(cfg)
        check_normalisation([scene.image for scene in self.train.scenes], contract, self.dist.is_main)
        tiles = make_tiles(self.train.scenes, cfg.tile_size, cfg.tile_overlap, cfg.min_visible, cfg.empty_tiles,
                           cfg.seed, contract)
        log.info("training tiles: %d of %d px from %d scenes (%d objects)", len(tiles), cfg.tile_size,
                 len(self.train.scenes), self.train.count_boxes())
        return DetectionTiles(self.train.scenes, tiles, self.train.classes, cfg.tile_size, contract,
                              cfg.min_visible, cfg.scale_range, photometric=cfg.photometric), collate_tiles

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        images = [image.to(device, non_blocking=True) for image in batch["image"]]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["target"]]
        return sum(model(images, targets).values())

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any] | None:
        cfg = self.config
        if not self.evaluates_after(epoch, self.val is not None):
            return None
        done = epoch + 1
        metrics, found = evaluate_scenes(model, self.val.scenes, self.describe(run_dir, ""), contract_of(cfg),
                                         next(model.parameters()).device, cfg.precision)
        model.train()
        improved = self.improves(metrics["map50"], epoch)
        if improved:
            self.kept_detections = found
        if improved and self.dist.is_main:
            write_weights(model.state_dict(), run_dir / DETECTOR,
                          self.describe(run_dir, f"best validation mAP@0.5 {metrics['map50']:.4f} at epoch {done}"))
            (run_dir / "metrics.json").write_text(json.dumps({**metrics, "epoch": done}, indent=2) + "\n")
        return {"val_map50": metrics["map50"], "val_map": metrics["map"], "best_val_map50": self.best["val_map50"]}

    def on_fit_end(self, model: nn.Module, run_dir: Path) -> None:
        if self.val is None and self.dist.is_main:
            write_weights(model.state_dict(), run_dir / DETECTOR, self.describe(run_dir, "last epoch"))
            log.info("no validation scenes: kept the last epoch; evaluate it with cspt evaluate detect")
        barrier()  # the kept weights are on disk before any process reads them back
        self.choose_operating_point(run_dir)

    def choose_operating_point(self, run_dir: Path) -> None:
        """The score threshold with the best F1 on (up to 256 seeded) training tiles, recorded in
        ``detector.json`` for drawing; with validation scenes, their precision and recall at it too, and the
        first one drawn against its labels at it (``examples/labelled/``, for the report)."""
        kept, info, weights = load_detector(run_dir)
        device = torch.device(resolve_device(self.config.device))
        found, truths = self.training_tile_detections(kept, info, device)
        chosen = best_f1_threshold(found, truths, len(info.classes))
        point = {"threshold": chosen["threshold"], "chosen_on": f"{len(found)} training tiles", "train": chosen}
        if self.val is not None:
            held = self.kept_detections  # computed when the kept weights were chosen (not after a resume)
            if held is None:
                _, held = evaluate_scenes(kept, self.val.scenes, info, contract_of(self.config), device,
                                          self.config.precision)
            truths = [ground_truth(s, info.classes, contract_of(self.config)) for s in self.val.scenes]
            point["validation"] = precision_recall_at(held, truths, len(info.classes), chosen["threshold"])
        if self.dist.is_main:
            info = info.replace(operating_point=point)
            write_sidecar(weights, info)
            if self.val is not None:  # the report's example: the first validation scene against its labels
                scene = self.val.scenes[0]
                draw_against_labels(scene, held[0], info, contract_of(self.config),
                                    run_dir / "examples" / "labelled" / f"{scene.image.stem}.png")
            metrics_path = run_dir / "metrics.json"
            if metrics_path.is_file():
                metrics = json.loads(metrics_path.read_text())
                metrics_path.write_text(json.dumps({**metrics, "operating_point": point}, indent=2) + "\n")
            held_out = point.get("validation")
            log.info("operating point: score %.3f, the best F1 (%.3f) on %s%s", chosen["threshold"], chosen["f1"],
                     point["chosen_on"], f"; validation precision {held_out['precision']:.3f}, recall "
                     f"{held_out['recall']:.3f}" if held_out else "")

    def training_tile_detections(self, model: nn.Module, info: DetectorDescription,
                                 device: torch.device) -> tuple[list[dict], list[dict]]:
        """Detections and targets of up to 256 seeded training tiles (those training samples), unaugmented,
        every process detecting its share."""
        cfg = self.config
        tiles = make_tiles(self.train.scenes, cfg.tile_size, cfg.tile_overlap, cfg.min_visible, cfg.empty_tiles,
                           cfg.seed, contract_of(cfg))
        if len(tiles) > OPERATING_TILES:
            tiles = [tiles[i] for i in sorted(random.Random(cfg.seed).sample(range(len(tiles)), OPERATING_TILES))]
        dataset = DetectionTiles(self.train.scenes, tiles, info.classes, cfg.tile_size, contract_of(cfg),
                                 cfg.min_visible, augment=False)
        model = model.to(device).eval()
        mine = {}
        autocast = resolve_precision(cfg.precision, device)
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            indices = list(shard(range(len(tiles))))
            for start in range(0, len(indices), cfg.batch_size):
                chunk = indices[start:start + cfg.batch_size]
                samples = [dataset[(i, 0)] for i in chunk]
                outputs = model([s["image"].to(device) for s in samples])
                for i, sample, out in zip(chunk, samples, outputs, strict=True):
                    target = sample["target"]
                    mine[i] = (as_detections(out),
                               {"boxes": target["boxes"], "labels": target["labels"] - 1,
                                "difficult": torch.zeros(len(target["labels"]), dtype=torch.bool)})
        pairs = {i: pair for part in all_gather_objects(mine) for i, pair in part.items()}
        return [pairs[i][0] for i in range(len(tiles))], [pairs[i][1] for i in range(len(tiles))]

    def describe(self, run_dir: Path, selected: str) -> DetectorDescription:
        """``detector.json``: how to rebuild and feed the model, its classes and its lineage."""
        cfg = self.config
        stage = {"stage": "fine-tuning (object detection)", "run": str(run_dir), "data": cfg.train,
                 "train_scenes": len(self.train.scenes), "epochs": cfg.epochs, "selected": selected,
                 "config": dataclasses.asdict(cfg)}
        return DetectorDescription(
            architecture=self.arch.to_dict(), pixels=contract_of(cfg).to_dict(), classes=self.train.classes,
            pyramid=cfg.pyramid, taps=cfg.taps, fpn_channels=cfg.fpn_channels, anchor_sizes=cfg.anchor_sizes,
            rpn_proposals=cfg.rpn_proposals, roi_samples=cfg.roi_samples, box_head=cfg.box_head,
            detections_per_image=cfg.detections_per_image, score_threshold=cfg.score_threshold,
            tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap, nms_iou=cfg.nms_iou, val=cfg.val,
            val_images=cfg.val_images or cfg.images, format=cfg.format, class_field=cfg.class_field,
            selected=selected, lineage=self.parents + [stage])


def finetune_detect(config: DetectConfig, resume: str | Path | bool | None = None,
                    overrides: dict[str, Any] | None = None) -> Path:
    """Run (or continue) detection fine-tuning; returns the run directory."""
    config, run_dir, init = start_run(DetectConfig, config, resume, overrides, resolve_config)
    train = read_annotations(config.train, config.images, config.format, config.classes, config.class_field)
    val = read_annotations(config.val, config.val_images or config.images, config.format, train.classes,
                           config.class_field) if config.val else None
    clipped = sum(s.clipped for s in train.scenes)
    log.info("data: %d scenes, %d objects, classes %s%s", len(train.scenes), train.count_boxes(),
             ", ".join(train.classes), f"; {clipped} boxes clipped to their image" if clipped else "")
    with distributed_run(config, run_dir) as dist:
        Trainer(config, run_dir, dist).fit(DetectTask(config, train, val, init))
    return run_dir
