"""Aligned stacks: an image in UTM and a DEM in degrees at another resolution become one VRT on the image's grid
(or a target grid), the DEM's values where they belong, its nodata and what it does not reach without data,
and a segmenter trains on the stack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds

from cspt.data.pixels import PixelContract
from cspt.data.stacks import write_stack
from cspt.errors import CsptError
from tests.conftest import TEST_CRS, TEST_ORIGIN, TINY_ENCODER_FLAGS, run_cli, write_geotiff

RESOLUTION = 2e-5  #: the DEM's pixel, in degrees (about 2 m)


def image_and_dem(folder: Path) -> tuple[Path, Path]:
    """A 3-band UTM image (200 x 300 px, 0.5 m) and a DEM in EPSG:4326 over its western two thirds whose value is
    its own column index (nodata -9999 in its top 5 rows)."""
    image = write_geotiff(folder / "image.tif", np.full((3, 200, 300), 100, np.uint8))
    west, south, east, north = transform_bounds(TEST_CRS, "EPSG:4326", TEST_ORIGIN[0], TEST_ORIGIN[1] - 100,
                                                TEST_ORIGIN[0] + 100, TEST_ORIGIN[1])
    width, height = round((east - west) / RESOLUTION), round((north - south) / RESOLUTION)
    dem = np.tile(np.arange(width, dtype=np.float32), (height, 1))
    dem[:5] = -9999
    path = folder / "dem.tif"
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=1, dtype="float32",
                       crs="EPSG:4326", transform=Affine(RESOLUTION, 0, west, 0, -RESOLUTION, north),
                       nodata=-9999) as dst:
        dst.write(dem[None])
    return image, path


def test_a_dem_in_degrees_is_stacked_on_the_image_grid_where_it_belongs(tmp_path: Path):
    image, dem = image_and_dem(tmp_path)
    stack = write_stack([image, dem], tmp_path / "stack.vrt")
    with rasterio.open(stack) as src, rasterio.open(dem) as heights:
        assert (src.count, src.shape, src.crs, src.transform) == (4, (200, 300), rasterio.crs.CRS.from_string(
            TEST_CRS), Affine(0.5, 0, TEST_ORIGIN[0], 0, -0.5, TEST_ORIGIN[1]))
        assert src.descriptions == ("image.tif:1", "image.tif:2", "image.tif:3", "dem.tif:1")
        layers = src.read()
        assert (layers[:3] == 100).all()
        for row, col in ((60, 20), (120, 150), (199, 190)):  # the DEM's value: its column at the pixel's place
            x, y = src.xy(row, col)
            lon, lat = transform_points(TEST_CRS, "EPSG:4326", [x], [y])
            expected = (~heights.transform * (lon[0], lat[0]))[0] - 0.5
            assert abs(layers[3, row, col] - expected) < 0.6, (row, col)
        assert np.isnan(layers[3, :, 210:]).all()  # east of the DEM
        assert np.isnan(layers[3, :8]).all() and not np.isnan(layers[3, 40:, :180]).any()  # its nodata rows: 11 m
    contract = PixelContract((0.5,) * 4, (0.25,) * 4, low=(0.0,) * 4, high=(255.0,) * 4)
    pixels = contract.read(stack)
    assert not pixels.valid[:, 210:].any() and pixels.valid[40:, :180].all()  # no data in any layer: none at all

    rgba = np.full((4, 200, 300), 100, np.uint8)
    rgba[3], rgba[3, :, :50] = 255, 0  # the western 50 columns transparent
    transparent = tmp_path / "rgba.tif"
    with rasterio.open(transparent, "w", driver="GTiff", height=200, width=300, count=4, dtype="uint8", crs=TEST_CRS,
                       transform=Affine(0.5, 0, *TEST_ORIGIN[:1], 0, -0.5, TEST_ORIGIN[1]), photometric="RGB",
                       alpha="YES") as dst:
        dst.write(rgba)
    with rasterio.open(write_stack([transparent], tmp_path / "rgba.vrt")) as src:
        assert src.count == 3 and np.isnan(src.read()[:, :, :50]).all() and (src.read()[:, :, 50:] == 100).all()

    coarser = write_stack([image, dem], tmp_path / "coarser.vrt", resolution=1.0)
    degrees = write_stack([image, dem], tmp_path / "degrees.vrt", crs="EPSG:4326", resampling="nearest")
    with rasterio.open(coarser) as a, rasterio.open(degrees) as b:
        assert a.shape == (100, 150) and a.res == (1.0, 1.0) and b.crs.to_epsg() == 4326


def test_stack_errors_are_one_line_and_a_segmenter_trains_on_a_stack(tmp_path: Path):
    image, dem = image_and_dem(tmp_path / "data")
    bare = tmp_path / "bare.tif"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bare)
    far = write_geotiff(tmp_path / "far.tif", np.zeros((1, 10, 10), np.uint8), crs="EPSG:32601")
    for rasters, output, message in (([image, bare], "s.vrt", "bare.tif: has no CRS"),
                                     ([image, far], "s.vrt", "far.tif: does not overlap the stack's grid"),
                                     ([image, dem], "s.tif", "s.tif: a stack is a VRT file"),
                                     ([bare, image], "s.vrt", "bare.tif: has no CRS")):
        with pytest.raises(CsptError, match=message):
            write_stack(rasters, tmp_path / output)
    result = run_cli("stack", str(image), str(dem), "--output", str(tmp_path / "scenes" / "images" / "s.vrt"))
    assert result.returncode == 0 and "bands: image.tif:1, image.tif:2, image.tif:3, dem.tif:1" in result.stdout
    labels = (np.arange(300)[None, :].repeat(200, 0) // 100).astype(np.uint8)
    (tmp_path / "scenes" / "masks").mkdir()
    Image.fromarray(labels).save(tmp_path / "scenes" / "masks" / "s.png")
    run = tmp_path / "run"
    trained = run_cli("finetune", "segment", "--images", str(tmp_path / "scenes"), "--class-names", "a", "b", "c",
                      "--crop-size", "32", "--channels", "16", "--aux-channels", "0", "--epochs", "1",
                      "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--output", str(run),
                      "--in-chans", "4", "--mean", *["0.5"] * 4, "--std", *["0.25"] * 4, *TINY_ENCODER_FLAGS)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run / "segmenter.json").read_text())["architecture"]["in_chans"] == 4


def test_a_stack_made_with_relative_paths_reads_its_own_rasters_from_anywhere_and_keeps_each_band_s_nodata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    image, dem = image_and_dem(tmp_path / "scene")
    two = np.full((2, 200, 300), 7, np.uint16)
    two[1, 50:55, 60:65] = 0  # no data in the second band only
    write_geotiff(tmp_path / "scene" / "two.tif", two, nodata=0)
    monkeypatch.chdir(tmp_path / "scene")
    write_stack(["image.tif", "two.tif"], Path("..") / "stacks" / "s.vrt")
    other = tmp_path / "elsewhere"
    write_geotiff(other / "image.tif", np.zeros((3, 200, 300), np.uint8))  # a namesake where it is read from
    monkeypatch.chdir(other)
    with rasterio.open(tmp_path / "stacks" / "s.vrt") as src:
        layers = src.read()
    assert (layers[:3] == 100).all()  # the image it was made of, not the namesake
    assert np.isnan(layers[4, 50:55, 60:65]).all() and np.isnan(layers[4]).sum() == 25 and (layers[3] == 7).all()
