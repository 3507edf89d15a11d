"""Georeferenced scenes in and out: streaming class maps, blended seams, nodata, polygons and boxes on the map."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.warp import transform_geom
from rio_cogeo.cogeo import cog_validate

from cspt.config import SegmentConfig
from cspt.data.detection import read_annotations
from cspt.data.georaster import vector_driver
from cspt.data.masks import read_mask
from cspt.data.pixels import PixelContract
from cspt.data.segmentation import Pair, SegmentationCrops
from cspt.data.windows import window_starts
from cspt.engine.streaming import BLENDS, blended_logits, stream_strips
from cspt.tasks.detect import detect_scene
from cspt.tasks.segment import evaluate_pairs, finetune_segment, load_palette
from cspt.weights.descriptions import DetectorDescription, SegmenterDescription
from tests.conftest import SHARED, TEST_CRS, needs, run_cli, write_geotiff

DUBAI = SHARED / "data" / "dubai"


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    """A tiny segmenter trained for one epoch on a Dubai tile (what it predicts matters less than where)."""
    config = SegmentConfig(images=[str(needs(DUBAI) / "tile_1")], palette="dubai",
                           output=str(tmp_path_factory.mktemp("seg") / "run"), epochs=1, batch_size=4, lr=1e-3,
                           warmup_epochs=0.0, embed_dim=64, depth=2, num_heads=2, patch_size=8, crop_size=64,
                           resize=0.25, channels=32, aux_channels=16, num_workers=0, device="cpu")
    return finetune_segment(config)


def dubai_scene(path: Path, border: int = 0) -> tuple[Path, np.ndarray]:
    """A Dubai tile as an RGB GeoTIFF in UTM 40N; with ``border``, a nodata frame that wide."""
    rgb = np.asarray(Image.open(DUBAI / "tile_1" / "images" / "image_part_002.jpg").convert("RGB"))
    pixels = np.moveaxis(rgb, -1, 0).copy()
    if border:
        pixels = np.maximum(pixels, 1)  # 0 is nodata
        pixels[:, :border], pixels[:, -border:], pixels[:, :, :border], pixels[:, :, -border:] = 0, 0, 0, 0
    return write_geotiff(path, pixels, nodata=0 if border else None), rgb


@pytest.mark.slow
def test_predict_segment_writes_a_georeferenced_class_raster_and_polygons_on_the_map(segmenter, tmp_path):
    scene, rgb = dubai_scene(tmp_path / "scene.tif")
    Image.fromarray(rgb).save(tmp_path / "same.png")  # the same pixels without georeferencing
    out = tmp_path / "out"
    result = run_cli("predict", "segment", "--checkpoint", str(segmenter), "--images", str(scene),
                     str(tmp_path / "same.png"), "--output", str(out), "--vectorize", "--probabilities",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    with rasterio.open(scene) as src, rasterio.open(out / "scene.tif") as dst:
        assert dst.crs == src.crs == TEST_CRS and dst.transform == src.transform
        assert (dst.width, dst.height, dst.count, dst.dtypes[0], dst.nodata) == (src.width, src.height, 1, "uint8", 255)
        assert dst.profile["tiled"] and dst.compression.name == "deflate"
        assert cog_validate(str(out / "scene.tif"))[0] and cog_validate(str(out / "scene_probabilities.tif"))[0]
        palette = json.loads((segmenter / "segmenter.json").read_text())["palette"]
        assert [dst.colormap(1)[i][:3] for i in range(5)] == [tuple(c) for c in palette["colors"]]
        labels = dst.read(1)
    # the streamed GeoTIFF map equals the map of the same pixels read whole from a PNG
    assert np.array_equal(labels, np.asarray(Image.open(out / "same.png")))
    assert labels.max() < 5 and len(np.unique(labels)) > 1
    with rasterio.open(out / "scene_probabilities.tif") as probs:
        assert probs.count == 5 and probs.crs == TEST_CRS
        assert np.mean(probs.read().argmax(0) == labels) > 0.99  # uint8 rounding may tie two close classes
    # every polygon lies where its class is on the map: burning them back gives the raster
    with fiona.open(out / "scene.gpkg") as layer:
        assert CRS.from_wkt(layer.crs_wkt) == TEST_CRS
        features = list(layer)
        with rasterio.open(out / "scene.tif") as dst:
            burnt = rasterize(((f.geometry, f.properties["value"]) for f in features), out_shape=labels.shape,
                              transform=dst.transform, fill=255, dtype="uint8")
    assert np.array_equal(burnt, labels)
    assert {f.properties["class"] for f in features} <= set(palette["classes"])
    labelled = [e.get("label") for e in ElementTree.parse(out / "scene.qml").getroot().iter("paletteEntry")]
    assert labelled == palette["classes"]  # QGIS shows the classes by name
    # a corner of the first region lies on the pixel grid of the scene, in metres of UTM 40N
    x, y = features[0].geometry.coordinates[0][0]
    col, row = ~rasterio.open(scene).transform @ (x, y)
    assert col == pytest.approx(round(col)) and row == pytest.approx(round(row)) and 300000 <= x <= 300000 + 0.5 * 797


@pytest.mark.slow
def test_nodata_is_not_predicted_and_stays_nodata(segmenter, tmp_path):
    scene, _ = dubai_scene(tmp_path / "framed.tif", border=40)
    out = tmp_path / "out"
    result = run_cli("predict", "segment", "--checkpoint", str(segmenter), "--images", str(scene), "--output",
                     str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    labels = rasterio.open(out / "framed.tif").read(1)
    assert (labels[:40] == 255).all() and (labels[:, -40:] == 255).all()
    assert (labels[40:-40, 40:-40] < 5).all()


def test_windows_without_data_are_not_run_and_memory_is_one_strip():
    height, width, window = 300, 500, 64
    valid = torch.zeros(height, width, dtype=torch.bool)
    valid[200:, 300:] = True  # only the bottom right holds data
    calls, largest = [], []

    def read(box):
        top, left, h, w = box
        return torch.ones(1, h, w), valid[top:top + h, left:left + w]

    def predict(crops):
        calls.append(len(crops))
        return crops.repeat(1, 3, 1, 1)

    strips = []
    for strip in stream_strips(predict, read, height, width, window, 48, "cosine", batch_size=4):
        largest.append(strip.values.numel())
        strips.append(strip)
    assert sum(s.valid.shape[0] for s in strips) == height
    assert torch.equal(torch.cat([s.valid for s in strips]), valid)
    tops, lefts = window_starts(height, window, 48), window_starts(width, window, 48)
    with_data = sum(bool(valid[t:t + window, s:s + window].any()) for t in tops for s in lefts)
    assert sum(calls) == with_data < len(tops) * len(lefts) / 3
    assert max(largest) <= 3 * window * width


@pytest.mark.parametrize("blend", BLENDS)
def test_a_constant_model_gives_a_constant_map_whatever_the_blend(blend: str):
    image = torch.randn(3, 150, 230)
    constant = blended_logits(lambda crops: torch.full((len(crops), 4, 64, 64), 0.7), image, 64, 40, blend)
    assert constant.shape == (4, 150, 230) and torch.allclose(constant, torch.full_like(constant, 0.7))


def test_blending_lowers_the_seam_error_below_the_plain_mean():
    """A model that is right in a window's middle and wrong near its edges, as ViTs with zero padding are."""
    image = torch.rand(1, 200, 200)
    edge = torch.zeros(64, 64)
    edge[:8], edge[-8:], edge[:, :8], edge[:, -8:] = 1.0, 1.0, 1.0, 1.0

    def flawed(crops):
        return crops + edge

    errors = {blend: (blended_logits(flawed, image, 64, 32, blend) - image).abs()[:, 16:-16, 16:-16].mean().item()
              for blend in BLENDS}
    print(f"seam error by blend: {errors}")
    assert errors["cosine"] < errors["none"] / 2 and errors["gaussian"] < errors["none"] / 2


