"""Hold-outs in space: random windows share pixels across the split, blocks keep a buffer between training and
validation; training crops and validation scores stay inside their regions; a run resumes its windows exactly;
a label raster in another CRS and resolution is read on its image's grid."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.features import rasterize
from rasterio.warp import transform_bounds, transform_geom

from cspt.config import SegmentConfig
from cspt.data.masks import Palette
from cspt.data.pixels import PixelContract
from cspt.data.segmentation import Pair, SegmentationCrops, check_pairs, pair_images
from cspt.data.spatial_split import split_regions
from cspt.errors import CsptError
from cspt.tasks.segment import finetune_segment, make_split
from tests.conftest import TEST_CRS, TEST_ORIGIN, TINY_ENCODER_FLAGS, run_cli, write_geotiff

SIZE = 240  #: scene side in pixels (0.5 m: 120 m)
RESOLUTION = 0.5
PALETTE = Palette(["a", "b", "c"])
TINY = ["--crop-size", "32", "--channels", "16", "--aux-channels", "0", "--num-workers", "0", "--device", "cpu",
        "--batch-size", "2", "--warmup-epochs", "0", "--log-every", "1", *TINY_ENCODER_FLAGS]


def scene(folder: Path, name: str = "scene.tif", size: int = SIZE) -> list[Pair]:
    """A textured GeoTIFF at :data:`TEST_ORIGIN` and its index mask (classes in 10 m squares), checked."""
    ys, xs = np.mgrid[0:size, 0:size]
    labels = ((xs // 20 + ys // 20) % 3).astype(np.uint8)
    rng = np.random.default_rng(0)
    pixels = (labels[None] * 70 + rng.integers(0, 40, (3, size, size))).astype(np.uint8)
    write_geotiff(folder / "images" / name, pixels)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels).save(folder / "masks" / f"{Path(name).stem}.png")
    return check_pairs(pair_images([folder / "images"], None), PALETTE, 255)[0]


def map_bounds(region: Pair) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of a region of a scene at :data:`TEST_ORIGIN`."""
    x0 = TEST_ORIGIN[0] + RESOLUTION * region.left
    y1 = TEST_ORIGIN[1] - RESOLUTION * region.top
    return x0, y1 - RESOLUTION * region.height, x0 + RESOLUTION * region.width, y1


def gap(a: Pair, b: Pair) -> float:
    """How far apart two regions lie (the larger of the gaps along x and y; 0 when they share pixels)."""
    ax0, ay0, ax1, ay1 = map_bounds(a)
    bx0, by0, bx1, by1 = map_bounds(b)
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1, 0.0)


def coverage(regions: list[Pair]) -> np.ndarray:
    """How many regions hold each pixel of the scene."""
    count = np.zeros((SIZE, SIZE), int)
    for r in regions:
        count[r.top:r.top + r.height, r.left:r.left + r.width] += 1
    return count


