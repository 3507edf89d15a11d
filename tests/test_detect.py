"""Object detection: annotation formats on real samples, NEON overfitting, sliding windows, mAP, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import fiona
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.ops import box_iou

from cspt.config import DetectConfig
from cspt.data.detection import Annotations, read_annotations
from cspt.data.pixels import PixelContract
from cspt.data.scene_tiles import DetectionTiles, make_tiles
from cspt.engine.sliding import sliding_window_detections
from cspt.errors import CsptError
from cspt.metrics import best_f1_threshold, coco_map, precision_recall_at, voc_map
from cspt.models.detector import build_detector
from cspt.models.vit import ArchConfig
from cspt.tasks.common import contract_of
from cspt.tasks.detect import (
    DetectTask,
    evaluate_detector,
    evaluate_scenes,
    finetune_detect,
    model_from_description,
    resolve_config,
)
from tests.conftest import SHARED, TINY_ENCODER_FLAGS, needs, run_cli, write_rgb

DETECTION = SHARED / "data" / "detection"
TINY_DETECT = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, tile_size=128, tile_overlap=32, fpn_channels=64,
                   roi_samples=128, drop_path=0.0, layer_decay=1.0, num_workers=0, device="cpu")


@pytest.fixture
def detection() -> Path:
    return needs(DETECTION)


def test_dota_labeltxt(detection: Path, tmp_path: Path):
    dota = detection / "dota"
    scene = read_annotations(dota / "labelTxt" / "P1888.txt", dota / "images").scenes[0]
    assert (scene.width, scene.height) == (712, 557)
    assert len(scene.labels) == 64  # 66 lines, two of them the imagesource/gsd header
    assert scene.labels.count("small-vehicle") == 14 and scene.labels.count("large-vehicle") == 50
    assert scene.polygons.shape == (64, 8) and not scene.difficult.any()
    first = scene.polygons[0]  # 674 375 683 375 684 394 675 395: the box is the polygon's extent
    assert scene.boxes[0].tolist() == [first[0::2].min(), first[1::2].min(), first[0::2].max(), first[1::2].max()]
    # an empty label file is a scene without objects (when its image exists)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(dota / "images" / "P1888.png", images / "P0004__1__0___1024.png")
    empty = read_annotations(dota / "labelTxt" / "P0004__1__0___1024.txt", images).scenes[0]
    assert empty.boxes.shape == (0, 4) and empty.labels == []
    # the shared samples were downscaled after labelling: their boxes fall outside the image, which is refused
    with pytest.raises(CsptError, match=r"P0004__1__0___0.txt:1: box \(398, 694, 465, 718\) outside the 285x294"):
        read_annotations(dota / "labelTxt", dota / "images")


def test_dior_and_hrsc_xml(detection: Path, tmp_path: Path):
    dior = read_annotations(detection / "dior" / "Annotations" / "Oriented Bounding Boxes",
                            detection / "dior" / "JPEGImage")
    scene = dior.scenes[0]
    assert dior.classes == ["golffield"] and scene.boxes.tolist() == [[133, 237, 684, 672]]
    assert scene.polygons.tolist() == [[133, 237, 684, 237, 684, 672, 133, 672]]
    Image.new("RGB", (1172, 816)).save(tmp_path / "100000006.bmp")  # HRSC ships annotations only
    hrsc = read_annotations(detection / "hrsc" / "FullDataSet" / "Annotations", tmp_path)
    ship = hrsc.scenes[0]
    assert hrsc.classes == ["ship"] and ship.boxes.tolist() == [[119, 75, 587, 789]]
    centre = ship.polygons[0].reshape(4, 2).mean(0)
    assert centre == pytest.approx([341.2143, 443.3325], abs=1e-3)  # the rotated box keeps its centre


@pytest.mark.parametrize("name, counts", [("OSBS_029", {"Tree": 61}), ("SOAP_061", {"Alive": 9, "Dead": 28}),
                                          ("2019_YELL_2_541000_4977000_image_crop", {"Tree": 279}),
                                          ("2019_YELL_2_528000_4978000_image_crop2", {"Tree": 574})])
def test_neon_voc_xml(neon: Path, name: str, counts: dict[str, int]):
    scene = read_annotations(neon / f"{name}.xml", neon).scenes[0]
    assert {label: scene.labels.count(label) for label in set(scene.labels)} == counts
    assert scene.image.stem == name  # OSBS_029.xml names a .tif: found, LZW-compressed, read


def test_neon_csv_and_coco_agree_with_the_xml(neon: Path, tmp_path: Path):
    xml = read_annotations(neon / "OSBS_029.xml", neon).scenes[0]
    csv = read_annotations(neon / "OSBS_029.csv", neon).scenes[0]
    assert np.array_equal(np.sort(xml.boxes, 0), np.sort(csv.boxes, 0))
    coco = {"images": [{"id": 7, "file_name": "OSBS_029.png", "height": 400, "width": 400}],
            "categories": [{"id": 1, "name": "Tree"}],
            "annotations": [{"id": i, "image_id": 7, "category_id": 1, "iscrowd": 0,
                             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                            for i, b in enumerate(xml.boxes)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert np.allclose(read_annotations(tmp_path / "coco.json", neon).scenes[0].boxes, xml.boxes)


@pytest.mark.slow
def test_tiny_detector_overfits_a_neon_scene(neon: Path, tmp_path: Path):
    """Training tiles and whole-scene sliding-window evaluation: the code full runs use."""
    config = DetectConfig(train=str(neon / "OSBS_029.xml"), images=str(neon), val=str(neon / "OSBS_029.xml"),
                          output=str(tmp_path / "run"), epochs=10, batch_size=4, lr=1e-3, warmup_epochs=0.5,
                          eval_every=10, **TINY_DETECT)
    scenes = read_annotations(config.train, config.images)
    task = DetectTask(resolve_config(config), scenes, scenes)
    torch.manual_seed(config.seed)
    before, _ = evaluate_scenes(task.build_model(False), scenes.scenes, task.describe(tmp_path, ""),
                                contract_of(task.config), torch.device("cpu"))
    run_dir = finetune_detect(config)  # 16 tiles of 128 px, 4 per step: 40 steps
    after = json.loads((run_dir / "metrics.json").read_text())
    print(f"OSBS_029 mAP@0.5: {before['map50']:.3f} before, {after['map50']:.3f} after 40 CPU steps")
    assert after["objects"] == 61 and after["map50"] > before["map50"] + 0.05
    point = json.loads((run_dir / "detector.json").read_text())["operating_point"]
    assert point == after["operating_point"] and point["chosen_on"] == "16 training tiles"
    assert point["train"]["f1"] > 0 and point["validation"]["recall"] > 0  # scored at the chosen threshold
    again, _ = evaluate_detector(run_dir)  # the run's own validation again: its operating point stays in metrics.json
    assert again["map50"] == pytest.approx(after["map50"])
    rewritten = json.loads((run_dir / "metrics.json").read_text())
    assert rewritten["operating_point"] == point and rewritten["selected"].startswith("best validation mAP@0.5")


def test_photometric_jitter_changes_the_colours_of_rgb_tiles_only_never_their_boxes(neon: Path):
    scenes = read_annotations(neon / "OSBS_029.xml", neon).scenes
    tiles = make_tiles(scenes, 128, 32)
    rgb = PixelContract((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    plain, jittered = (DetectionTiles(scenes, tiles, ["Tree"], 128, rgb, photometric=on) for on in (False, True))
    changed = 0
    for item in [(i, 100 + i) for i in range(len(tiles))]:
        a, b = plain[item], jittered[item]
        assert torch.equal(a["target"]["boxes"], b["target"]["boxes"]) and torch.equal(a["valid"], b["valid"])
        assert b["image"].min() >= 0 and b["image"].max() <= 1  # 8-bit data stay on their 0-1 range
        changed += not torch.equal(a["image"], b["image"])
    assert changed >= len(tiles) // 2  # each of the four changes is drawn half of the time


def test_bad_tiling_or_proposal_counts_are_one_line_errors(tmp_path: Path):
    base = dict(train="t.csv", images=str(tmp_path), embed_dim=64, depth=2, num_heads=2, patch_size=8, tile_size=64,
                tile_overlap=16)
    for options, message in (({"tile_overlap": 64}, "--tile-overlap 64 must be below the tile size 64"),
                             ({"rpn_proposals": 0}, "--rpn-proposals 0: give at least 1")):
        with pytest.raises(CsptError, match=message):
            resolve_config(DetectConfig(**{**base, **options}))


def test_the_nms_threshold_is_the_detector_s_own_and_the_merge_s(tmp_path: Path):
    config = resolve_config(DetectConfig(train="t.csv", images=str(tmp_path), nms_iou=0.3, embed_dim=64, depth=2,
                                         num_heads=2, patch_size=8, tile_size=64, tile_overlap=16))
    info = DetectTask(config, Annotations([], ["Tree"]), None).describe(tmp_path, "")
    assert model_from_description(info).roi_heads.nms_thresh == 0.3 and info.nms_iou == 0.3


def test_sliding_window_merges_seams_into_one_box_per_object():
    objects = torch.tensor([[120.0, 30, 160, 70],  # straddles the seam between windows at x=0 and x=100
                            [10.0, 10, 40, 40], [250.0, 150, 290, 190],
                            [60.0, 120, 140, 195]])  # wider than the overlap; window x=100 sees a 40-px sliver

    def predict(offsets: list[tuple[int, int]]) -> list[dict]:
        """A perfect detector that sees each window alone: the visible part of every object."""
        found = []
        for top, left in offsets:
            boxes = objects - torch.tensor([left, top, left, top], dtype=torch.float32)
            clipped = boxes.clamp(0, 160)
            visible = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
            found.append({"boxes": clipped[visible], "scores": torch.full((int(visible.sum()),), 0.9),
                          "labels": torch.zeros(int(visible.sum()), dtype=torch.long)})
        return found

    merged = sliding_window_detections(predict, height=200, width=300, window=160, overlap=60)
    got = sorted(map(tuple, merged["boxes"].tolist()))
    assert got == sorted(map(tuple, objects.tolist()))  # scene coordinates, each object once


@pytest.mark.slow
def test_every_object_is_reported_once_wherever_it_lies_across_the_seams():
    """A perfect detector that sees each window alone, swept over every position of a 1-px grid
    (per axis, against positions across the other axis's seams): an object no larger than the
    overlap is reported once and whole; one a third larger still once, at IoU >= 0.5, after NMS
    at 0.5 (cutting off cut-offs at the inner sides left duplicates there)."""
    height, width, window, overlap = 150, 170, 64, 24  # windows at 0/40/86 down, 0/40/80/106 across

    def perfect(box: torch.Tensor) -> Callable[[list[tuple[int, int]]], list[dict]]:
        def predict(offsets: list[tuple[int, int]]) -> list[dict]:
            found = []
            for top, left in offsets:
                clipped = (box - torch.tensor([left, top, left, top], dtype=torch.float32)).clamp(0, window)
                seen = bool((clipped[2] > clipped[0]) & (clipped[3] > clipped[1]))
                found.append({"boxes": clipped[None] if seen else torch.zeros(0, 4), "scores": torch.ones(int(seen)),
                              "labels": torch.zeros(int(seen), dtype=torch.long)})
            return found
        return predict

    for side, nms_iou in ((overlap, 0.99), (32, 0.5)):
        across = [0, 30, 45, 62, 90, 120]
        positions = [(top, left) for top in range(height - side + 1) for left in across + [width - side]] + \
                    [(top, left) for top in across + [height - side] for left in range(width - side + 1)]
        for top, left in positions:
            box = torch.tensor([left, top, left + side, top + side], dtype=torch.float32)
            merged = sliding_window_detections(perfect(box), height, width, window, overlap, nms_iou)
            assert len(merged["boxes"]) == 1, (top, left, side)
            if side <= overlap:
                assert merged["boxes"][0].tolist() == box.tolist(), (top, left)
            else:
                assert box_iou(merged["boxes"], box[None]).item() >= 0.5, (top, left)


def test_a_scene_keeps_every_object_of_its_windows_however_many():
    """A dense scene (1,600 crowns of 8 px on a 10-px grid) holds far more objects than a window's
    detection cap (300): a perfect detector's merged scene reports each of them once."""
    height = width = 400
    objects = torch.tensor([[x, y, x + 8, y + 8] for y in range(1, height - 8, 10) for x in range(1, width - 8, 10)],
                           dtype=torch.float32)

    def predict(offsets: list[tuple[int, int]]) -> list[dict]:
        found = []
        for top, left in offsets:
            inside = ((objects[:, 0] >= left) & (objects[:, 2] <= left + 128) &
                      (objects[:, 1] >= top) & (objects[:, 3] <= top + 128))
            found.append({"boxes": objects[inside] - torch.tensor([left, top, left, top], dtype=torch.float32),
                          "scores": torch.ones(int(inside.sum())), "labels": torch.zeros(int(inside.sum()),
                                                                                          dtype=torch.long)})
        return found

    merged = sliding_window_detections(predict, height, width, window=128, overlap=32, nms_iou=0.3)
    assert len(objects) == 1600 and len(merged["boxes"]) == len(objects)
    assert sorted(map(tuple, merged["boxes"].tolist())) == sorted(map(tuple, objects.tolist()))


def test_voc_map_by_hand_and_against_pycocotools():
    truths = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
               "labels": torch.tensor([0, 0, 0]), "difficult": torch.tensor([False, False, True])},
              {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0]),
               "difficult": torch.tensor([False])}]
    detections = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [40, 40, 50, 50], [60, 60, 70, 70], [21, 21, 30, 30]]),
                   "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]), "labels": torch.tensor([0, 0, 0, 0])},
                  {"boxes": torch.tensor([[50.0, 50, 60, 60]]), "scores": torch.tensor([0.85]),
                   "labels": torch.tensor([0])}]
    # ranked: hit, miss, (difficult: ignored), miss, hit (IoU 0.81) over 3 positives
    # precision envelope 1 up to recall 1/3, then 0.5 up to 2/3: AP = 1/3 + 1/6 = 0.5
    result = voc_map(detections, truths, ["tree"])
    assert result["map50"] == pytest.approx(0.5) and result["ap50_per_class"] == {"tree": pytest.approx(0.5)}
    assert coco_map(detections, truths)["map_50"] == pytest.approx(0.5)
    assert voc_map(detections, truths, ["tree", "car"])["ap50_per_class"]["car"] is None  # no car: not scored


