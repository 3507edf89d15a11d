"""Evaluation scores what prediction writes: one inference function over scenes, nodata never scored; and the
smaller defects of the pixel path, each with the case that showed it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from cspt.data.masks import Palette
from cspt.data.pixels import PixelContract
from cspt.models.classifier import build_classifier
from cspt.models.pyramid import default_taps
from cspt.tasks.classify import evaluate_scene_classes, predict_scene_classes
from cspt.tasks.segment import evaluate_segmenter, model_from_description, predict_segmenter
from cspt.weights.descriptions import ClassifierDescription, SegmenterDescription
from cspt.weights.export import write_weights
from tests.conftest import TINY_ARCH, write_geotiff

CLASSES = ["field", "road", "water"]
SIZE = 150
BORDER = 23


def bordered_scene(path: Path) -> Path:
    """An 11-bit, three-band uint16 GeoTIFF with textured content and a nodata (0) border of unequal widths."""
    rng = np.random.default_rng(3)
    coarse = torch.from_numpy(rng.random((1, 3, 10, 10)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic")[0].clamp(0, 1).numpy()
    pixels = (fine * 2000 + 20).astype(np.uint16)
    pixels[:, :BORDER] = 0
    pixels[:, :, -BORDER // 2:] = 0
    return write_geotiff(path, pixels, nodata=0)


def label_raster(path: Path) -> np.ndarray:
    """A label for every pixel, the border included (labels under nodata must not be scored)."""
    labels = (np.indices((SIZE, SIZE)).sum(0) // 17 % len(CLASSES)).astype(np.uint8)
    Image.fromarray(labels).save(path)
    return labels


def contract_for(scene: Path) -> PixelContract:
    from cspt.data.scaling import resolve_scaling

    plain = PixelContract((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    scaling = resolve_scaling("auto", plain, lambda: [scene])
    return plain.replace(low=tuple(scaling.low), high=tuple(scaling.high), scaling=scaling.method)


def confusion_of(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``confusion[true, predicted]`` of the pixels the raster predicts (255: nodata)."""
    kept = predicted != 255
    return np.bincount(labels[kept].astype(int) * len(CLASSES) + predicted[kept],
                       minlength=len(CLASSES) ** 2).reshape(len(CLASSES), len(CLASSES))


