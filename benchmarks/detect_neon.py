"""Tree-crown detection on the NEON scenes of the deepforest wheel: what limits it, and how far it goes.

Two modes, both through ``cspt pipeline`` (the demo's own stages and recipes):

- ``overfit``: one scene (default OSBS_029, 61 crowns), trained and scored on itself. How
  well can the detector memorise what it is shown? Followed by the scene's crowns against
  themselves: how many labelled crowns overlap another one, which caps any detector.
- ``budgets``: trained on both Yellowstone scenes (853 crowns), scored on OSBS_029 +
  SOAP_061 (held out: no stage reads them before evaluation) at fixed CPU budgets, from
  random initialisation, the natural-image MAE (``--source``) and CSPT (the natural MAE
  pretrained further on the demo's unlabelled scenes). A budget is a number of training
  steps: minutes x 60 / the seconds one step takes on this machine (measured first, by one
  epoch of the recipe through the same pipeline, ~2 min).

Before training, the script prints what the settings do to these crowns: their sizes
against the anchors, the RoI pyramid level each one is pooled from, and how many are never
seen whole by a window. After training, the budgets mode prints, per held-out and per training
scene, how many crowns some detection covers at IoU 0.5 and at 0.3 (found but loosely placed) and
how its size compares with the label's, and the mAP@0.5 on the training scenes: a detector that
fits little of what it was shown is short of training, one that fits it and fails held out does
not generalise. The NMS threshold is swept on the scene (overfit) or, with ``--nms-sweep``, on
the training scenes.

    python benchmarks/detect_neon.py --mode overfit                                  # ~5 min, 2 cores
    python benchmarks/detect_neon.py --mode budgets --budgets 5 15 30                # ~2.5 h, 2 cores
    python benchmarks/detect_neon.py --mode budgets --budgets 30 --inits natural     # ~35 min
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_area, box_iou

from cspt.data.detection import Scene, read_annotations
from cspt.data.scene_tiles import make_tiles, tile_targets
from cspt.data.windows import window_starts
from cspt.demo import crowns_csv, demo_spec, neon_scenes
from cspt.engine.run_log import read_log
from cspt.errors import CsptError
from cspt.pipeline import run_pipeline
from cspt.tasks.detect import evaluate_scenes, load_detector
from cspt.weights.load import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NATURAL = ROOT.parent / "shared" / "weights" / "mae_vit_tiny_p8_64_tinyimagenet.pth"
INITS = ("random", "natural", "cspt")
ENCODER_SHAPE = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size")
NMS_SWEEP = (0.5, 0.4, 0.3, 0.2, 0.1)


# ---------------------------------------------------------------- what the settings do to the crowns

def crown_sizes(scenes: list[Scene]) -> np.ndarray:
    """sqrt(area) of every crown, in pixels."""
    boxes = np.concatenate([s.boxes for s in scenes])
    return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def anchor_match(scenes: list[Scene], detect: dict[str, Any]) -> np.ndarray:
    """Each training target's best IoU with the RPN's anchors, on the real tiles and anchor grids."""
    size, patch = detect["tile_size"], detect["patch_size"]
    strides = [patch // 4, patch // 2, patch, patch * 2, patch * 4]
    generator = AnchorGenerator(tuple((s,) for s in detect["anchor_sizes"]), ((0.5, 1.0, 2.0),) * 5)
    maps = [torch.zeros(1, 1, size // s, size // s) for s in strides]
    anchors = generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), maps)[0]
    best = []
    for tile in make_tiles(scenes, size, detect["tile_overlap"], detect["min_visible"], 0.0):
        boxes, _ = tile_targets(scenes[tile.scene], tile.top, tile.left, size, detect["min_visible"])
        if len(boxes):
            best.append(box_iou(torch.from_numpy(boxes), anchors).max(1).values.numpy())
    return np.concatenate(best)


def roi_levels(sizes: np.ndarray, patch: int) -> dict[int, int]:
    """How many crowns torchvision's MultiScaleRoIAlign pools from each pyramid stride (its level rule)."""
    k_min, k_max = int(math.log2(patch / 4)), int(math.log2(patch * 2))
    levels = np.clip(np.floor(4 + np.log2(sizes / 224) + 1e-6), k_min, k_max).astype(int)
    return {2**k: int((levels == k).sum()) for k in range(k_min, k_max + 1)}