@pytest.mark.slow
def test_bad_annotations_give_one_line_errors_naming_file_and_line(tmp_path: Path):
    images = tmp_path / "images"
    write_rgb(images / "a.png", size=64)
    labels = tmp_path / "labels"
    labels.mkdir()
    cases = {
        "seven.txt": ("1 1 9 1 9 9 1 plane 0\n", "seven.txt:1: expected 8 polygon coordinates then a class, found 7"),
        "outside.txt": ("100 100 120 100 120 120 100 120 plane 0\n",
                        "outside.txt:1: box (100, 100, 120, 120) outside the 64x64 image"),
        "unknown.txt": ("1 1 9 1 9 9 1 9 ship 0\n", "unknown.txt: unknown class 'ship' (classes: plane)"),
        "missing.txt": ("1 1 9 1 9 9 1 9 plane 0\n", "missing.txt: image missing.png not found"),
        "latin.txt": ("1 1 9 1 9 9 1 9 avi\xf3n 0\n".encode("latin-1"), "latin.txt: not a UTF-8 DOTA label file"),
    }
    for name, (text, message) in cases.items():
        (labels / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        if name != "missing.txt":
            shutil.copy(images / "a.png", images / f"{Path(name).stem}.png")
        result = run_cli("finetune", "detect", "--train", str(labels / name), "--images", str(images),
                         "--classes", "plane", "--output", str(tmp_path / "run"), "--tile-size", "64",
                         "--tile-overlap", "16", *TINY_ENCODER_FLAGS)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_finetune_evaluate_predict_detect(neon: Path, natural_mae: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = run_cli("finetune", "detect", "--train", str(neon / "SOAP_061.xml"), "--images", str(neon),
                     "--val", str(neon / "SOAP_061.xml"), "--init", str(natural_mae), "--output", str(run),
                     "--epochs", "1", "--batch-size", "2", "--tile-size", "128", "--tile-overlap", "32",
                     "--fpn-channels", "32", "--roi-samples", "64", "--num-workers", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "pos_embed: fixed sin-cos recomputed for a 16x16 grid (was 8x8)" in result.stderr
    info = json.loads((run / "detector.json").read_text())
    assert info["classes"] == ["Alive", "Dead"] and info["taps"] == [2, 3, 4, 7]
    evaluated = run_cli("evaluate", "detect", "--checkpoint", str(run), "--device", "cpu", "--draw")
    assert evaluated.returncode == 0 and evaluated.stdout.startswith("mAP@0.5 "), evaluated.stderr
    assert Image.open(run / "drawn" / "SOAP_061.png").size == (400, 400)
    reported = run_cli("report", str(run))
    assert reported.returncode == 0, reported.stderr
    assert "green: they match a labelled object" in (run / "report.md").read_text()
    assert Image.open(run / "examples" / "labelled" / "SOAP_061.png").size == (400, 400)
    assert "(1 scenes, 37 objects)" in evaluated.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"map50", "ap50_per_class", "map", "map_50"} <= set(metrics)
    out = tmp_path / "predicted"
    predicted = run_cli("predict", "detect", "--checkpoint", str(run), "--images", str(neon / "SOAP_061.png"),
                        "--output", str(out), "--draw", "--device", "cpu")
    assert predicted.returncode == 0, predicted.stderr
    coco = json.loads((out / "detections.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["Alive", "Dead"] and coco["images"][0]["width"] == 400
    lines = (out / "dota" / "SOAP_061.txt").read_text().splitlines()
    assert len(lines) == len(coco["annotations"]) and all(len(line.split()) == 10 for line in lines)
    assert Image.open(out / "drawn" / "SOAP_061.png").size == (400, 400)

    graph = tmp_path / "detector.onnx"  # exported, the model writes the same map of a georeferenced NEON scene
    exported = run_cli("export", str(run), "--to", "onnx", "--output", str(graph), "--gsd", "0.1")
    assert exported.returncode == 0 and exported.stdout.strip() == f"wrote {graph}", exported.stderr
    maps = {}
    for name, model in (("pytorch", run), ("onnx", graph)):
        done = run_cli("predict", "detect", "--model", str(model), "--images", str(neon / "OSBS_029.tif"),
                       "--output", str(tmp_path / name), "--min-score", "0.05", "--device", "cpu")
        assert done.returncode == 0, done.stderr
        with fiona.open(tmp_path / name / "OSBS_029.gpkg") as layer:
            maps[name] = (layer.crs, {label: np.array([[*np.min(f["geometry"]["coordinates"][0], 0),
                                                         *np.max(f["geometry"]["coordinates"][0], 0),
                                                         f["properties"]["score"]]
                                                        for f in layer if f["properties"]["class"] == label])
                                      for label in ("Alive", "Dead")})
    (crs, boxes), (crs_onnx, boxes_onnx) = maps["pytorch"], maps["onnx"]
    assert crs == crs_onnx and sum(map(len, boxes.values())) > 0
    for label, ours in boxes.items():  # class by class (a place may hold an Alive and a Dead box)
        theirs = boxes_onnx[label]
        assert len(ours) == len(theirs)
        if len(ours):
            best, match = box_iou(torch.from_numpy(ours[:, :4]), torch.from_numpy(theirs[:, :4])).max(1)
            assert (best >= 0.99).all() and np.abs(ours[:, 4] - theirs[match.numpy(), 4]).max() < 1e-4


def test_operating_point_is_the_best_f1_threshold_by_hand():
    truth = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 0]),
             "difficult": torch.tensor([False, False])}
    found = {"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [70, 70, 80, 80]]),
             "scores": torch.tensor([0.9, 0.8, 0.6, 0.3]), "labels": torch.tensor([0, 0, 0, 0])}
    # keeping >= 0.9: P 1, R 0.5; >= 0.8: P 0.5, R 0.5; >= 0.6: P 2/3, R 1 (F1 0.8, the best); >= 0.3: P 0.5, R 1
    best = best_f1_threshold([found], [truth], 1)
    assert best["threshold"] == pytest.approx(0.6) and best["f1"] == pytest.approx(0.8)
    assert best["precision"] == pytest.approx(2 / 3) and best["recall"] == 1.0
    at = precision_recall_at([found], [truth], 1, 0.85)
    assert at["precision"] == 1.0 and at["recall"] == 0.5 and at["detections"] == 1


def test_the_conv_box_head_is_vitdets_4conv1fc_and_trains():
    torch.manual_seed(0)
    arch = ArchConfig(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=64)
    model = build_detector(arch, 1, [0.5] * 3, [0.25] * 3, fpn_channels=32, box_head="conv", roi_samples=32)
    head = model.roi_heads.box_head
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert isinstance(head, FastRCNNConvFCHead) and len(convs) == 4 and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules()) == 4
    assert model.roi_heads.box_predictor.cls_score.in_features == 1024
    target = {"boxes": torch.tensor([[10.0, 12.0, 30.0, 34.0]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [target, target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()) and convs[0].weight.grad.abs().sum() > 0


def test_under_bf16_autocast_the_rpn_and_box_predictor_answer_in_fp32_and_boxes_are_decoded_in_fp32():
    """torchvision decodes boxes in the dtype of the deltas: in bf16 a coordinate near 100 px is
    rounded to half a pixel. The last layers of both heads run in fp32 under autocast instead."""
    torch.manual_seed(0)
    arch = ArchConfig(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=128)
    model = build_detector(arch, 1, [0.5] * 3, [0.25] * 3, fpn_channels=32, box_head="conv", score_threshold=0.0)
    dtypes: dict[str, set[torch.dtype]] = {}

    def record(name: str) -> Callable:
        def hook(_: torch.nn.Module, __: tuple, out: tuple) -> None:
            dtypes.setdefault(name, set()).update(t.dtype for part in out for t in
                                                  (part if isinstance(part, list) else [part]))
        return hook

    model.rpn.head.register_forward_hook(record("rpn"))
    model.roi_heads.box_predictor.register_forward_hook(record("box"))
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        found = model.eval()(images)
    assert dtypes == {"rpn": {torch.float32}, "box": {torch.float32}}
    boxes = torch.cat([f["boxes"] for f in found])
    assert boxes.dtype == torch.float32 and len(boxes) > 0
    assert (boxes[boxes > 64] != boxes[boxes > 64].bfloat16().float()).any()  # not on bf16's half-pixel grid
    dtypes.clear()
    target = {"boxes": torch.tensor([[10.0, 12.0, 50.0, 54.0]]), "labels": torch.tensor([1])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, [target, target])
    assert dtypes == {"rpn": {torch.float32}, "box": {torch.float32}}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_drawn_detections_tell_hits_false_alarms_and_missed_objects_apart(tmp_path: Path):
    """VOC's matching decides each outline's colour: a duplicate of a hit is a false alarm, a detection on a
    difficult object is neither, and a labelled object nobody found is outlined."""
    from cspt.tasks.detect import MISSED_COLOUR, OUTCOME_COLOURS, draw_boxes

    image = tmp_path / "scene.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(image)
    hit, duplicate, far, on_difficult = [8, 8, 40, 40], [12, 12, 44, 44], [80, 80, 120, 120], [80, 8, 120, 40]
    missed = [8, 80, 40, 120]
    truth = {"boxes": torch.tensor([hit, on_difficult, missed], dtype=torch.float),
             "labels": torch.tensor([0, 0, 0]), "difficult": torch.tensor([False, True, False])}
    found = {"boxes": torch.tensor([duplicate, hit, far, on_difficult], dtype=torch.float),
             "scores": torch.tensor([0.8, 0.9, 0.7, 0.6]), "labels": torch.tensor([0, 0, 0, 0])}
    drawn = tmp_path / "drawn.png"
    rgb = PixelContract((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    draw_boxes(image, found, ["Tree"], drawn, rgb, truth)
    pixels = np.asarray(Image.open(drawn))
    # on each outline, away from the score labels written at the boxes' top left
    expected = {(30, 8): OUTCOME_COLOURS[1], (44, 30): OUTCOME_COLOURS[0], (120, 100): OUTCOME_COLOURS[0],
                (40, 100): OUTCOME_COLOURS[-1], (120, 24): MISSED_COLOUR}
    for (row, col), colour in expected.items():
        assert tuple(pixels[row, col]) == colour, (row, col)
    draw_boxes(image, found, ["Tree"], drawn, rgb)  # without labels every detection is drawn alike
    assert tuple(np.asarray(Image.open(drawn))[30, 8]) == OUTCOME_COLOURS[0]
    assert tuple(np.asarray(Image.open(drawn))[120, 24]) == (90, 90, 90)