def test_segment_evaluation_scores_exactly_the_raster_prediction_writes_and_never_the_nodata(tmp_path):
    scene = bordered_scene(tmp_path / "scene.tif")
    labels = label_raster(tmp_path / "scene_mask.png")
    info = SegmenterDescription(architecture=TINY_ARCH.to_dict(), pixels=contract_for(scene).to_dict(),
                                palette=Palette(CLASSES).to_dict(), taps=default_taps(TINY_ARCH.depth, "cspt"),
                                channels=16, aux_channels=0, crop_size=32, stride=21, selected="random weights")
    torch.manual_seed(0)
    model = model_from_description(info)
    torch.nn.init.normal_(model.decode_head.classifier[1].weight, std=1.0)  # random, not one class everywhere
    run = tmp_path / "run"
    write_weights(model.state_dict(), run / "segmenter.safetensors", info)
    predict_segmenter(run, [str(scene)], tmp_path / "maps", device="cpu")
    with rasterio.open(tmp_path / "maps" / "scene.tif") as src:
        predicted = src.read(1)
        assert src.nodata == 255
    assert (predicted[:BORDER] == 255).all() and (predicted[:, -BORDER // 2:] == 255).all()
    assert (predicted[BORDER:, :-BORDER // 2] != 255).all()
    assert len(np.unique(predicted[predicted != 255])) >= 2  # the check below compares real maps
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"image,mask\n{scene},{tmp_path / 'scene_mask.png'}\n")
    metrics, _ = evaluate_segmenter(run, [str(pairs)], output=tmp_path / "eval", device="cpu")
    assert np.array_equal(np.array(metrics["confusion"]), confusion_of(predicted, labels))
    assert metrics["invalid_pixels"] == int((predicted == 255).sum())


def test_scene_classification_evaluation_scores_exactly_the_map_prediction_writes(tmp_path):
    scene = bordered_scene(tmp_path / "scene.tif")
    labels = label_raster(tmp_path / "labels.png")
    write_geotiff(tmp_path / "labels.tif", labels[None])
    info = ClassifierDescription(architecture=TINY_ARCH.to_dict(), pixels=contract_for(scene).to_dict(),
                                 classes=CLASSES, selected="random weights")
    torch.manual_seed(1)
    model = build_classifier(TINY_ARCH, len(CLASSES), "avg").eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)
    contract = contract_for(scene)
    windows = torch.stack([contract.normalise(contract.read(scene, (t, 80, 32, 32))) for t in range(30, 120, 10)])
    with torch.no_grad():  # a random head centred on the scene, so that it does not answer one class everywhere
        model.head.bias -= model(windows).mean(0)
    run = tmp_path / "run"
    write_weights(model.state_dict(), run / "classifier.safetensors", info)
    predict_scene_classes(run, [str(scene)], tmp_path / "maps", window=40, stride=20, blend="cosine", device="cpu",
                          probabilities=True)
    with rasterio.open(tmp_path / "maps" / "scene.tif") as src:
        predicted = src.read(1)
    assert (predicted[:BORDER] == 255).all() and len(np.unique(predicted[predicted != 255])) >= 2
    metrics = evaluate_scene_classes(run, [str(scene)], [str(tmp_path / "labels.tif")], window=40, stride=20,
                                     blend="cosine", device="cpu")
    assert np.array_equal(np.array(metrics["confusion"]), confusion_of(predicted, labels))
    assert metrics["invalid_pixels"] == int((predicted == 255).sum())
    # the probabilities: stored 0..254 (GDAL scale 1/254), 255 only where the scene has no data
    with rasterio.open(tmp_path / "maps" / "scene_probabilities.tif") as src:
        levels = src.read()
        assert src.nodata == 255 and src.scales[0] == pytest.approx(1 / 254)
    assert ((levels == 255).all(0) == (predicted == 255)).all()
    valid = levels[:, predicted != 255].astype(float)
    assert valid.max() <= 254 and np.allclose(valid.sum(0) / 254, 1, atol=0.02)
    with pytest.raises(Exception, match="--stride 50 must lie in 1..40"):
        predict_scene_classes(run, [str(scene)], tmp_path / "gaps", window=40, stride=50, device="cpu")
    from rasterio.warp import transform_bounds

    from cspt.data.aoi import bbox_aoi
    with rasterio.open(scene) as src:  # the map of a box over the scene's middle, in lon/lat
        left, top = src.transform @ (40, 30)
        right, bottom = src.transform @ (120, 110)
        crs = src.crs
    predict_scene_classes(run, [str(scene)], tmp_path / "boxed", window=40, stride=20, blend="cosine", device="cpu",
                          aoi=bbox_aoi((left, bottom, right, top)), dst_crs="EPSG:4326")
    with rasterio.open(tmp_path / "boxed" / "scene.tif") as src:
        assert src.crs.to_epsg() == 4326
        box = transform_bounds(src.crs, crs, *src.bounds)
    assert np.allclose(box, (left, bottom, right, top), atol=2.0)  # metres: a few 0.5 m pixels


def test_vector_labels_of_two_scenes_with_one_name_stay_apart_and_class_names_must_name_every_class(tmp_path):
    import fiona
    from rasterio.transform import xy

    from cspt.config import SegmentConfig
    from cspt.data.vector_labels import read_vector_labels, scene_label_pairs
    from cspt.errors import CsptError
    from cspt.tasks.segment import label_classes

    scenes = []
    for number, folder in enumerate(("a", "b")):
        pixels = np.full((1, 40, 40), 100 + number, np.uint16)
        scenes.append(write_geotiff(tmp_path / folder / "scene.tif", pixels))
    with rasterio.open(scenes[0]) as src:
        corners = [xy(src.transform, r, c) for r, c in ((5, 5), (5, 30), (30, 30), (30, 5), (5, 5))]
    schema = {"geometry": "Polygon", "properties": {"kind": "int"}}
    labels_file = tmp_path / "labels.gpkg"
    with fiona.open(labels_file, "w", driver="GPKG", crs="EPSG:32640", schema=schema) as sink:
        for code in (10, 100, 20):  # integer codes: sorted as numbers
            sink.write({"geometry": {"type": "Polygon", "coordinates": [corners]}, "properties": {"kind": code}})
    labels = read_vector_labels(labels_file, "kind")
    config = SegmentConfig(scenes=[str(s) for s in scenes], labels=str(labels_file), class_field="kind")
    assert label_classes(config) == ["10", "20", "100"]
    with pytest.raises(CsptError, match="class\\(es\\) 100 of its kind are not among --class-names"):
        label_classes(SegmentConfig(scenes=config.scenes, labels=config.labels, class_field="kind",
                                    class_names=["10", "20"]))
    table = scene_label_pairs([str(s) for s in scenes], labels, ["10", "20", "100"], tmp_path / "labels")
    rows = [line.split(",") for line in table.read_text().splitlines()[1:]]
    assert len({mask for _, mask in rows}) == 2 and all(Path(mask).is_absolute() for _, mask in rows)


def grid_scene(path: Path, left: float, crs: str = "EPSG:32640") -> Path:
    """A 50 x 50 px, 0.5 m GeoTIFF whose left edge lies at easting ``left``."""
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=50, width=50, count=1, dtype="uint16", crs=crs,
                       transform=Affine(0.5, 0, left, 0, -0.5, 2800000.0)) as dst:
        dst.write(np.full((1, 50, 50), 7, np.uint16))
    return path


def write_boxes_file(path: Path, scene: Path, boxes: list[tuple[int, int, int, int]]) -> Path:
    """Pixel boxes (row0, col0, row1, col1) of ``scene`` as map polygons in a GeoJSON file."""
    import fiona
    from rasterio.transform import xy

    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    with rasterio.open(scene) as src, fiona.open(path, "w", driver="GeoJSON", crs=src.crs.to_wkt(),
                                                 schema=schema) as sink:
        for r0, c0, r1, c1 in boxes:
            ring = [xy(src.transform, r, c) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0), (r0, c0))]
            sink.write({"geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"class": "car"}})
    return path


def test_labels_of_another_place_are_named_as_such_and_empty_geometries_are_left_out(tmp_path):
    import fiona

    from cspt.config import SegmentConfig
    from cspt.errors import CsptError
    from cspt.tasks.segment import label_classes

    scenes = [str(grid_scene(tmp_path / f"s{i}.tif", 300000.0 + 100 * i)) for i in range(2)]
    elsewhere = write_boxes_file(tmp_path / "far.geojson", grid_scene(tmp_path / "far" / "x.tif", 900000.0),
                                 [(5, 5, 20, 20)])
    with pytest.raises(CsptError, match="far.geojson: no feature lies over any of the 2 scene\\(s\\) .*s0.tif"):
        label_classes(SegmentConfig(scenes=scenes, labels=str(elsewhere), class_field="class"))  # one class, too
    here = write_boxes_file(tmp_path / "here.gpkg", Path(scenes[0]), [(5, 5, 20, 20)])
    with fiona.open(here, "a") as sink:
        sink.write({"geometry": {"type": "Polygon", "coordinates": []}, "properties": {"class": "ghost"}})
    assert label_classes(SegmentConfig(scenes=scenes, labels=str(here), class_field="class",
                                       background="ground")) == ["ground", "car"]


def test_detection_counts_false_alarms_on_scenes_without_objects(tmp_path):
    """A scene inside the labels' extent without a feature holds no objects: its detections are false alarms.
    A scene outside the extent (another UTM zone) is not labelled by the file at all and is left out."""
    import fiona

    from cspt.data.detection import read_annotations
    from cspt.metrics import voc_map

    images = tmp_path / "scenes"
    west, _, east = (grid_scene(images / f"{name}.tif", 300000.0 + 25 * i)
                         for i, name in enumerate(("a_west", "b_empty", "c_east")))
    grid_scene(images / "d_elsewhere.tif", 300000.0, crs="EPSG:32641")
    write_boxes_file(tmp_path / "west.geojson", west, [(10, 10, 20, 20)])
    write_boxes_file(tmp_path / "east.geojson", east, [(30, 30, 40, 40)])
    with fiona.open(tmp_path / "west.geojson") as one, fiona.open(tmp_path / "east.geojson") as other, \
            fiona.open(tmp_path / "boxes.geojson", "w", driver="GeoJSON", crs=one.crs_wkt, schema=one.schema) as both:
        both.writerecords([*one, *other])
    scenes = read_annotations(tmp_path / "boxes.geojson", images, "vector").scenes
    assert [(s.image.name, len(s.boxes)) for s in scenes] == [("a_west.tif", 1), ("b_empty.tif", 0),
                                                              ("c_east.tif", 1)]
    hit = {"boxes": torch.tensor([[10.0, 10, 20, 20]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([0])}
    other = {"boxes": torch.tensor([[30.0, 30, 40, 40]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}
    alarm = {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    truths = [{"boxes": torch.from_numpy(s.boxes), "labels": torch.zeros(len(s.boxes), dtype=torch.long),
               "difficult": torch.zeros(len(s.boxes), dtype=torch.bool)} for s in scenes]
    with_empty = voc_map([hit, alarm, other], truths, ["car"])["map50"]
    assert with_empty < voc_map([hit, other], truths[::2], ["car"])["map50"] == pytest.approx(1.0)


def test_training_and_validation_label_files_over_one_folder_keep_their_own_scenes(tmp_path):
    """``--train west.geojson --val east.geojson`` over one ``--images`` folder: neither split takes the other's
    scenes as scenes without objects (the validation objects would be trained on as background, and every
    training scene scored as false alarms)."""
    from cspt.data.detection import read_annotations

    images = tmp_path / "scenes"
    west = grid_scene(images / "west.tif", 300000.0)
    east = grid_scene(images / "east.tif", 300500.0)
    train = read_annotations(write_boxes_file(tmp_path / "train.geojson", west, [(10, 10, 20, 20)]), images,
                             "vector").scenes
    val = read_annotations(write_boxes_file(tmp_path / "val.geojson", east, [(5, 5, 25, 25)]), images,
                           "vector").scenes
    assert [(s.image.name, len(s.boxes)) for s in train] == [("west.tif", 1)]
    assert [(s.image.name, len(s.boxes)) for s in val] == [("east.tif", 1)]


def test_coco_map_counts_every_object_of_a_dense_scene():
    from cspt.metrics import coco_map

    boxes = torch.tensor([[float(x), float(y), x + 8.0, y + 8.0] for x in range(0, 200, 10) for y in range(0, 100, 10)])
    truth = {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long),
             "difficult": torch.zeros(len(boxes), dtype=torch.bool)}
    found = {"boxes": boxes, "scores": torch.linspace(0.99, 0.5, len(boxes)), "labels": truth["labels"]}
    assert len(boxes) == 200 and coco_map([found], [truth])["map"] == pytest.approx(1.0)


def test_hub_checkpoints_give_their_own_normalisation(tmp_path):
    from cspt.weights.load import Checkpoint

    timm_folder = tmp_path / "timm"
    timm_folder.mkdir()
    (timm_folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224",
                                                         "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    declared = json.loads((timm_folder / "config.json").read_text())
    assert Checkpoint(timm_folder / "model.safetensors", "hub", {}, declared).normalisation == ([0.5] * 3, [0.5] * 3)
    hf_folder = tmp_path / "hf"
    hf_folder.mkdir()
    (hf_folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4] * 3, "image_std": [0.3] * 3}))
    assert Checkpoint(hf_folder / "model.safetensors", "hub", {}, {}).normalisation == ([0.4] * 3, [0.3] * 3)


def test_replay_and_probe_sources_carry_their_own_contract(tmp_path):
    from cspt.errors import CsptError
    from cspt.tasks.common import source_contract
    from tests.conftest import write_rgb

    photo = write_rgb(tmp_path / "photo.jpg")
    target = PixelContract((0.5,) * 3, (0.25,) * 3, bands=(4, 3, 2), low=(0.01,) * 3, high=(0.03,) * 3)
    replay = source_contract(target, [photo], "--replay")
    assert replay.bands is None and replay.low is None and replay.mean == target.mean  # RGB stays RGB, 8-bit
    expected = np.asarray(Image.open(photo).convert("RGB")).astype(np.float32) / 255
    assert np.allclose(replay.read(photo).image.permute(1, 2, 0).numpy(), expected)
    four = PixelContract((0.5,) * 4, (0.25,) * 4)
    with pytest.raises(CsptError, match=r"--replay: .*photo.jpg: has 3 bands, the model takes 4.*the model's own data"):
        source_contract(four, [photo], "--replay")


def test_a_teacher_of_another_band_count_is_refused_in_one_line_naming_both(tmp_path):
    from cspt.config import PretrainConfig
    from cspt.errors import CsptError
    from cspt.models.mae import MaskedAutoencoderViT
    from cspt.tasks.pretrain import load_teacher

    teacher = tmp_path / "rgb_mae.pth"
    torch.save({"model": MaskedAutoencoderViT(TINY_ARCH).state_dict()}, teacher)
    student = PretrainConfig(distill_from=str(teacher), in_chans=4, bands=[4, 3, 2, 1], patch_size=8, img_size=32,
                             data=["s2_tiles"])
    with pytest.raises(CsptError, match=r"rgb_mae.pth: the teacher takes 3 band\(s\) \(red 0.64 um, .*\), the "
                                        r"student 4 \(not described; --bands 4 3 2 1 of s2_tiles\): no student band"):
        load_teacher(student)
    guided, contract, seen = load_teacher(PretrainConfig(distill_from=str(teacher), in_chans=3, patch_size=8,
                                                         img_size=32))
    assert contract.in_chans == 3 and seen is None and not any(p.requires_grad for p in guided.parameters())
    # bands that say what they are: the RGB teacher sees a WorldView student's red, green and blue
    described = dataclasses.replace(student, band_names=["blue", "green", "red", "nir1"],
                                    wavelengths=[0.482, 0.547, 0.66, 0.824])
    assert load_teacher(described)[2] == [2, 1, 0]
    sar = dataclasses.replace(described, band_names=["HH", "HV", "VH", "VV"], wavelengths=[55465.0] * 4)
    with pytest.raises(CsptError, match=r"the student 4 \(HH 55465 um, .*no student band lies within 0.1 um"):
        load_teacher(sar)


def test_gap_reads_the_target_through_the_checkpoint_s_contract_and_the_source_through_its_own(tmp_path):
    from cspt.models.mae import MaskedAutoencoderViT
    from cspt.tasks.gap import domain_gap
    from tests.conftest import write_rgb

    recorded = PixelContract((0.5,) * 3, (0.25,) * 3, bands=(3, 2, 1), low=(0.0,) * 3, high=(0.05,) * 3)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": MaskedAutoencoderViT(TINY_ARCH).state_dict()}, run / "mae.pth")
    (run / "mae.json").write_text(json.dumps({"pixels": recorded.to_dict()}))
    for i in range(4):
        write_rgb(tmp_path / "photos" / f"{i}.jpg", seed=i)
    rng = np.random.default_rng(0)
    for i in range(2):
        write_geotiff(tmp_path / "s2" / f"{i}.tif", rng.integers(1, 3000, (4, 48, 48)).astype(np.uint16))
    result = domain_gap(run / "mae.pth", [str(tmp_path / "photos")], [str(tmp_path / "s2")], max_images=4,
                        device="cpu")
    target, source = result["band_statistics"]["target"], result["band_statistics"]["source"]
    assert target["pixels"]["bands"] == [3, 2, 1] and target["pixels"]["low"] == [0.0] * 3
    assert source["pixels"]["bands"] is None and source["pixels"]["low"] is None  # 8-bit photos: their own scale
    assert len(target["mean"]) == 3 and max(target["mean"]) < 3000 / 65535  # the 3 selected bands, raw scale