def never_whole(scenes: list[Scene], size: int, overlap: int) -> tuple[int, int]:
    """Crowns that no sliding window holds whole, and all crowns."""
    missed = total = 0
    for scene in scenes:
        stride = size - overlap
        tops, lefts = window_starts(scene.height, size, stride), window_starts(scene.width, size, stride)
        for x1, y1, x2, y2 in scene.boxes.tolist():
            fits_x = any(left <= x1 and x2 <= left + size for left in lefts)
            fits_y = any(top <= y1 and y2 <= top + size for top in tops)
            missed += not (fits_x and fits_y)
            total += 1
    return missed, total


def label_overlaps(scenes: list[Scene]) -> dict[str, int]:
    """Labelled crowns overlapping another labelled crown at IoU >= 0.3 / 0.5 (what NMS would merge)."""
    counts = {"0.3": 0, "0.5": 0}
    for scene in scenes:
        iou = box_iou(torch.from_numpy(scene.boxes), torch.from_numpy(scene.boxes)).fill_diagonal_(0)
        for key in counts:
            counts[key] += int((iou.max(1).values >= float(key)).sum())
    return counts


def analyse(train: list[Scene], held_out: list[Scene], detect: dict[str, Any]) -> list[str]:
    """The lines describing crowns, anchors, RoI levels and windows for these settings."""
    lines = []
    for name, scenes in (("training", train), ("held-out", held_out)):
        if not scenes:
            continue
        sizes = crown_sizes(scenes)
        p5, p50, p95 = np.percentile(sizes, [5, 50, 95])
        lines.append(f"{name} crowns: {len(sizes)}, side (sqrt area) 5/50/95%: {p5:.0f}/{p50:.0f}/{p95:.0f} px; "
                     f"RoI pooled from stride {roi_levels(sizes, detect['patch_size'])}")
        missed, total = never_whole(scenes, detect["tile_size"], detect["tile_overlap"])
        lines.append(f"  {missed} of {total} never whole in a {detect['tile_size']}-px window at overlap "
                     f"{detect['tile_overlap']}; labelled crowns overlapping another: {label_overlaps(scenes)}")
    best = anchor_match(train, detect)
    lines.append(f"anchors {detect['anchor_sizes']} x ratios 0.5/1/2 on strides "
                 f"{[detect['patch_size'] * f for f in (0.25, 0.5, 1, 2, 4)]}: training targets' best anchor IoU "
                 f"median {np.median(best):.2f}; >= 0.7 (RPN positive) {np.mean(best >= 0.7):.0%}, "
                 f">= 0.5 {np.mean(best >= 0.5):.0%}")
    return lines


# ---------------------------------------------------------------- budgets

def seconds_per_step(base: dict[str, Any], detect: dict[str, Any], output: Path) -> float:
    """A training step's wall time as the pipeline's own training logs it (data, augmentation, forward,
    backward, AdamW): one epoch of the recipe from random initialisation, median over its logged windows
    after the first."""
    run_spec({**base, "output": str(output / "calibration"), "source": None, "arms": ["direct"],
              "finetune": {"calibration": {**detect, "epochs": 1, "warmup_epochs": 0.125, "eval_every": 1}}})
    rates = [row["img_per_s"] for row in read_log(output / "calibration" / "direct" / "calibration")
             if "img_per_s" in row]
    return detect["batch_size"] / float(np.median(rates[1:]))


def budget_epochs(minutes: float, step_seconds: float, tiles: int, batch: int) -> int:
    return max(1, round(minutes * 60 / step_seconds / math.ceil(tiles / batch)))


def training_minutes(run_dir: Path) -> float:
    """First to last record of the run's log.jsonl."""
    times = [row["time"] for row in read_log(run_dir)]
    return (times[-1] - times[0]) / 60