def test_random_windows_share_pixels_across_the_split_and_blocks_keep_the_buffer(tmp_path: Path):
    pairs = scene(tmp_path)
    randomly = split_regions(pairs, "random", 0.25, 0, 32, 21)
    assert any(gap(t, v) == 0 and coverage([t])[v.top:v.top + v.height, v.left:v.left + v.width].any()
               for t in randomly["train"] for v in randomly["val"])  # a pixel trains and validates
    for seed in range(12):
        for size, buffer in ((32.0, 0.0), (32.0, 4.0), (20.0, 3.0), (45.25, 10.0)):
            blocks = split_regions(pairs, "blocks", 0.25, seed, 32, 21, size, buffer, test_fraction=0.2 * (seed % 2))
            train, val, test = blocks["train"], blocks["val"], blocks.get("test", [])
            assert train and val and bool(test) == bool(seed % 2)
            for one, other in ((train, val), (train, test), (val, test)):  # every pair of splits kept apart
                assert min((gap(a, b) for a in one for b in other), default=buffer) >= buffer, (seed, size, buffer)
            count = coverage(train + val + test)
            assert count.max() == 1  # no pixel in two regions
            if buffer == 0:  # block edges on pixel edges: every pixel trains or validates
                assert count.min() == 1
            blocks_over = {(int((x0 - 1e-9) // size), int((y0 - 1e-9) // size))
                           for x0, y0, _, _ in map(map_bounds, val)}
            assert len(blocks_over) <= len(val)  # a region lies in one block


def test_blocks_are_shared_by_scenes_on_one_map_and_own_to_each_picture(tmp_path: Path):
    """Two scenes in one CRS that overlap give their common blocks one split; pictures without a map position
    each get blocks of their own (in pixels)."""
    first = scene(tmp_path / "one")
    second = scene(tmp_path / "two")  # the same place, another file
    split = split_regions(first + second, "blocks", 0.3, 1, 32, 21, 32.0)
    by_scene = {name: {r.box for r in split[name] if r.image == second[0].image} for name in split}
    assert by_scene == {name: {r.box for r in split[name] if r.image == first[0].image} for name in split}
    pictures = []
    for folder in ("p1", "p2"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(tmp_path / folder / "a.png")
        pictures.append(Pair(tmp_path / folder / "a.png", tmp_path / folder / "a.png", 64, 96))
    split = split_regions(pictures, "blocks", 0.5, 0, 32, 21, 32.0)
    assert sum(len(v) for v in split.values()) == 2 * 2 * 3  # 2 x 3 blocks of 32 px each


def test_training_crops_read_only_their_region(tmp_path: Path):
    """Every crop of a region (200 seeds, scale jitter, flips and turns) holds pixels of that region only: the
    scene is dark outside it."""
    pixels = np.full((3, SIZE, SIZE), 20, np.uint8)
    region = Pair(tmp_path / "s.tif", tmp_path / "m.png", 50, 70, 100, 30)
    pixels[:, 100:150, 30:100] = 230
    write_geotiff(region.image, pixels)
    Image.fromarray(np.ones((SIZE, SIZE), np.uint8)).save(region.mask)
    crops = SegmentationCrops([region], PALETTE, 32, PixelContract((0.0,) * 3, (1.0,) * 3), photometric=False)
    for seed in range(200):
        sample = crops[(0, seed)]
        shown = sample["image"][:, sample["valid"]]
        assert shown.numel() and torch.allclose(shown, torch.tensor(230 / 255)), seed
        assert (sample["mask"][sample["valid"]] == 1).all() and (sample["mask"][~sample["valid"]] == 255).all()


def test_a_blocks_run_scores_its_validation_regions_only_and_draws_them(tmp_path: Path):
    pairs = scene(tmp_path)
    run = tmp_path / "run"
    result = run_cli("finetune", "segment", "--images", str(pairs[0].image.parent), "--class-names", "a", "b", "c",
                     "--val-fraction", "0.25", "--test-fraction", "0.2", "--split", "blocks", "--block-size", "32",
                     "--split-buffer", "4", "--output", str(run), "--epochs", "1", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = run_cli("evaluate", "segment", "--checkpoint", str(run), "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    with open(run / "splits" / "test.csv") as handle:
        tested = sum(int(r["height"]) * int(r["width"]) for r in csv.DictReader(handle))
    on_test = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    assert np.array(on_test["confusion"]).sum() + on_test["invalid_pixels"] == tested > 0  # the test regions
    assert on_test["split"] == "test"
    with pytest.raises(CsptError, match="a test split from it would score what was trained on"):
        split_regions(pairs, "random", 0.2, 0, 32, 21, test_fraction=0.1)
    with open(run / "splits" / "val.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(int(r["height"]) * int(r["width"]) < SIZE * SIZE for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    scored = np.array(metrics["confusion"]).sum() + metrics["invalid_pixels"]
    assert scored == sum(int(r["height"]) * int(r["width"]) for r in rows)
    assert (run / "splits" / "map.png").is_file() and (run / "examples" / "scene_overlay.jpg").is_file()
    with rasterio.open(run / "examples" / "scene.tif") as drawn:  # the example: the first validation region
        first = rows[0]
        assert (drawn.height, drawn.width) == (int(first["height"]), int(first["width"]))
        assert drawn.transform.c == pytest.approx(TEST_ORIGIN[0] + RESOLUTION * int(first["left"]))
    assert run_cli("report", str(run)).returncode == 0
    assert "where the training and validation regions lie" in (run / "report.md").read_text()


def test_split_errors_are_one_line(tmp_path: Path):
    pairs = scene(tmp_path)
    config = SegmentConfig(images=[str(pairs[0].image.parent)], class_names=["a", "b", "c"], crop_size=32,
                           stride=21, val_fraction=0.25)
    for changes, message in (({"split": "blocks", "block_size": 1000.0}, "lie in a single block"),
                             ({"split": "blocks", "block_size": 8.0, "split_buffer": 9.0}, "larger than the buffer"),
                             ({"split": "by-file"}, "for one scene use --split blocks"),
                             ({"split": "blocks", "val_fraction": 0.0}, "give one")):
        with pytest.raises(CsptError, match=message) as caught:
            make_split(SegmentConfig(**{**config.__dict__, **changes}), Palette(["a", "b", "c"]), tmp_path / "z")
        assert "\n" not in str(caught.value)
    rotated = tmp_path / "rotated.tif"
    with rasterio.open(rotated, "w", driver="GTiff", height=64, width=64, count=1, dtype="uint8", crs=TEST_CRS,
                       transform=Affine.translation(*TEST_ORIGIN) @ Affine.rotation(10) @ Affine.scale(0.5, -0.5)) as d:
        d.write(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(CsptError, match="rotated.tif: its pixel grid is rotated"):
        split_regions([Pair(rotated, rotated, 64, 64)] * 2, "blocks", 0.5, 0, 32, 21, 8.0)


def test_a_polygon_split_trains_and_validates_on_its_own_polygons_only(tmp_path: Path):
    """Polygons in degrees over a UTM scene: training crops (100 seeds) never show a pixel of the validation
    polygon, whose pixels are bright, and validation scores exactly the pixels of its polygon."""
    import fiona

    pairs = scene(tmp_path)
    x0, y0 = TEST_ORIGIN
    def ring(a: float, b: float, c: float, d: float) -> list[tuple[float, float]]:
        return [(a, b), (c, b), (c, d), (a, d), (a, b)]

    # training: a frame around a hole; validation: inside the hole, 5 m from the frame (its box holds it whole)
    regions = {"train": [ring(x0 + 5, y0 - 115, x0 + 115, y0 - 5), ring(x0 + 65, y0 - 105, x0 + 112, y0 - 25)],
               "val": [ring(x0 + 70, y0 - 100, x0 + 107, y0 - 30)]}
    polygons = tmp_path / "regions.geojson"
    with fiona.open(polygons, "w", driver="GeoJSON", crs="EPSG:4326",
                    schema={"geometry": "Polygon", "properties": {"split": "str"}}) as sink:
        for name, rings in regions.items():
            sink.write({"geometry": transform_geom(TEST_CRS, "EPSG:4326", {"type": "Polygon", "coordinates": rings}),
                        "properties": {"split": name}})
    with rasterio.open(pairs[0].image, "r+") as dst:  # the validation polygon's pixels: bright
        pixels = dst.read()
        val_zone = rasterize([(transform_geom("EPSG:4326", TEST_CRS, f.geometry.__geo_interface__), 1)
                              for f in fiona.open(polygons) if f.properties["split"] == "val"],
                             out_shape=(SIZE, SIZE), transform=dst.transform, dtype="uint8").astype(bool)
        pixels[:, val_zone] = 255
        dst.write(pixels)
    config = SegmentConfig(images=[str(pairs[0].image.parent)], class_names=["a", "b", "c"], crop_size=32, stride=21,
                           split="polygons", split_polygons=str(polygons))
    split = make_split(config, PALETTE, tmp_path / "zones")
    assert [len(split["train"]), len(split["val"])] == [1, 1]
    val = split["val"][0]
    assert int(val.inside().sum()) == int(val_zone.sum()) > 1000
    crops = SegmentationCrops(split["train"], PALETTE, 32, PixelContract((0.0,) * 3, (1.0,) * 3), photometric=False)
    for seed in range(100):
        sample = crops[(seed % len(crops), seed)]
        assert (sample["image"][:, sample["valid"]] < 0.99).all(), seed
    run = tmp_path / "run"
    result = run_cli("finetune", "segment", "--images", str(pairs[0].image.parent), "--class-names", "a", "b", "c",
                     "--split", "polygons", "--split-polygons", str(polygons), "--output", str(run), "--epochs", "1",
                     *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.array(metrics["confusion"]).sum() + metrics["invalid_pixels"] == int(val_zone.sum())
    with fiona.open(tmp_path / "odd.geojson", "w", driver="GeoJSON", crs="EPSG:4326",
                    schema={"geometry": "Polygon", "properties": {"split": "str"}}) as sink:
        sink.write({"geometry": {"type": "Polygon", "coordinates": [[(0, 0), (1, 0), (1, 1), (0, 0)]]},
                    "properties": {"split": "holdout"}})
    with pytest.raises(CsptError, match="odd.geojson: split values must be train, val or test, found holdout"):
        make_split(SegmentConfig(**{**config.__dict__, "split_polygons": str(tmp_path / "odd.geojson")}), PALETTE,
                   tmp_path / "zones")


@pytest.mark.slow
def test_a_blocks_run_resumes_in_the_middle_of_an_epoch_with_the_same_windows(tmp_path: Path,
                                                                              caplog: pytest.LogCaptureFixture):
    pairs = scene(tmp_path)
    recipe = dict(images=[str(pairs[0].image.parent)], class_names=["a", "b", "c"], crop_size=32, val_fraction=0.25,
                  split="blocks", block_size=32.0, split_buffer=4.0, epochs=2, batch_size=4, channels=16,
                  aux_channels=0, num_workers=0, device="cpu", warmup_epochs=0.5, checkpoint_every=3,
                  keep_checkpoints=100, seed=3,
                  embed_dim=64, depth=2, num_heads=2, patch_size=8, eval_every=2)
    reference = finetune_segment(SegmentConfig(output=str(tmp_path / "reference"), **recipe))
    want = torch.load(reference / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    per_epoch = want["step"] // 2
    steps = [int(p.stem[5:]) for p in (reference / "checkpoints").glob("step_*.pt")]
    middle = max(s for s in steps if per_epoch < s < want["step"] and s % per_epoch)  # inside the second epoch
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    for path in (resumed / "checkpoints").glob("*.pt"):
        if path.stem == "last" or int(path.stem[5:]) > middle:
            path.unlink()
    (resumed / "metrics.json").unlink()
    with caplog.at_level("INFO", logger="cspt"):
        finetune_segment(SegmentConfig(output=str(resumed), **recipe))
    assert f"(epoch 1, step {middle})" in caplog.text  # resumed inside the second epoch, not started over
    got = torch.load(resumed / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert want["step"] == got["step"] > middle
    for name, value in want["model"].items():
        assert torch.equal(value, got["model"][name]), name
    assert json.loads((resumed / "metrics.json").read_text())["confusion"] == json.loads(
        (reference / "metrics.json").read_text())["confusion"]


def label_raster_in_wgs84(image: Path, polygons: list[dict], crs: str, target: Path, resolution: float,
                          cover: float = 1.0) -> Path:
    """The polygons (in ``crs``) burnt into a GeoTIFF on a EPSG:4326 grid of ``resolution`` degrees covering the
    western ``cover`` share of ``image`` (class 1 inside, 0 outside)."""
    with rasterio.open(image) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    east = west + cover * (east - west)
    width, height = round((east - west) / resolution), round((north - south) / resolution)
    transform = Affine(resolution, 0, west, 0, -resolution, north)
    shapes = [(transform_geom(crs, "EPSG:4326", p), 1) for p in polygons]
    burnt = rasterize(shapes, out_shape=(height, width), transform=transform, fill=0, dtype="uint8")
    with rasterio.open(target, "w", driver="GTiff", height=height, width=width, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=transform) as dst:
        dst.write(burnt[None])
    return target


def pixel_of(image: Path, x: float, y: float) -> tuple[int, int]:
    with rasterio.open(image) as src:
        return src.index(x, y)


def test_a_label_raster_in_another_crs_and_resolution_is_read_on_the_image_grid(tmp_path: Path):
    image = write_geotiff(tmp_path / "images" / "a.tif", np.zeros((3, SIZE, SIZE), np.uint8))
    x0, y0 = TEST_ORIGIN[0] + 30, TEST_ORIGIN[1] - 40  # a 20 m square, 30 m east and 40 m south of the corner
    square = {"type": "Polygon", "coordinates": [[(x0, y0), (x0 + 20, y0), (x0 + 20, y0 - 20), (x0, y0 - 20),
                                                  (x0, y0)]]}
    (tmp_path / "masks").mkdir()
    label_raster_in_wgs84(image, [square], TEST_CRS, tmp_path / "masks" / "a.tif", 3e-6, cover=0.8)
    [pair], counts = check_pairs(pair_images([tmp_path / "images"], None), Palette(["ground", "building"]), 255)
    labels = pair.labels(Palette(["ground", "building"]), 255)
    assert labels.shape == (SIZE, SIZE) and counts[1] > 0
    assert labels[pixel_of(image, x0 + 10, y0 - 10)] == 1  # the square's centre
    assert labels[pixel_of(image, x0 + 18, y0 - 2)] == 1 and labels[pixel_of(image, x0 + 22, y0 - 2)] == 0
    assert labels[pixel_of(image, TEST_ORIGIN[0] + 115, y0)] == 255  # east of what the label raster covers
    inside = labels[pixel_of(image, x0, y0)[0] + 4:pixel_of(image, x0, y0 - 20)[0] - 4,
                    pixel_of(image, x0, y0)[1] + 4:pixel_of(image, x0 + 20, y0)[1] - 4]
    assert (inside == 1).all()  # away from the edges, every pixel of the square
    window = Pair(pair.image, pair.mask, 50, 60, 70, 40)
    assert np.array_equal(window.labels(Palette(["ground", "building"]), 255), labels[70:120, 40:100])


@pytest.mark.slow
def test_spacenet_footprints_in_wgs84_train_on_the_scene_grid(solaris: Path, tmp_path: Path):
    """The SpaceNet scene (EPSG:32616, 0.5 m) and its building footprints burnt into a EPSG:4326 raster of about
    1 m: on the scene's grid, the inside of each footprint (rasterised straight onto that grid, 1.5 m from its
    outline) is a building, and a segmenter trains on the pair."""
    import fiona

    (tmp_path / "images").mkdir()
    image = tmp_path / "images" / "spacenet.tif"
    shutil.copy(solaris / "sample_geotiff.tif", image)
    with fiona.open(solaris / "geotiff_labels.geojson") as layer:
        crs = layer.crs_wkt
        polygons = [dict(f.geometry.__geo_interface__) for f in layer if f.geometry is not None]
    (tmp_path / "masks").mkdir()
    label_raster_in_wgs84(image, polygons, crs, tmp_path / "masks" / "spacenet.tif", 1e-5)
    palette = Palette(["ground", "building"])
    [pair], counts = check_pairs(pair_images([tmp_path / "images"], None), palette, 255)
    labels = pair.labels(palette, 255)
    with rasterio.open(image) as src:
        grid = src.transform, src.shape
    checked = 0
    for polygon in polygons:
        footprint = rasterize([(transform_geom(crs, "EPSG:32616", polygon), 1)], out_shape=grid[1],
                              transform=grid[0], fill=0, dtype="uint8").astype(bool)
        inside = interior(footprint, 3)
        if inside.sum() >= 20:
            assert (labels[inside] == 1).all()
            checked += 1
    assert checked > 10 and counts[1] > 0
    run = tmp_path / "run"
    result = run_cli("finetune", "segment", "--images", str(tmp_path / "images"), "--class-names", "ground",
                     "building", "--val-fraction", "0.25", "--split", "blocks", "--block-size", "100",
                     "--output", str(run), "--epochs", "1", "--resize", "0.5", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["per_class"]


def interior(mask: np.ndarray, radius: int) -> np.ndarray:
    """The pixels of ``mask`` whose every neighbour within ``radius`` pixels (a square) is in it too."""
    padded = np.pad(mask, radius)
    out = np.ones_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def test_blocks_hold_one_crs_however_it_is_written_and_refuse_overlaps_across_crss(tmp_path: Path):
    """One place in EPSG:32640 and in its PROJ spelling shares blocks; scenes overlapping in neighbouring UTM zones
    are refused; a block layout that leaves a split empty is refused rather than validating on nothing."""
    pixels = np.zeros((3, 200, 200), np.uint8)
    first = write_geotiff(tmp_path / "a" / "s.tif", pixels)
    second = write_geotiff(tmp_path / "b" / "s.tif", pixels, crs="+proj=utm +zone=40 +ellps=WGS84 +units=m +no_defs")
    pairs = [Pair(first, first, 200, 200), Pair(second, second, 200, 200)]
    split = split_regions(pairs, "blocks", 0.5, 0, 32, 21, 25.0, 4.0)
    for name in split:
        assert {r.box for r in split[name] if r.image == first} == {r.box for r in split[name] if r.image == second}
    east = write_geotiff(tmp_path / "c" / "s.tif", pixels, crs="EPSG:32641")  # zone 41, near zone 40's scene?
    with rasterio.open(first) as src:
        west, south, eastmost, north = transform_bounds(src.crs, "EPSG:32641", *src.bounds)
    with rasterio.open(east, "r+") as dst:  # put it over the first scene's ground
        dst.transform = Affine(0.5, 0, west, 0, -0.5, north)
    with pytest.raises(CsptError, match="overlap in different CRSs"):
        split_regions([pairs[0], Pair(east, east, 200, 200)], "blocks", 0.5, 0, 32, 21, 25.0)
    small = write_geotiff(tmp_path / "d" / "s.tif", np.zeros((3, 143, 143), np.uint8), resolution=0.7)
    outcomes = set()
    for seed in range(8):  # 100 m blocks over a 100.1 m scene: a sliver of a block, or a split left empty
        try:
            found = split_regions([Pair(small, small, 143, 143)], "blocks", 0.5, seed, 32, 21, 100.0, 10.0)
            assert found["train"] and found["val"]
            outcomes.add("split")
        except CsptError as err:
            assert "no train pixel" in str(err) or "no val pixel" in str(err) or "single block" in str(err)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_mask_s_own_nodata_and_alpha_are_unlabelled_on_any_grid(tmp_path: Path):
    image = write_geotiff(tmp_path / "images" / "a.tif", np.zeros((3, 64, 64), np.uint8))
    labels = np.tile(np.array([0, 1, 2, 3], np.uint8), (64, 16))  # 3: the mask's nodata
    write_geotiff(tmp_path / "masks" / "a.tif", labels[None], nodata=3)
    palette = Palette(["a", "b", "c"])
    [pair], _ = check_pairs(pair_images([tmp_path / "images"], None), palette, 255)
    same = pair.labels(palette, 255)
    assert (same[labels == 3] == 255).all() and np.array_equal(same[labels != 3], labels[labels != 3])
    finer = tmp_path / "finer.tif"  # the same labels on a grid of half the pixel size
    with rasterio.open(finer, "w", driver="GTiff", height=128, width=128, count=1, dtype="uint8", crs=TEST_CRS,
                       transform=Affine(0.25, 0, *TEST_ORIGIN[:1], 0, -0.25, TEST_ORIGIN[1]), nodata=3) as dst:
        dst.write(labels.repeat(2, 0).repeat(2, 1)[None])
    assert np.array_equal(Pair(image, finer, 64, 64).labels(palette, 255), same)  # warped: the same meaning
    alpha = tmp_path / "alpha.tif"
    with rasterio.open(alpha, "w", driver="GTiff", height=64, width=64, count=2, dtype="uint8", alpha="YES") as dst:
        dst.write(np.stack([np.ones((64, 64), np.uint8), np.where(labels == 3, 0, 255).astype(np.uint8)]))
    assert (Pair(image, alpha, 64, 64).labels(palette, 255) == np.where(labels == 3, 255, 1)).all()
    grey = tmp_path / "grey.tif"  # a grey TIFF of a two-colour palette
    Image.fromarray(np.where(labels % 2 == 0, 0, 255).astype(np.uint8)).save(grey)
    two = Palette(["dark", "bright"], [(0, 0, 0), (255, 255, 255)])
    assert np.array_equal(Pair(image, grey, 64, 64).labels(two, 255), labels % 2)


def test_options_a_split_would_not_use_are_refused(tmp_path: Path):
    pairs = scene(tmp_path)
    config = SegmentConfig(images=[str(pairs[0].image.parent)], class_names=["a", "b", "c"], crop_size=32, stride=21,
                           val_fraction=0.25)
    for changes, flags in (({"split": "random", "split_buffer": 4.0}, "--split-buffer"),
                           ({"split": "polygons", "split_polygons": "x.gpkg"}, "--val-fraction"),
                           ({"split": "by-file", "block_size": 10.0}, "--block-size")):
        with pytest.raises(CsptError, match=f"does not use {flags}"):
            make_split(SegmentConfig(**{**config.__dict__, **changes}), PALETTE, tmp_path / "z")
