"""Scenes of any size: training crops read only their window of a raster, masks are checked and scored strip by
strip, vector labels are burnt strip by strip, and an epoch may be a fixed number of windows drawn by area."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.features import rasterize

import cspt.data.masks as masks
import cspt.data.vector_labels as vector_labels
from cspt.data.masks import Palette
from cspt.data.pixels import PixelContract
from cspt.data.segmentation import Pair, SegmentationCrops, check_pairs, pair_images
from cspt.data.vector_labels import VectorLabels, rasterize_labels
from cspt.errors import CsptError
from tests.conftest import TEST_CRS, TEST_ORIGIN, write_geotiff

PALETTE = Palette(["a", "b", "c"])


def raster_pair(folder: Path, height: int = 300, width: int = 400) -> tuple[Pair, np.ndarray]:
    """A GeoTIFF scene and a GeoTIFF index mask on its grid (classes in diagonal bands)."""
    ys, xs = np.mgrid[0:height, 0:width]
    labels = ((xs + ys) // 37 % 3).astype(np.uint8)
    write_geotiff(folder / "images" / "s.tif", (labels[None].repeat(3, 0) * 80).astype(np.uint8))
    write_geotiff(folder / "masks" / "s.tif", labels[None])
    [pair], _ = check_pairs(pair_images([folder / "images"], None), PALETTE, 255)
    return pair, labels


def test_training_crops_of_a_raster_read_only_their_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pair, labels = raster_pair(tmp_path)
    reads: list[tuple] = []
    original = PixelContract.read

    def recording(contract, path, window=None):
        reads.append(window)
        return original(contract, path, window)

    monkeypatch.setattr(PixelContract, "read", recording)
    crops = SegmentationCrops([pair], PALETTE, 32, PixelContract((0.0,) * 3, (1.0,) * 3), scale_range=(0.5, 2.0),
                              photometric=False)
    for seed in range(100):
        sample = crops[(seed % len(crops), seed)]
        shown = (sample["image"][0] * 255 / 80).round().long()
        inside = sample["mask"] != 255
        assert (shown[inside] == sample["mask"][inside]).float().mean() > 0.9, seed  # labels follow the pixels
    assert len(reads) == 100 and all(w is not None and w[2] <= 66 and w[3] <= 66 for w in reads)  # 32 px at 0.5
    assert not crops.cache  # nothing decoded whole


def test_raster_masks_are_checked_and_burnt_strip_by_strip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pair, labels = raster_pair(tmp_path)
    whole = check_pairs([(pair.image, pair.mask)], PALETTE, 255)[1]
    monkeypatch.setattr(masks, "MASK_STRIP_PIXELS", 7 * 400 + 5)  # strips of 7 rows
    strips = list(masks.mask_strips(pair.mask, PALETTE, 255, pair.image, 300, 400))
    assert len(strips) == 43 and np.array_equal(np.concatenate(strips), labels)
    assert np.array_equal(check_pairs([(pair.image, pair.mask)], PALETTE, 255)[1], whole)
    assert whole.tolist() == np.bincount(labels.ravel(), minlength=3).tolist()
    Image.fromarray(labels[:200]).save(tmp_path / "small.tif")  # a plain TIFF: nothing to align it by
    with pytest.raises(CsptError, match=r"small.tif: mask is 400x200 but its image s.tif is 400x300"):
        check_pairs([(pair.image, tmp_path / "small.tif")], PALETTE, 255)

    x0, y0 = TEST_ORIGIN[0] + 20.2, TEST_ORIGIN[1] - 30.7
    square = {"type": "Polygon", "coordinates": [[(x0, y0), (x0 + 61, y0), (x0 + 61, y0 - 97), (x0, y0 - 97),
                                                  (x0, y0)]]}
    polygons = VectorLabels(tmp_path / "l.gpkg", "class", [(square, "b")], rasterio.crs.CRS.from_string(TEST_CRS)
                            .to_wkt())
    monkeypatch.setattr(vector_labels, "LABEL_STRIP_PIXELS", 11 * 400)
    burnt = rasterize_labels(pair.image, polygons, ["a", "b"], tmp_path / "burnt.tif", background="a")
    with rasterio.open(burnt) as out, rasterio.open(pair.image) as scene:
        assert out.transform == scene.transform and out.crs == scene.crs
        expected = rasterize([(square, 1)], out_shape=(300, 400), transform=scene.transform, fill=0, dtype="uint8")
        assert np.array_equal(out.read(1), expected) and expected.any()


def test_an_epoch_may_be_a_fixed_number_of_windows_drawn_by_area(tmp_path: Path):
    pair, _ = raster_pair(tmp_path)
    left, right = Pair(pair.image, pair.mask, 300, 100), Pair(pair.image, pair.mask, 300, 300, 0, 100)
    crops = SegmentationCrops([left, right], PALETTE, 32, PixelContract((0.0,) * 3, (1.0,) * 3),
                              windows_per_epoch=40)
    drawn: list[int] = []
    original = crops.crop
    crops.crop = lambda index, generator: drawn.append(index) or original(index, generator)  # type: ignore
    assert len(crops) == 40
    for seed in range(400):
        crops[(seed % 40, seed)]
    assert 0.2 < drawn.count(0) / len(drawn) < 0.3  # a quarter of the area, a quarter of the crops
    again = drawn[:50]
    drawn.clear()
    for seed in range(50):
        crops[(0, seed)]
    assert drawn == again  # the region comes from the sample's seed, not its index: a resumed run draws the same


def test_an_unreadable_mask_raster_is_named_in_one_line(tmp_path: Path):
    """Beside a picture (no grid to align it to) or a GeoTIFF (whose grid it would be read on)."""
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.tif").write_text("not a raster")
    for image in (tmp_path / "pictures" / "a.png", tmp_path / "scenes" / "a.tif"):
        image.parent.mkdir()
        if image.suffix == ".png":
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
        else:
            write_geotiff(image, np.zeros((3, 8, 8), np.uint8))
        with pytest.raises(CsptError, match=r"masks/a.tif: (unreadable|cannot open the) mask") as caught:
            check_pairs([(image, tmp_path / "masks" / "a.tif")], PALETTE, 255)
        assert "\n" not in str(caught.value)