def run_spec(spec: dict[str, Any]) -> None:
    path = Path(spec["output"]) / "pipeline.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_pipeline(path)


def result_row(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    point = metrics.get("operating_point", {})
    held = point.get("validation", {})
    return {"map50": metrics["map50"], "map": metrics["map"], "threshold": point.get("threshold"),
            "precision": held.get("precision"), "recall": held.get("recall"), "minutes": training_minutes(run_dir)}


def localisation(run_dir: Path, scenes: list[Scene]) -> tuple[float, list[str]]:
    """mAP@0.5 over the scenes, and per scene how many labelled crowns some detection (of any score) covers
    at IoU 0.5, the match mAP@0.5 counts, and at 0.3 (found, but too loosely placed to count), with the size
    of the best detection against the crown's (sqrt area; below 1: drawn tighter than the label)."""
    model, info, _ = load_detector(run_dir)
    metrics, found = evaluate_scenes(model, scenes, info, info.contract, torch.device("cpu"))
    lines = []
    for scene, detections in zip(scenes, found, strict=True):
        truth, boxes = torch.from_numpy(scene.boxes).float(), detections["boxes"]
        iou = box_iou(truth, boxes) if len(boxes) else torch.zeros(len(truth), 1)
        best, index = iou.max(1)
        covered = best >= 0.3
        ratio = (box_area(boxes[index[covered]]) / box_area(truth[covered])).sqrt() if len(boxes) else best[:0]
        lines.append(f"{scene.image.stem}: of {len(truth)} crowns, a detection covers "
                     f"{(best >= 0.5).float().mean():.0%} at IoU 0.5 and {covered.float().mean():.0%} at 0.3; "
                     f"median best IoU {best.median():.2f}, size against the crown {ratio.nanmedian():.2f}")
    return metrics["map50"], lines


def nms_sweep(run_dir: Path, scenes: list[Scene]) -> dict[float, float]:
    """mAP@0.5 of a trained detector at each NMS threshold (its own and the windows' merge)."""
    model, info, _ = load_detector(run_dir)
    result = {}
    for nms in NMS_SWEEP:
        model.roi_heads.nms_thresh = nms
        result[nms] = evaluate_scenes(model, scenes, info.replace(nms_iou=nms), info.contract,
                                      torch.device("cpu"))[0]["map50"]
    return result


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["overfit", "budgets"], default="budgets")
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 15, 30], help="CPU minutes of training")
    parser.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS))
    parser.add_argument("--source", default=str(NATURAL), help="the natural-image MAE checkpoint")
    parser.add_argument("--scene", default="OSBS_029", help="overfit mode: the scene trained and scored on")
    parser.add_argument("--overfit-epochs", type=int, default=80, help="overfit mode: epochs over the scene's tiles")
    parser.add_argument("--step-seconds", type=float, help="seconds a training step takes on this machine "
                        "(default: measured first by one epoch of the recipe; give it when other work shares the CPU)")
    parser.add_argument("--output", default="runs/detect_neon")
    parser.add_argument("--nms-sweep", action="store_true", help="budgets mode: then sweep the NMS threshold of "
                        "the longest budget's detectors on the training scenes (5 passes over them a detector)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override detection options of the demo recipe (YAML values)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    output = Path(args.output)
    scenes_dir = neon_scenes()
    base = demo_spec(str(output / "spec"), args.source)
    source_arch = load_checkpoint(args.source).arch
    # the source's shape spelled out: the analysis needs it, and the random arm is built the same
    detect = {**base["finetune"]["neon_trees"], **{k: source_arch[k] for k in ENCODER_SHAPE}}
    detect.update({k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)})
    train = read_annotations(detect["train"], scenes_dir).scenes
    held_out = read_annotations(detect["val"], scenes_dir).scenes
    print(f"# detect_neon --mode {args.mode}: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    shown = ("tile_size", "tile_overlap", "anchor_sizes", "pyramid", "rpn_proposals", "roi_samples", "nms_iou",
             "blr", "batch_size")
    print("settings: " + ", ".join(f"{k} {detect[k]}" for k in shown))

    if args.mode == "overfit":
        scene = read_annotations(scenes_dir / f"{args.scene}.xml", scenes_dir).scenes
        csv = str(crowns_csv(scenes_dir, (args.scene,), output / "overfit" / "data" / "scene.csv"))
        for line in analyse(scene, [], detect):
            print(line)
        run_spec({"output": str(output / "overfit"), "source": args.source, "arms": ["direct"],
                  "finetune": {"overfit": {**detect, "train": csv, "val": csv, "epochs": args.overfit_epochs,
                                           "eval_every": args.overfit_epochs // 4}}})
        run_dir = output / "overfit" / "direct" / "overfit"
        row = result_row(run_dir)
        print(f"overfit on {args.scene} ({len(scene[0].boxes)} crowns), {args.overfit_epochs} epochs, "
              f"{row['minutes']:.1f} min: mAP@0.5 {row['map50']:.3f}, mAP@[.5:.95] {row['map']:.3f}")
        print("NMS IoU -> mAP@0.5 on the scene: " + ", ".join(f"{k}: {v:.3f}"
                                                              for k, v in nms_sweep(run_dir, scene).items()))
        return

    for line in analyse(train, held_out, detect):
        print(line)
    step = args.step_seconds or seconds_per_step(base, detect, output)
    tiles = len(make_tiles(train, detect["tile_size"], detect["tile_overlap"], detect["min_visible"],
                           detect["empty_tiles"], detect.get("seed", 0)))
    epochs = {m: budget_epochs(m, step, tiles, detect["batch_size"]) for m in args.budgets}
    print(f"one step of {detect['batch_size']} tiles: {step:.2f} s; {tiles} tiles an epoch; "
          + ", ".join(f"{m:g} min = {e} epochs" for m, e in epochs.items()))
    finetunes = {f"min{m:g}": {**detect, "epochs": e, "warmup_epochs": min(detect["warmup_epochs"], e / 8),
                               "eval_every": e} for m, e in epochs.items()}
    runs = {}
    if "random" in args.inits:
        run_spec({**base, "output": str(output / "random"), "source": None, "arms": ["direct"],
                  "finetune": finetunes})
        runs["random"] = output / "random" / "direct"
    wanted = [arm for init, arm in (("natural", "direct"), ("cspt", "cspt")) if init in args.inits]
    if wanted:
        run_spec({**base, "output": str(output / "natural"), "arms": wanted, "finetune": finetunes})
        runs.update({init: output / "natural" / arm for init, arm in (("natural", "direct"), ("cspt", "cspt"))
                     if arm in wanted})
    print("| init | budget | epochs | training min | held-out mAP@0.5 | mAP@[.5:.95] | threshold | precision "
          "| recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for init, folder in runs.items():
        for m, e in epochs.items():
            row = result_row(folder / f"min{m:g}")
            print(f"| {init} | {m:g} min | {e} | {row['minutes']:.1f} | {row['map50']:.3f} | {row['map']:.3f} | "
                  f"{row['threshold']:.2f} | {row['precision']:.2f} | {row['recall']:.2f} |")
    print("Where the boxes are (detections of any score, fp32), held out and on the training scenes "
          "(how much of what it was shown the detector fits):")
    for init, folder in runs.items():
        for m in epochs:
            for name, scenes in (("held out", held_out), ("training", train)):
                score, lines = localisation(folder / f"min{m:g}", scenes)
                print(f"  {init}, {m:g} min, {name} (mAP@0.5 {score:.3f}): " + "; ".join(lines))
    longest = f"min{max(args.budgets):g}"
    for init, folder in runs.items() if args.nms_sweep else ():
        sweep = nms_sweep(folder / longest, train)
        print(f"{init}, {longest}: NMS IoU -> mAP@0.5 on the training scenes: "
              + ", ".join(f"{k}: {v:.3f}" for k, v in sweep.items()))


if __name__ == "__main__":
    try:
        main()
    except CsptError as err:  # bad input: one line naming the file, as the CLI does
        raise SystemExit(f"detect_neon: error: {err}") from None
