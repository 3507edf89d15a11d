"""Class maps as a GIS expects them: valid Cloud-Optimised GeoTIFFs, class names in the raster's metadata and a
QGIS style beside it, nodata kept, and nothing left behind by a scene that fails part-way."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rio_cogeo.cogeo import cog_validate

from cspt.data.images import ImageInfo, ImageReadError
from cspt.engine.streaming import Strip
from cspt.tasks.maps import qualitative_colors, write_class_raster
from tests.conftest import TEST_CRS, write_geotiff

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