@pytest.mark.slow
def test_predict_detect_writes_boxes_in_the_scenes_crs(neon: Path, natural_mae: Path, tmp_path: Path):
    scene = neon / "OSBS_029.tif"  # a real NEON orthophoto: UTM 17N, 10 cm pixels
    run = tmp_path / "run"
    result = run_cli("finetune", "detect", "--train", str(neon / "OSBS_029.xml"), "--images", str(neon),
                     "--init", str(natural_mae), "--output", str(run), "--epochs", "1", "--batch-size", "2",
                     "--tile-size", "128", "--tile-overlap", "32", "--fpn-channels", "32", "--roi-samples", "64",
                     "--score-threshold", "0.0", "--num-workers", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "predicted"
    predicted = run_cli("predict", "detect", "--checkpoint", str(run), "--images", str(scene), "--output", str(out),
                        "--min-score", "0", "--device", "cpu")  # every box on the map, as in detections.json
    assert predicted.returncode == 0, predicted.stderr
    coco = json.loads((out / "detections.json").read_text())
    with rasterio.open(scene) as src, fiona.open(out / "OSBS_029.gpkg") as layer:
        assert CRS.from_wkt(layer.crs_wkt) == src.crs == "EPSG:32617"
        boxes = list(layer)
        assert len(boxes) == len(coco["annotations"]) > 0
        for feature, annotation in zip(boxes, coco["annotations"], strict=True):
            x, y, w, h = annotation["bbox"]
            ring = feature.geometry.coordinates[0]
            assert ring[0] == pytest.approx(src.transform @ (x, y)) and ring[2] == pytest.approx(
                src.transform @ (x + w, y + h))
            assert feature.properties["score"] == pytest.approx(annotation["score"])


def dubai_polygons(path: Path, scene: Path, mask: Path, crs: str = "EPSG:4326", shift: float = 0.0) -> Path:
    """The tile's mask as one polygon per region with a ``landcover`` name, reprojected to ``crs``."""
    labels = read_mask(mask, load_palette("dubai", None), 255).astype(np.uint8)
    names = load_palette("dubai", None).classes
    with rasterio.open(scene) as src:
        transform, scene_crs = src.transform, src.crs
    schema = {"geometry": "Polygon", "properties": {"landcover": "str"}}
    with fiona.open(path, "w", driver=vector_driver(path), crs_wkt=CRS.from_user_input(crs).to_wkt(),
                    schema=schema) as sink:
        for geometry, value in shapes(labels, mask=labels != 255, transform=transform):
            moved = {"type": "Polygon", "coordinates": [[(x + shift, y) for x, y in ring]
                                                        for ring in geometry["coordinates"]]}
            local = crs.startswith("LOCAL_CS")  # a site grid: same numbers, no known relation to the map
            sink.write({"geometry": moved if local else transform_geom(scene_crs, crs, moved),
                        "properties": {"landcover": names[int(value)]}})
    return path


@pytest.mark.slow
def test_finetune_segment_from_geotiff_scenes_and_polygons_in_another_crs(tmp_path: Path):
    parts = ["image_part_002", "image_part_003"]
    scenes = [write_geotiff(tmp_path / f"{p}.tif", np.moveaxis(np.asarray(
        Image.open(needs(DUBAI) / "tile_1" / "images" / f"{p}.jpg").convert("RGB")), -1, 0).copy()) for p in parts]
    mask = DUBAI / "tile_1" / "masks" / "image_part_002.png"
    labels = dubai_polygons(tmp_path / "landcover.gpkg", scenes[0], mask)  # in degrees, the scenes in UTM 40N
    run = tmp_path / "run"
    tiny = ["--crop-size", "64", "--resize", "0.25", "--channels", "32", "--aux-channels", "16", "--embed-dim", "64",
            "--depth", "2", "--num-heads", "2", "--patch-size", "8", "--num-workers", "0", "--device", "cpu"]
    command = ["finetune", "segment", "--scenes", *map(str, scenes), "--labels", str(labels), "--class-field",
               "landcover", "--output", str(run), "--epochs", "1", "--batch-size", "4", *tiny]
    # both scenes have the same extent on the map (one origin): the polygons of one tile label both
    result = run_cli(*command)
    assert result.returncode == 0, result.stderr
    with rasterio.open(run / "labels" / "0000_image_part_002.tif") as burnt_raster:  # on the scene's own grid
        burnt = burnt_raster.read(1)
        with rasterio.open(scenes[0]) as scene:
            assert burnt_raster.transform == scene.transform and burnt_raster.crs == scene.crs
    expected = read_mask(mask, load_palette("dubai", None), 255)
    names = load_palette("dubai", None).classes
    info = json.loads((run / "segmenter.json").read_text())  # the classes: the label values present, sorted
    assert info["palette"]["classes"] == sorted({names[v] for v in np.unique(expected) if v != 255})
    run_index = {n: i for i, n in enumerate(info["palette"]["classes"])}
    remapped = np.array([run_index.get(n, 255) for n in names] + [255] * (256 - len(names)), np.uint8)[expected]
    assert np.mean(burnt == remapped) > 0.995  # degrees and back: only boundary pixels may move

    def one_line_error(*args: str) -> str:
        failed = run_cli(*args)
        assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        return failed.stderr

    def with_labels(other: Path) -> list[str]:
        return [str(other) if a == str(labels) else str(tmp_path / other.stem) if a == str(run) else a
                for a in command]

    local = dubai_polygons(tmp_path / "local.gpkg", scenes[0], mask, 'LOCAL_CS["site grid",UNIT["metre",1]]')
    message = one_line_error(*with_labels(local))
    assert "local.gpkg: its CRS (site grid) cannot be transformed" in message
    far = dubai_polygons(tmp_path / "far.geojson", scenes[0], mask, "EPSG:32640", shift=100_000.0)
    message = one_line_error(*with_labels(far))
    assert "far.geojson: no feature lies over" in message and "image_part_002.tif" in message
    message = one_line_error(*with_labels(labels), "--bands", "3", "2", "5")
    assert "image_part_00" in message and "band 5 is out of range: the file has 3 band(s)" in message
    missing = [str(tmp_path / "nowhere.tif") if a == str(scenes[1]) else a for a in with_labels(labels)]
    message = one_line_error(*missing)
    assert "nowhere.tif: cannot open the scene" in message


@pytest.mark.slow
def test_detection_boxes_from_a_vector_file_in_another_crs_land_on_the_scenes_pixels(neon: Path, tmp_path: Path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "OSBS_029.tif").write_bytes((neon / "OSBS_029.tif").read_bytes())  # UTM 17N, 10 cm pixels
    truth = read_annotations(neon / "OSBS_029.xml", neon).scenes[0]
    with rasterio.open(scenes / "OSBS_029.tif") as src:
        transform, crs = src.transform, src.crs
    labels = tmp_path / "crowns.geojson"
    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    with fiona.open(labels, "w", driver="GeoJSON", crs_wkt=CRS.from_epsg(4326).to_wkt(), schema=schema) as sink:
        for (x1, y1, x2, y2), name in zip(truth.boxes.tolist(), truth.labels, strict=True):
            ring = [transform @ corner for corner in ((x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1))]
            sink.write({"geometry": transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}),
                        "properties": {"class": name}})
    (scenes / "broken.tif").write_bytes(b"not a tiff")  # a corrupt scene in the folder is skipped, not fatal
    read = read_annotations(labels, scenes)
    assert len(read.scenes) == 1
    (scenes / "broken.tif").unlink()
    scene = read.scenes[0]
    assert scene.image.name == "OSBS_029.tif" and scene.labels == truth.labels and read.classes == ["Tree"]
    assert np.abs(scene.boxes - truth.boxes).max() < 0.05  # degrees and back: well under a pixel
    far = tmp_path / "far.gpkg"
    with fiona.open(far, "w", driver="GPKG", crs_wkt=crs.to_wkt(), schema=schema) as sink:
        sink.write({"geometry": {"type": "Polygon", "coordinates": [[(0, 0), (10, 0), (10, 10), (0, 0)]]},
                    "properties": {"class": "Tree"}})
    failed = run_cli("finetune", "detect", "--train", str(far), "--images", str(scenes), "--output",
                     str(tmp_path / "run"), "--epochs", "1", "--device", "cpu")
    assert failed.returncode == 2 and failed.stderr.strip().splitlines() == [
        f"cspt: error: {far}: no feature lies over any GeoTIFF scene in {scenes}"]


