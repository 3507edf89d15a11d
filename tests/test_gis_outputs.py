"""Class maps as a GIS expects them: valid Cloud-Optimised GeoTIFFs, class names in the raster's metadata and a
QGIS style beside it, nodata kept, and nothing left behind by a scene that fails part-way."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_validate

from cspt.data.images import ImageInfo, ImageReadError
from cspt.data.pixels import PixelContract
from cspt.engine.streaming import Strip
from cspt.tasks.maps import qualitative_colors, write_class_raster
from tests.conftest import TEST_CRS, run_cli, write_geotiff

CLASSES = ["water", "built-up & roads", "trees <5 m"]  # names that need escaping in XML
HEIGHT, WIDTH, ROWS = 700, 600, 128  # large enough for overviews; strips of 128 rows


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A georeferenced scene with a nodata border, the class of each of its pixels, and where it has data."""
    pixels = np.full((1, HEIGHT, WIDTH), 100, np.int16)
    pixels[:, :, :50] = -9999
    path = write_geotiff(tmp_path / "scene.tif", pixels, nodata=-9999)
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    labels = ((rows // 100 + cols // 150) % len(CLASSES)).astype(np.uint8)
    return path, labels, pixels[0] != -9999


def strips_of(labels: np.ndarray, valid: np.ndarray, fail_after: int | None = None) -> Iterator[Strip]:
    """What inference streams for a model that predicts ``labels`` (logits one-hot), strip by strip."""
    for index, top in enumerate(range(0, HEIGHT, ROWS)):
        if fail_after is not None and index == fail_after:
            raise ImageReadError("scene.tif: read failed at row %d" % top)
        rows = torch.from_numpy(labels[top:top + ROWS].astype(np.int64))
        logits = torch.nn.functional.one_hot(rows, len(CLASSES)).permute(2, 0, 1).float() * 5
        yield Strip(top, logits, torch.from_numpy(valid[top:top + ROWS]))


def test_class_maps_are_valid_cogs_that_name_their_classes(scene, tmp_path):
    path, labels, valid = scene
    out = tmp_path / "out"
    colors = qualitative_colors(len(CLASSES))
    write_class_raster(strips_of(labels, valid), path, out, ImageInfo(HEIGHT, WIDTH, 1, "int16"), CLASSES, colors,
                       probabilities=True)
    for raster in ("scene.tif", "scene_probabilities.tif"):
        is_valid, errors, warnings = cog_validate(str(out / raster))
        assert is_valid and not errors, (raster, errors, warnings)
    with rasterio.open(out / "scene.tif") as written:
        assert written.crs == TEST_CRS and written.overviews(1), "a COG of this size has overviews"
        assert written.nodata == 255 and written.descriptions == ("class",)
        expected = np.where(valid, labels, 255)
        assert np.array_equal(written.read(1), expected)  # nodata stays nodata
        assert [written.colormap(1)[i][:3] for i in range(len(CLASSES))] == [tuple(map(int, c)) for c in colors]
    with rasterio.open(out / "scene_probabilities.tif") as probabilities:
        assert probabilities.descriptions == tuple(CLASSES) and probabilities.count == len(CLASSES)
        assert ColorInterp.alpha not in probabilities.colorinterp and ColorInterp.red not in probabilities.colorinterp
        assert (probabilities.read()[:, ~valid] == 255).all()
    assert sorted(p.name for p in out.iterdir()) == ["scene.qml", "scene.tif", "scene.tif.aux.xml",
                                                     "scene_probabilities.tif"]

    band = ElementTree.parse(out / "scene.tif.aux.xml").getroot().find("PAMRasterBand")
    assert [c.text for c in band.find("CategoryNames")] == CLASSES
    table = band.find("GDALRasterAttributeTable")
    assert table.get("tableType") == "thematic"
    names = [field.findtext("Name") for field in table.findall("FieldDefn")]
    rows = [[f.text for f in row.findall("F")] for row in table.findall("Row")]
    assert [dict(zip(names, row))["class"] for row in rows] == CLASSES
    assert [int(dict(zip(names, row))["value"]) for row in rows] == list(range(len(CLASSES)))

    style = ElementTree.parse(out / "scene.qml").getroot()
    renderer = style.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == CLASSES and [int(e.get("value")) for e in entries] == [0, 1, 2]
    assert [e.get("color") for e in entries] == ["#%02x%02x%02x" % tuple(map(int, c)) for c in colors]


@pytest.mark.parametrize("codes", [["10", "20", "100"], ["10", "20", "300"]])
def test_integer_class_codes_are_written_as_the_user_s_codes(scene, tmp_path, codes):
    import fiona

    from cspt.data.georaster import vectorize_classes

    path, labels, valid = scene
    out = tmp_path / "out"
    colors = qualitative_colors(len(codes))
    write_class_raster(strips_of(labels, valid), path, out, ImageInfo(HEIGHT, WIDTH, 1, "int16"), codes, colors,
                       probabilities=False)
    assert cog_validate(str(out / "scene.tif"))[0]
    nodata = 255 if codes[-1] == "100" else 65535
    with rasterio.open(out / "scene.tif") as written:
        assert written.nodata == nodata and written.dtypes[0] == ("uint8" if nodata == 255 else "uint16")
        expected = np.where(valid, np.array([int(c) for c in codes])[labels], nodata)
        assert np.array_equal(written.read(1), expected)
        assert [written.colormap(1)[int(c)][:3] for c in codes] == [tuple(map(int, rgb)) for rgb in colors]
    categories = [c.text or "" for c in ElementTree.parse(out / "scene.tif.aux.xml").getroot().iter("Category")]
    assert len(categories) == int(codes[-1]) + 1 and [categories[int(c)] for c in codes] == codes
    entries = ElementTree.parse(out / "scene.qml").getroot().iter("paletteEntry")
    assert [(int(e.get("value")), e.get("label")) for e in entries] == [(int(c), c) for c in codes]
    assert vectorize_classes(out / "scene.tif", out / "scene.gpkg", codes) > 0
    with fiona.open(out / "scene.gpkg") as layer:
        assert layer.schema["properties"]["class"].startswith("int")
        assert {f.properties["class"] for f in layer} == {int(c) for c in codes}


def test_a_scene_that_fails_part_way_leaves_no_output(scene, tmp_path):
    path, labels, valid = scene
    out = tmp_path / "out"
    colors = qualitative_colors(len(CLASSES))
    info = ImageInfo(HEIGHT, WIDTH, 1, "int16")
    write_class_raster(strips_of(labels, valid), path, out, info, CLASSES, colors, probabilities=True)
    assert (out / "scene.tif").is_file()  # an earlier run's map, then the scene breaks in the next run
    with pytest.raises(ImageReadError):
        write_class_raster(strips_of(labels, valid, fail_after=2), path, out, info, CLASSES, colors,
                           probabilities=True)
    assert sorted(p.name for p in out.iterdir()) == []


@contextmanager
def cspt_warnings() -> Iterator[list[str]]:
    """The warnings cspt logs inside the block."""
    logger = logging.getLogger("cspt")
    warned: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())
    logger.addHandler(handler)
    try:
        yield warned
    finally:
        logger.removeHandler(handler)


def scene_folder(folder: Path, good: int, broken: int) -> Path:
    """``good`` readable uint8 RGB GeoTIFFs and ``broken`` files that only claim to be TIFFs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(good):
        write_geotiff(folder / f"good{index}.tif", rng.integers(0, 255, (3, 48, 48), dtype=np.uint8))
    for index in range(broken):
        (folder / f"broken{index}.tif").write_bytes(b"II*\x00not a tiff at all")
    return folder


def untrained_segmenter(run: Path, classes: list[str]) -> Path:
    """A run folder with an untrained tiny segmenter of 8-bit RGB into ``classes`` (what it predicts does not
    matter here)."""
    from cspt.data.masks import Palette
    from cspt.models.pyramid import default_taps
    from cspt.tasks.segment import model_from_description
    from cspt.weights.descriptions import SegmenterDescription
    from cspt.weights.export import write_weights
    from tests.conftest import TINY_ARCH

    info = SegmenterDescription(architecture=TINY_ARCH.to_dict(), pixels=PixelContract((0.5,) * 3, (0.25,) * 3)
                                .to_dict(), palette=Palette(classes).to_dict(),
                                taps=default_taps(TINY_ARCH.depth, "cspt"), channels=16, aux_channels=0, crop_size=32,
                                stride=21, selected="random weights")
    torch.manual_seed(0)
    write_weights(model_from_description(info).state_dict(), run / "segmenter.safetensors", info)
    return run


@pytest.fixture(scope="module")
def random_segmenter(tmp_path_factory) -> Path:
    return untrained_segmenter(tmp_path_factory.mktemp("segmenter"), CLASSES)


def test_a_batch_with_bad_scenes_writes_the_good_ones_names_the_bad_and_says_so_in_its_exit_status(
        random_segmenter, tmp_path):
    scenes = scene_folder(tmp_path / "scenes", good=2, broken=1)
    out = tmp_path / "maps"
    result = run_cli("predict", "segment", "--checkpoint", str(random_segmenter), "--images", str(scenes),
                     "--output", str(out), "--device", "cpu")
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cspt: error:")]
    assert len(errors) == 1 and "1 of 3 images could not be read" in errors[0] and "broken0.tif" in errors[0]
    assert any("broken0.tif" in line and "skipped" in line for line in result.stderr.splitlines())
    assert sorted(p.name for p in out.iterdir()) == ["good0.qml", "good0.tif", "good0.tif.aux.xml", "good1.qml",
                                                     "good1.tif", "good1.tif.aux.xml"]

    nothing = run_cli("predict", "segment", "--checkpoint", str(random_segmenter), "--images",
                      str(scene_folder(tmp_path / "bad", good=0, broken=2)), "--output", str(tmp_path / "none"),
                      "--device", "cpu")
    assert nothing.returncode == 2 and "none of the 2 images could be read" in nothing.stderr, nothing.stderr
    assert not list((tmp_path / "none").iterdir())


def random_detector(run: Path, operating_point: dict | None = None, score_threshold: float = 0.0,
                    classes: tuple[str, ...] = ("tree",)) -> Path:
    """A run folder with an untrained tiny detector (one class unless told) that keeps every box (score threshold
    0, unless told)."""
    from cspt.models.pyramid import default_taps
    from cspt.models.vit import ArchConfig
    from cspt.tasks.detect import model_from_description
    from cspt.weights.descriptions import DetectorDescription
    from cspt.weights.export import write_weights

    arch = ArchConfig(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=64)
    info = DetectorDescription(architecture=arch.to_dict(), pixels=PixelContract((0.5,) * 3, (0.25,) * 3).to_dict(),
                               classes=list(classes), taps=default_taps(arch.depth, "cspt"), fpn_channels=16,
                               anchor_sizes=[8, 16, 32, 64, 128], tile_size=64, tile_overlap=16,
                               score_threshold=score_threshold, operating_point=operating_point)
    torch.manual_seed(0)
    write_weights(model_from_description(info).state_dict(), run / "detector.safetensors", info)
    return run


def test_detection_of_a_batch_with_a_bad_scene_writes_only_the_good_ones(tmp_path):
    from cspt.errors import CsptError, SomeInputsFailed
    from cspt.tasks.detect import predict_detector

    random_detector(tmp_path / "run")
    scenes = scene_folder(tmp_path / "scenes", good=1, broken=1)
    with pytest.raises(SomeInputsFailed, match="1 of 2 images could not be read.*broken0.tif"):
        predict_detector(tmp_path / "run", [str(scenes)], tmp_path / "out", device="cpu")
    written = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [Path(image["file_name"]).name for image in written["images"]] == ["good0.tif"]
    assert sorted(p.name for p in (tmp_path / "out" / "dota").iterdir()) == ["good0.txt"]
    with pytest.raises(CsptError, match="none of the 1 images could be read"):
        predict_detector(tmp_path / "run", [str(scene_folder(tmp_path / "bad", 0, 1))], tmp_path / "none",
                         device="cpu")
    assert not (tmp_path / "none" / "detections.json").exists()


def test_two_scenes_of_one_name_are_refused_before_either_overwrites_the_other(random_segmenter, tmp_path):
    first = scene_folder(tmp_path / "a", good=1, broken=0) / "good0.tif"
    second = scene_folder(tmp_path / "b", good=1, broken=0) / "good0.tif"
    result = run_cli("predict", "segment", "--checkpoint", str(random_segmenter), "--images", str(tmp_path / "a"),
                     str(tmp_path / "b"), "--output", str(tmp_path / "maps"), "--device", "cpu")
    assert result.returncode == 2 and str(first) in result.stderr and str(second) in result.stderr, result.stderr
    assert not (tmp_path / "maps").exists() or not list((tmp_path / "maps").iterdir())


def test_a_scene_without_a_crs_is_said_to_give_pixel_coordinates(random_segmenter, tmp_path):
    from cspt.tasks.segment import predict_segmenter

    pixels = np.random.default_rng(1).integers(0, 255, (3, 48, 48), dtype=np.uint8)
    with rasterio.open(tmp_path / "plain.tif", "w", driver="GTiff", height=48, width=48, count=3,
                       dtype="uint8") as dst:
        dst.write(pixels)
    with cspt_warnings() as warned:
        predict_segmenter(random_segmenter, [str(tmp_path / "plain.tif")], tmp_path / "maps", device="cpu",
                          vectorize="gpkg")
    assert any("plain.tif has no CRS" in m and "pixel coordinates" in m for m in warned), warned


def test_a_truncated_geotiff_is_named_with_gdal_s_reason_and_leaves_no_map(random_segmenter, tmp_path):
    scenes = scene_folder(tmp_path / "scenes", good=1, broken=0)
    whole = write_geotiff(tmp_path / "whole.tif", np.random.default_rng(2).integers(0, 255, (3, 600, 600),
                                                                                    dtype=np.uint8))
    data = whole.read_bytes()
    (scenes / "cut.tif").write_bytes(data[:len(data) // 2])  # the header is whole: the map starts, then fails
    result = run_cli("predict", "segment", "--checkpoint", str(random_segmenter), "--images", str(scenes),
                     "--output", str(tmp_path / "maps"), "--device", "cpu")
    assert result.returncode == 3, result.stderr
    skipped = [line for line in result.stderr.splitlines() if "cut.tif" in line and "skipped" in line]
    assert len(skipped) == 1 and "Read error" in skipped[0] and "previous exception" not in skipped[0], skipped
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["good0.qml", "good0.tif", "good0.tif.aux.xml"]


def test_a_scene_located_by_control_points_is_said_to_give_pixel_coordinates(tmp_path, caplog):
    import logging

    from rasterio.control import GroundControlPoint

    from cspt.data.georaster import georeference_of

    points = [GroundControlPoint(row, col, 57.0 + col / 1e4, 25.0 - row / 1e4) for row, col in
              ((0, 0), (0, 47), (47, 0))]
    with rasterio.open(tmp_path / "gcps.tif", "w", driver="GTiff", height=48, width=48, count=1, dtype="uint8",
                       gcps=points, crs=CRS.from_epsg(4326)) as dst:
        dst.write(np.zeros((1, 48, 48), np.uint8))
    with caplog.at_level(logging.WARNING, logger="cspt"):
        where = georeference_of(tmp_path / "gcps.tif")
    assert not where.is_georeferenced
    assert any("gcps.tif" in r.getMessage() and "control points" in r.getMessage() for r in caplog.records)


def test_a_scene_the_model_cannot_read_is_skipped_and_its_earlier_outputs_go(random_segmenter, tmp_path):
    """A file with the wrong band count no longer stops the batch half-way; and a scene that fails in this run
    keeps nothing an earlier run wrote for it."""
    scenes = scene_folder(tmp_path / "scenes", good=2, broken=0)
    out = tmp_path / "maps"
    first = run_cli("predict", "segment", "--checkpoint", str(random_segmenter), "--images", str(scenes), "--output",
                    str(out), "--device", "cpu", "--vectorize", "geojson", "--draw")
    assert first.returncode == 0, first.stderr
    assert {"good1.tif", "good1.geojson", "good1_overlay.jpg", "good1.qml"} <= {p.name for p in out.iterdir()}
    write_geotiff(scenes / "good1.tif", np.zeros((5, 48, 48), np.uint8))  # now five bands: not what it reads
    write_geotiff(scenes / "another.tif", np.zeros((3, 48, 48), np.uint8) + 90)
    second = run_cli("predict", "segment", "--checkpoint", str(random_segmenter), "--images", str(scenes),
                     "--output", str(out), "--device", "cpu", "--vectorize", "geojson", "--draw")
    assert second.returncode == 3 and "1 of 3 images" in second.stderr, second.stderr
    assert any("good1.tif" in line and "5 bands" in line for line in second.stderr.splitlines())
    assert not [p.name for p in out.iterdir() if p.name.startswith("good1")]
    assert {"good0.tif", "another.tif", "another.geojson"} <= {p.name for p in out.iterdir()}


def test_geojson_outputs_are_wgs84_as_rfc_7946_requires_and_geopackages_keep_the_scene_crs(scene, tmp_path):
    import fiona
    from rasterio.warp import transform_bounds

    from cspt.data.georaster import vectorize_classes

    path, labels, valid = scene
    out = tmp_path / "out"
    write_class_raster(strips_of(labels, valid), path, out, ImageInfo(HEIGHT, WIDTH, 1, "int16"), CLASSES,
                       qualitative_colors(len(CLASSES)), probabilities=False)
    counts = {suffix: vectorize_classes(out / "scene.tif", out / f"scene.{suffix}", CLASSES)
              for suffix in ("gpkg", "geojson")}
    assert counts["gpkg"] == counts["geojson"] > 3
    with fiona.open(out / "scene.gpkg") as native, fiona.open(out / "scene.geojson") as web:
        assert rasterio.crs.CRS.from_wkt(native.crs_wkt) == TEST_CRS
        assert web.crs.to_epsg() == 4326
        expected = transform_bounds(TEST_CRS, "EPSG:4326", *native.bounds)
        assert np.allclose(web.bounds, expected, atol=1e-6)
        assert [f.properties["class"] for f in web] == [f.properties["class"] for f in native]


def test_detection_maps_hold_the_operating_point_s_detections_and_evaluation_files_hold_all(tmp_path):
    import fiona

    from cspt.tasks.detect import predict_detector

    scenes = scene_folder(tmp_path / "scenes", good=1, broken=0)

    def written(run: Path, output: str, **options) -> tuple[list[float], list[float], int]:
        predict_detector(run, [str(scenes)], tmp_path / output, device="cpu", **options)
        coco = [a["score"] for a in json.loads((tmp_path / output / "detections.json").read_text())["annotations"]]
        with fiona.open(tmp_path / output / "good0.gpkg") as layer:
            mapped = [feature["properties"]["score"] for feature in layer]
        return coco, mapped, len((tmp_path / output / "dota" / "good0.txt").read_text().splitlines())

    every, _, _ = written(random_detector(tmp_path / "plain"), "every", min_score=0.0)
    threshold = float(np.median(every))
    run = random_detector(tmp_path / "chosen", {"threshold": threshold, "chosen_on": "64 training tiles"})
    coco, mapped, lines = written(run, "default")
    assert sorted(coco) == pytest.approx(sorted(every)) and lines == len(every)  # evaluation files: all of them
    assert 0 < len(mapped) < len(every) and min(mapped) >= threshold
    assert sorted(mapped) == pytest.approx(sorted(s for s in every if s >= threshold))
    assert sorted(written(run, "all", min_score=0.0)[1]) == pytest.approx(sorted(every))


def test_images_unlike_the_model_s_training_data_are_warned_about_and_still_predicted(random_segmenter, tmp_path):
    from cspt.tasks.segment import predict_segmenter

    eleven_bit = np.random.default_rng(2).integers(200, 2047, (1, 48, 48), dtype=np.uint16)
    grey = write_geotiff(tmp_path / "grey" / "pan.tif", eleven_bit)
    with cspt_warnings() as warned:
        predict_segmenter(random_segmenter, [str(grey)], tmp_path / "maps", device="cpu")
    assert any("pan.tif" in m and "has one band: it is repeated to the model's 3 bands" in m for m in warned), warned
    assert any("normalisation does not fit the data" in m and "bands all; scaling the dtype scale" in m
               for m in warned), warned
    assert (tmp_path / "maps" / "pan.tif").is_file()
    rgb = write_geotiff(tmp_path / "rgb" / "rgb.tif", np.random.default_rng(3).integers(0, 255, (3, 48, 48),
                                                                                         dtype=np.uint8))
    with cspt_warnings() as warned:
        predict_segmenter(random_segmenter, [str(rgb)], tmp_path / "rgb_maps", device="cpu")
    assert not warned


def test_prediction_shows_scenes_and_windows_on_a_terminal_and_nothing_in_a_log(random_segmenter, tmp_path,
                                                                               monkeypatch):
    import io
    import sys

    from cspt.tasks.segment import predict_segmenter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    scenes = scene_folder(tmp_path / "scenes", good=2, broken=0)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    predict_segmenter(random_segmenter, [str(scenes)], tmp_path / "maps", device="cpu")
    monkeypatch.undo()
    shown = terminal.getvalue()
    assert "scenes: 100%" in shown and "2/2" in shown and "windows" in shown, shown
    logged = run_cli("predict", "segment", "--checkpoint", str(random_segmenter), "--images", str(scenes),
                     "--output", str(tmp_path / "logged"), "--device", "cpu")
    assert logged.returncode == 0 and "windows" not in logged.stderr and "scenes:" not in logged.stderr


def vrt_of_two_tiles(scene: Path, folder: Path) -> Path:
    """``scene`` cut into a left and a right GeoTIFF tile and put back together as a VRT mosaic."""
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    with rasterio.open(scene) as src:
        half = src.width // 2
        for name, window in (("left", Window(0, 0, half, src.height)),
                             ("right", Window(half, 0, src.width - half, src.height))):
            profile = {**src.profile, "driver": "GTiff", "width": window.width, "height": window.height,
                       "transform": src.window_transform(window)}
            with rasterio.open(folder / f"{name}.tif", "w", **profile) as tile:
                tile.write(src.read(window=window))
            sources.append((name, window))
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}">' + "".join(
                f'<SimpleSource><SourceFilename relativeToVRT="1">{name}.tif</SourceFilename>'
                f"<SourceBand>{b}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w.width}\" "
                f'ySize="{w.height}"/><DstRect xOff="{w.col_off}" yOff="0" xSize="{w.width}" ySize="{w.height}"/>'
                f"</SimpleSource>" for name, w in sources) + "</VRTRasterBand>" for b in range(1, src.count + 1))
        geo = ", ".join(str(v) for v in src.transform.to_gdal())
        (folder / "mosaic.vrt").write_text(f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
                                          f"<SRS>{src.crs.to_wkt()}</SRS><GeoTransform>{geo}</GeoTransform>"
                                          f"{bands}</VRTDataset>")
    return folder / "mosaic.vrt"


def test_a_vrt_mosaic_inside_an_aoi_in_wgs84_is_written_in_the_requested_crs_with_the_user_s_codes(neon, tmp_path):
    import fiona
    from rasterio.warp import transform_bounds, transform_geom

    from cspt.data.aoi import read_aoi
    from cspt.tasks.segment import predict_segmenter

    segmenter = untrained_segmenter(tmp_path / "run", ["10", "20", "30"])
    mosaic = vrt_of_two_tiles(neon / "OSBS_029.tif", tmp_path / "tiles")  # real NEON RGB, UTM 17N, 10 cm
    with rasterio.open(mosaic) as src:
        native, scene_crs, transform = src.read(), src.crs, src.transform
    rows, cols = (100, 300), (150, 330)  # the AOI straddles the two tiles
    ring = [transform @ (c, r) for r, c in ((rows[0], cols[0]), (rows[0], cols[1]), (rows[1], cols[1]),
                                             (rows[1], cols[0]), (rows[0], cols[0]))]
    polygon = transform_geom(scene_crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    schema = {"geometry": "Polygon", "properties": {"name": "str"}}
    with fiona.open(tmp_path / "aoi.geojson", "w", driver="GeoJSON", crs="EPSG:4326", schema=schema) as sink:
        sink.write({"geometry": polygon, "properties": {"name": "plot"}})
    far = write_geotiff(tmp_path / "tiles" / "elsewhere.tif", native)  # another CRS and place: outside the AOI
    out = tmp_path / "maps"
    predict_segmenter(segmenter, [str(mosaic), str(far)], out, device="cpu", vectorize="gpkg", probabilities=True,
                      aoi=read_aoi(tmp_path / "aoi.geojson"), dst_crs="EPSG:3857")
    assert sorted(p.name for p in out.iterdir()) == ["mosaic.gpkg", "mosaic.qml", "mosaic.tif",
                                                     "mosaic.tif.aux.xml", "mosaic_probabilities.tif"]
    for raster in ("mosaic.tif", "mosaic_probabilities.tif"):
        assert cog_validate(str(out / raster))[0], raster
    with rasterio.open(out / "mosaic_probabilities.tif") as probabilities:
        assert probabilities.crs.to_epsg() == 3857 and probabilities.descriptions == ("10", "20", "30")
    with rasterio.open(out / "mosaic.tif") as written:
        assert written.crs.to_epsg() == 3857 and written.nodata == 255
        values = written.read(1)
        assert set(np.unique(values)) <= {10, 20, 30, 255} and set(np.unique(values)) & {10, 20, 30}
        left, bottom, right, top = transform_bounds(written.crs, scene_crs, *written.bounds)
    aoi_left, aoi_top = transform @ (cols[0], rows[0])
    aoi_right, aoi_bottom = transform @ (cols[1], rows[1])
    pixel = transform.a
    assert abs(left - aoi_left) < 3 * pixel and abs(right - aoi_right) < 3 * pixel  # the AOI, not the scene
    assert abs(top - aoi_top) < 3 * pixel and abs(bottom - aoi_bottom) < 3 * pixel
    names = [c.text for c in ElementTree.parse(out / "mosaic.tif.aux.xml").getroot().iter("Category")]
    assert [names[code] for code in (10, 20, 30)] == ["10", "20", "30"]
    with fiona.open(out / "mosaic.gpkg") as layer:
        assert CRS.from_wkt(layer.crs_wkt).to_epsg() == 3857
        assert {f.properties["class"] for f in layer} <= {10, 20, 30}


def test_a_scene_inside_a_zip_is_read_through_its_gdal_virtual_path(random_segmenter, tmp_path):
    import zipfile

    from cspt.data.images import gdal_name
    from cspt.tasks.segment import predict_segmenter

    scene = scene_folder(tmp_path / "scenes", good=1, broken=0) / "good0.tif"
    with zipfile.ZipFile(tmp_path / "delivery.zip", "w") as archive:
        archive.write(scene, "imagery/good0.tif")
    predict_segmenter(random_segmenter, [f"/vsizip/{tmp_path}/delivery.zip/imagery/good0.tif"], tmp_path / "maps",
                      device="cpu")
    with rasterio.open(tmp_path / "maps" / "good0.tif") as written, rasterio.open(scene) as source:
        assert written.transform == source.transform and written.crs == source.crs
    url = "/vsicurl/https://example.com/scenes/a.tif"  # pathlib folds the URL's "//"; GDAL is given it back
    assert gdal_name(Path(url)) == url and gdal_name(Path("/data/a.tif")) == "/data/a.tif"


def test_an_area_or_output_crs_is_refused_for_a_scene_without_a_crs_and_a_wgs84_box_keeps_its_edges(
        random_segmenter, tmp_path):
    from rasterio.warp import transform_bounds

    from cspt.data.aoi import bbox_aoi, scene_area
    from cspt.errors import SomeInputsFailed
    from cspt.tasks.segment import predict_segmenter

    located = scene_folder(tmp_path / "scenes", good=1, broken=0) / "good0.tif"
    with rasterio.open(tmp_path / "scenes" / "plain.tif", "w", driver="GTiff", height=48, width=48, count=3,
                       dtype="uint8") as dst:
        dst.write(np.zeros((3, 48, 48), np.uint8))
    with pytest.raises(SomeInputsFailed, match="1 of 2 images could not be read.*plain.tif"):
        predict_segmenter(random_segmenter, [str(tmp_path / "scenes")], tmp_path / "maps", device="cpu",
                          dst_crs="EPSG:3857")
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.tif")) == ["good0.tif"]
    with rasterio.open(located) as src:  # a lon/lat box over the middle of the scene, drawn in UTM
        lon_lat = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        transform = src.transform
    width, height = lon_lat[2] - lon_lat[0], lon_lat[3] - lon_lat[1]
    box = (lon_lat[0] + width / 4, lon_lat[1] + height / 4, lon_lat[2] - width / 4, lon_lat[3] - height / 4)
    area = scene_area(bbox_aoi(box, "EPSG:4326"), located)
    assert area is not None and 0.2 < area.inside.sum() / (48 * 48) < 0.3 and area.transform.a == transform.a


def test_detection_inside_an_area_of_interest_in_another_output_crs(tmp_path):
    import fiona
    from rasterio.warp import transform_bounds

    from cspt.data.aoi import bbox_aoi
    from cspt.errors import CsptError
    from cspt.tasks.detect import predict_detector

    scene = scene_folder(tmp_path / "scenes", good=1, broken=0) / "good0.tif"
    run = random_detector(tmp_path / "run")
    with rasterio.open(scene) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    middle = (left + right) / 2  # the western half of the scene: columns 0-23
    predict_detector(run, [str(scene)], tmp_path / "all", device="cpu", min_score=0.0)
    elsewhere = write_geotiff(tmp_path / "scenes" / "elsewhere.tif", np.zeros((3, 48, 48), np.uint8),
                              crs="EPSG:32633")
    predict_detector(run, [str(scene), str(elsewhere)], tmp_path / "west", device="cpu", min_score=0.0,
                     aoi=bbox_aoi((left, bottom, middle, top), crs.to_string()), dst_crs="EPSG:4326")  # one is outside
    every = json.loads((tmp_path / "all" / "detections.json").read_text())["annotations"]
    west = json.loads((tmp_path / "west" / "detections.json").read_text())["annotations"]
    centres = [a["bbox"][0] + a["bbox"][2] / 2 for a in west]
    assert 0 < len(west) < len(every) and max(centres) < 24  # scene pixels, centred inside the area
    with fiona.open(tmp_path / "west" / "good0.gpkg") as layer:
        assert CRS.from_wkt(layer.crs_wkt).to_epsg() == 4326 and len(layer) == len(west)
        west_lon, south, east_lon, north = transform_bounds(crs, "EPSG:4326", left, bottom, right, top)
        for feature in layer:
            for lon, lat in feature.geometry.coordinates[0]:
                assert west_lon - 1e-4 < lon < east_lon + 1e-4 and south - 1e-4 < lat < north + 1e-4
    assert not (tmp_path / "west" / "elsewhere.gpkg").exists()
    predict_detector(run, [str(elsewhere)], tmp_path / "west", device="cpu",
                     aoi=bbox_aoi((left, bottom, middle, top), crs.to_string()))
    assert not (tmp_path / "west" / "detections.json").exists()  # nothing predicted: no earlier run's detections
    with pytest.raises(CsptError, match="GeoJSON outputs are WGS84"):
        predict_detector(run, [str(scene)], tmp_path / "web", device="cpu", vector_format="geojson",
                         dst_crs="EPSG:3857")


def test_an_internal_mask_marks_pixels_without_data_as_alpha_does(random_segmenter, tmp_path):
    from cspt.tasks.segment import predict_segmenter

    scene = scene_folder(tmp_path / "scenes", good=1, broken=0) / "good0.tif"
    masked = tmp_path / "masked" / "masked.tif"
    masked.parent.mkdir()
    keep = np.full((48, 48), 255, np.uint8)
    keep[:, :12] = 0  # a western strip GDAL's internal mask says holds no data
    with rasterio.open(scene) as src, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(masked, "w", **src.profile) as dst:
            dst.write(src.read())
            dst.write_mask(keep)
    predict_segmenter(random_segmenter, [str(masked)], tmp_path / "maps", device="cpu")
    with rasterio.open(tmp_path / "maps" / "masked.tif") as written:
        assert np.array_equal(written.read(1) == 255, keep == 0)


@pytest.mark.parametrize("content", [b"{}", b"not a model at all"])
def test_a_damaged_model_file_is_named_in_one_line(tmp_path, content):
    model = tmp_path / "segmenter.safetensors"
    model.write_bytes(content)
    result = run_cli("predict", "segment", "--checkpoint", str(model), "--images",
                     str(scene_folder(tmp_path / "scenes", good=1, broken=0)), "--output", str(tmp_path / "maps"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cspt: error: {model}: not a readable safetensors file (")
