"""Fine-tuned models exported as ONNX (run by onnxruntime) and torch.export archives: the same outputs as
PyTorch, the same files from ``cspt predict``, the metadata QGIS Deepness reads, and bad input in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fiona
import numpy as np
import onnx
import onnxruntime
import pytest
import rasterio
import torch
from torchvision.ops import box_iou

from cspt.data.pixels import PixelContract
from cspt.errors import CsptError
from cspt.tasks.classify import load_classifier, predict_classifier
from cspt.tasks.detect import load_detector, predict_detector
from cspt.tasks.export_graph import example_input, export_graph, graph_of
from cspt.tasks.segment import load_segmenter, predict_segmenter
from cspt.weights.graphs import DESCRIPTION_KEY, PROGRAM_DESCRIPTION, OnnxModel
from tests.conftest import TINY_ARCH, run_cli, write_geotiff
from tests.test_gis_outputs import random_detector, untrained_segmenter

CLASSES = ["water", "built-up", "trees"]


def decisive_segmenter(run: Path) -> Path:
    """An untrained tiny segmenter whose classes change across a scene (its classifier's weights scaled up, its
    bias zero), so that class maps can be compared pixel by pixel."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    untrained_segmenter(run, CLASSES)
    weights = run / "segmenter.safetensors"
    state = load_file(str(weights))
    state["decode_head.classifier.1.weight"] *= 200
    state["decode_head.classifier.1.bias"].zero_()
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata()
    save_file(state, str(weights), metadata=metadata)
    return run


def tiny_classifier(run: Path) -> Path:
    """A run folder with an untrained tiny classifier of 8-bit RGB into three classes."""
    from cspt.models.classifier import build_classifier
    from cspt.weights.descriptions import ClassifierDescription
    from cspt.weights.export import write_weights

    info = ClassifierDescription(architecture=TINY_ARCH.to_dict(), classes=CLASSES,
                                 pixels=PixelContract((0.5,) * 3, (0.25,) * 3).to_dict())
    torch.manual_seed(0)
    model = build_classifier(TINY_ARCH, len(CLASSES))
    torch.nn.init.normal_(model.head.weight, std=1.0)
    write_weights(model.state_dict(), run / "classifier.safetensors", info)
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each task's run folder and its exported ONNX file."""
    root = tmp_path_factory.mktemp("graphs")
    runs = {"segment": decisive_segmenter(root / "segment"), "classify": tiny_classifier(root / "classify"),
            "detect": random_detector(root / "detect", score_threshold=0.55)}  # windows keep different counts
    return {task: (run, export_graph(run, "onnx", root / f"{task}.onnx", gsd=0.5)) for task, run in runs.items()}