def test_nodata_pixels_are_neither_trained_on_nor_scored(tmp_path: Path):
    scene, rgb = dubai_scene(tmp_path / "framed.tif", border=40)
    mask = np.full(rgb.shape[:2], 2, np.uint8)  # every pixel labelled "road"
    Image.fromarray(mask).save(tmp_path / "mask.png")
    palette = load_palette(None, ["building", "land", "road", "vegetation", "water"])
    pair = Pair(scene, tmp_path / "mask.png", *rgb.shape[:2])
    contract = PixelContract((0.5,) * 3, (0.25,) * 3)
    crops = SegmentationCrops([pair], palette, 64, contract)
    _, labels = crops.read(0, (0, 0, *rgb.shape[:2]))
    assert (labels[:40] == 255).all() and (labels[:, -40:] == 255).all() and (labels[40:-40, 40:-40] == 2).all()
    info = SegmenterDescription(architecture={"in_chans": 3}, pixels=contract.to_dict(), palette=palette.to_dict(),
                                taps=[0], channels=8, aux_channels=0, crop_size=64, stride=48)

    class Building(torch.nn.Module):
        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(crops), 5, *crops.shape[-2:])

    metrics = evaluate_pairs(Building(), [pair], info, contract, torch.device("cpu"))
    assert metrics["pixels"] == (rgb.shape[0] - 80) * (rgb.shape[1] - 80)
    assert metrics["invalid_pixels"] == rgb.shape[0] * rgb.shape[1] - metrics["pixels"]


def test_detection_does_not_run_windows_without_data(tmp_path: Path):
    pixels = np.full((3, 300, 500), 120, np.uint8)
    pixels[:, :, :300] = 0  # the left 300 columns hold no data
    scene = write_geotiff(tmp_path / "half.tif", pixels, nodata=0)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, windows: list[torch.Tensor]) -> list[dict]:
            seen.extend(w.shape for w in windows)
            return [{"boxes": torch.tensor([[60.0, 60.0, 70.0, 70.0]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([1])} for _ in windows]

    contract = PixelContract((0.5,) * 3, (0.25,) * 3)
    info = DetectorDescription(architecture={"in_chans": 3}, pixels=contract.to_dict(), classes=["tree"], taps=[0],
                               fpn_channels=8, anchor_sizes=[8], tile_size=128, tile_overlap=32)
    found = detect_scene(Recorder(), scene, 300, 500, info, contract, torch.device("cpu"))
    lefts = window_starts(500, 128, 96)
    with_data = [left for left in lefts if left + 128 > 300]
    assert len(seen) == len(window_starts(300, 128, 96)) * len(with_data) and len(with_data) < len(lefts)
    assert len(found["boxes"]) and (found["boxes"][:, 0] >= min(with_data)).all()  # none from windows without data