def textured_scene(path: Path, size: int = 150, border: int = 20) -> Path:
    """A georeferenced 8-bit RGB scene with structure at several scales and a nodata (0) border on the left."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(1, 255, (3, size // 10 + 1, size // 10 + 1)).repeat(10, 1).repeat(10, 2)[:, :size, :size]
    pixels = np.clip(coarse + rng.integers(-20, 20, (3, size, size)), 1, 255).astype(np.uint8)
    pixels[:, :, :border] = 0
    return write_geotiff(path, pixels, nodata=0)


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_onnx_logits_match_pytorch_within_1e_4_at_a_batch_size_other_than_the_export_s(exported, task):
    run, graph = exported[task]
    loader = {"segment": load_segmenter, "classify": load_classifier}[task]
    described, runtime = loader(run), loader(graph).model
    images = example_input(described, 5, seed=7)
    with torch.no_grad():
        ours = described.model(images)
    theirs = runtime(images)
    if task == "segment":  # the graph gives probabilities; the runtime their logarithm: logits less a constant
        assert float((torch.from_numpy(runtime.run(images)) - ours.softmax(1)).abs().max()) <= 1e-4
        ours = ours.log_softmax(1)
        kept = ours > -60  # where fp32 probabilities are not floored
        assert kept.float().mean() > 0.5
        theirs, ours = theirs[kept], ours[kept]
    assert theirs.shape == ours.shape and float((theirs - ours).abs().max()) <= 1e-4
    assert ours.std() > 1.0  # the outputs vary: the comparison is not of constants


def test_an_onnx_segmenter_writes_the_same_georeferenced_class_map_as_pytorch(exported, tmp_path):
    run, graph = exported["segment"]
    scene = textured_scene(tmp_path / "scenes" / "scene.tif")
    maps = {}
    for name, model in (("pytorch", run), ("onnx", graph)):
        predict_segmenter(model, [str(scene)], tmp_path / name, device="cpu", probabilities=True)
        with rasterio.open(tmp_path / name / "scene.tif") as written:
            maps[name] = (written.read(1), written.crs, written.transform, written.nodata)
    (ours, crs, transform, nodata), (theirs, *where) = maps["pytorch"], maps["onnx"]
    assert len(np.unique(ours[ours != nodata])) == len(CLASSES)  # every class appears: a real comparison
    assert np.array_equal(ours, theirs) and where == [crs, transform, nodata]
    assert (ours[:, :20] == nodata).all() and (ours[:, 20:] != nodata).all()  # nodata stays nodata


def test_an_onnx_classifier_gives_the_same_labels_as_pytorch(exported, tmp_path):
    run, graph = exported["classify"]
    images = []
    for i in range(6):  # of several sizes and tints, so that the untrained classifier's labels differ
        tinted = np.random.default_rng(i).integers(0, 60, (3, 40 + 8 * i, 40 + 8 * i)).astype(np.uint8)
        tinted[i % 3] += 190
        images.append(write_geotiff(tmp_path / "images" / f"image{i}.tif", tinted))
    rows = {}
    for name, model in (("pytorch", run), ("onnx", graph)):
        predict_classifier(model, [str(tmp_path / "images")], tmp_path / f"{name}.csv", device="cpu", num_workers=0)
        rows[name] = [line.split(",") for line in (tmp_path / f"{name}.csv").read_text().splitlines()[1:]]
    assert [row[:2] for row in rows["pytorch"]] == [row[:2] for row in rows["onnx"]]
    assert len({row[1] for row in rows["pytorch"]}) > 1
    assert np.allclose([float(r[2]) for r in rows["pytorch"]], [float(r[2]) for r in rows["onnx"]], atol=1e-4)
    assert len(rows["pytorch"]) == len(images)


def test_an_onnx_detector_finds_the_same_boxes_and_labels_and_writes_the_same_geopackage(exported, tmp_path):
    run, graph = exported["detect"]
    scene = textured_scene(tmp_path / "scenes" / "scene.tif", size=200)
    found, features = {}, {}
    for name, model in (("pytorch", run), ("onnx", graph)):
        predict_detector(model, [str(scene)], tmp_path / name, device="cpu", min_score=0.0)
        found[name] = json.loads((tmp_path / name / "detections.json").read_text())["annotations"]
        with fiona.open(tmp_path / name / "scene.gpkg") as layer:
            features[name] = [(f["properties"]["class"], f["geometry"]["coordinates"]) for f in layer]
    ours, theirs = found["pytorch"], found["onnx"]
    assert len(ours) == len(theirs) > 20
    per_window = [len(found) for found in (load_detector(run).model([image])[0]["boxes"]
                                           for image in example_input(load_detector(run), 3, seed=9))]
    assert len(set(per_window)) > 1  # the graph's detection count follows the data, not the export's example
    to_xyxy = lambda rows: torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)])  # noqa: E731
    iou = box_iou(to_xyxy(ours), to_xyxy(theirs))
    best, match = iou.max(1)
    assert (best >= 0.99).all()
    assert [r["category_id"] for r in ours] == [theirs[i]["category_id"] for i in match.tolist()]
    assert len(features["pytorch"]) == len(features["onnx"])
    assert sorted(c for c, _ in features["pytorch"]) == sorted(c for c, _ in features["onnx"])
    corners = lambda fs: np.array(sorted(np.ravel(g).tolist() for _, g in fs))  # noqa: E731
    assert np.abs(corners(features["pytorch"]) - corners(features["onnx"])).max() < 0.01  # metres


def test_the_onnx_file_alone_describes_the_model_and_carries_deepness_s_keys(exported):
    for task, (run, graph) in exported.items():
        model = onnx.load(str(graph))
        meta = {prop.key: prop.value for prop in model.metadata_props}
        described = json.loads(meta[DESCRIPTION_KEY])
        assert described["task"] == task and described["pixels"]["mean"] == [0.5] * 3
        assert described["lineage"][-1]["stage"] == "export"
        values = {key: json.loads(value) for key, value in meta.items() if key != DESCRIPTION_KEY}
        session = onnxruntime.InferenceSession(str(graph))
        shape = session.get_inputs()[0].shape
        assert shape[1:] == [3, values["tile_size"], values["tile_size"]]
        assert values["resolution"] == 50.0  # centimetres per pixel, from --gsd 0.5
        names = values["class_names"]
        assert [names[str(i)] for i in range(len(names))] == (["tree"] if task == "detect" else CLASSES)
        if task == "segment":
            assert values["model_type"] == "Segmentor" and isinstance(shape[0], str)  # any batch size
            assert values["standardization_mean"] == [0.5] * 3 and values["standardization_std"] == [0.25] * 3
            assert values["tiles_overlap"] == round(100 * (32 - 21) / 32)
        if task == "detect":  # Deepness reads YOLOv5-style rows from a batch of one
            assert values["model_type"] == "Detector" and values["det_type"] == "YOLO_v5_or_v7_default"
            assert shape[0] == 1 and session.get_outputs()[0].shape[0] == 1
            assert session.get_outputs()[0].shape[2] == 5 + 1 and values["tiles_overlap"] == 25
    umask = os.umask(0o022)
    os.umask(umask)
    assert graph.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes, not owner-only
    shown = run_cli("info", str(exported["segment"][1]))
    assert shown.returncode == 0 and "task: segment" in shown.stdout, shown.stderr
    assert f"classes: {', '.join(CLASSES)}" in shown.stdout and "output: probabilities" in shown.stdout


def test_a_torch_export_archive_runs_as_the_model_and_holds_its_description(exported, tmp_path):
    run, _ = exported["segment"]
    archive = export_graph(run, "exported-program", tmp_path / "segmenter.pt2")
    extra = {PROGRAM_DESCRIPTION: ""}
    program = torch.export.load(str(archive), extra_files=extra)
    assert json.loads(extra[PROGRAM_DESCRIPTION])["palette"]["classes"] == CLASSES
    shown = run_cli("info", str(archive))  # read from the archive without unpickling it
    assert shown.returncode == 0 and "task: segment" in shown.stdout, shown.stderr
    described = load_segmenter(run)
    images = example_input(described, 3, seed=2)
    with torch.no_grad():
        assert float((program.module()(images) - described.model(images).softmax(1)).abs().max()) <= 1e-5
    with pytest.raises(CsptError, match="detector cannot be captured by torch.export.*--to onnx"):
        export_graph(exported["detect"][0], "exported-program", tmp_path / "detector.pt2")


def one_line_error(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cspt: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_exports_and_foreign_graphs_are_named_in_one_line(exported, tmp_path):
    pretraining = tmp_path / "pretrain"
    (pretraining / "checkpoints").mkdir(parents=True)
    (pretraining / "encoder.safetensors").write_bytes(b"")
    line = one_line_error(run_cli("export", str(pretraining), "--to", "onnx", "--output", str(tmp_path / "x.onnx")))
    assert str(pretraining) in line and "pretraining run: it has no head" in line

    run = exported["segment"][0]
    line = one_line_error(run_cli("export", str(run), "--to", "tflite", "--output", str(tmp_path / "x.tflite")))
    assert str(run) in line and "unknown export format 'tflite'" in line

    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1).eval(), (torch.zeros(1, 3, 8, 8),), str(foreign), dynamo=True)
    scene = textured_scene(tmp_path / "scene.tif", size=40)
    line = one_line_error(run_cli("predict", "segment", "--model", str(foreign), "--images", str(scene),
                                  "--output", str(tmp_path / "out")))
    assert str(foreign) in line and "not a cspt segment model (no segment description inside it)" in line

    graph = exported["segment"][1]
    line = one_line_error(run_cli("export", str(graph), "--to", "onnx", "--output", str(tmp_path / "again.onnx")))
    assert str(graph) in line and "already an exported graph" in line
    line = one_line_error(run_cli("evaluate", "segment", "--model", str(graph)))
    assert str(graph) in line and "pass --images and --masks" in line

    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    line = one_line_error(run_cli("predict", "detect", "--model", str(damaged), "--images", str(scene),
                                  "--output", str(tmp_path / "out")))
    assert str(damaged) in line and "not a readable ONNX file" in line


def test_an_image_with_the_wrong_band_count_is_named_and_skipped_by_the_onnx_path(exported, tmp_path):
    _, graph = exported["segment"]
    five = write_geotiff(tmp_path / "five.tif", np.full((5, 40, 40), 9, np.uint8))
    result = run_cli("predict", "segment", "--model", str(graph), "--images", str(five), "--output",
                     str(tmp_path / "out"), "--device", "cpu")
    line = one_line_error(result)
    assert "none of the 1 images could be read" in line
    assert f"{five}: has 5 bands, the model takes 3" in result.stderr
    with pytest.raises(CsptError, match="takes 3 bands, got 5"):
        OnnxModel(graph, "segment")(torch.zeros(1, 5, 32, 32))


def test_detector_rows_give_back_every_class_and_box():
    from cspt.models.graphs import DetectorRows
    from cspt.weights.graphs import detections_of_rows

    found = {"boxes": torch.tensor([[1.0, 2, 11, 8], [20, 20, 40, 50], [0, 0, 63, 63]]),
             "scores": torch.tensor([0.9, 0.6, 0.3]), "labels": torch.tensor([3, 1, 2])}  # 1-based, torchvision's
    rows = DetectorRows(lambda images: [found], 3)(torch.zeros(1, 3, 64, 64))[0]
    assert torch.equal(rows[:, 5:], torch.tensor([[0, 0, 0.9], [0.6, 0, 0], [0, 0.3, 0]]))
    back = detections_of_rows(rows.numpy())
    assert back["labels"].tolist() == [3, 1, 2] and torch.allclose(back["boxes"], found["boxes"])
    assert torch.equal(back["scores"], found["scores"])


def test_the_graph_of_a_detector_is_its_final_detections_as_rows(exported):
    described = load_detector(exported["detect"][0])
    images = example_input(described, 1, seed=4)
    with torch.no_grad():
        rows = graph_of(described)(images)[0]
        found = described.model([images[0]])[0]
    assert rows.shape == (len(found["boxes"]), 6)
    assert torch.allclose(rows[:, 0] - rows[:, 2] / 2, found["boxes"][:, 0], atol=1e-4)
    assert torch.equal(rows[:, 4], found["scores"]) and torch.equal(rows[:, 5], found["scores"])


@pytest.mark.slow
def test_vit_b16_segmenter_and_detector_export_and_run_through_onnxruntime(tmp_path):
    from cspt.models.pyramid import default_taps
    from cspt.models.vit import ArchConfig
    from cspt.tasks.detect import model_from_description as detector_from
    from cspt.tasks.segment import model_from_description as segmenter_from
    from cspt.weights.descriptions import DetectorDescription, SegmenterDescription
    from cspt.weights.export import write_weights

    base = ArchConfig(img_size=224).to_dict()  # ViT-B/16, random weights
    contract = PixelContract((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).to_dict()
    segmenter = SegmenterDescription(architecture=base, pixels=contract, palette={"classes": CLASSES},
                                     taps=default_taps(12, "cspt"), channels=768, aux_channels=0, crop_size=224,
                                     stride=168)
    detector = DetectorDescription(architecture=base, pixels=contract, classes=CLASSES, taps=default_taps(12, "cspt"),
                                   fpn_channels=256, anchor_sizes=[16, 32, 64, 128, 256], tile_size=224,
                                   tile_overlap=32, score_threshold=0.0)
    torch.manual_seed(0)
    for info, build, name in ((segmenter, segmenter_from, "segmenter"), (detector, detector_from, "detector")):
        write_weights(build(info).state_dict(), tmp_path / name / f"{name}.safetensors", info)
        graph = export_graph(tmp_path / name, "onnx", tmp_path / f"{name}.onnx")
        loader = load_segmenter if name == "segmenter" else load_detector
        described, runtime = loader(tmp_path / name), loader(graph).model
        images = example_input(described, 2 if name == "segmenter" else 1, seed=5)
        with torch.no_grad():
            if name == "segmenter":
                ours, theirs = described.model(images).log_softmax(1), runtime(images)  # log-probabilities
                assert float((ours - theirs).abs().max()) <= 1e-4 * max(1.0, float(ours.abs().max()))
            else:
                ours, theirs = described.model([images[0]])[0], runtime([images[0]])[0]
                assert len(ours["boxes"]) == len(theirs["boxes"]) > 0
                assert (box_iou(ours["boxes"], theirs["boxes"]).max(1).values >= 0.99).all()
