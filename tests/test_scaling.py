"""Pixel scaling: data of more than 8 bits reach the model on the scale its mean/std expect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image

from cspt.data.files import find_images
from cspt.data.images import image_info
from cspt.data.pixels import PixelContract, read_unit
from cspt.data.scaling import measure_scaling, resolve_scaling, sampled_pixels
from cspt.data.unlabelled import UnlabelledImages, scan_images
from cspt.tasks.common import checkpoint_contract
from cspt.weights.load import Checkpoint
from tests.conftest import SHARED, TINY_FLAGS, eleven_bit_scene, needs, run_cli, write_geotiff

DUBAI_IMAGE = SHARED / "data" / "dubai" / "tile_1" / "images" / "image_part_001.jpg"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
RGB = PixelContract(tuple(IMAGENET[0]), tuple(IMAGENET[1]))


def read_image(path, window=None):
    return read_unit(path, window)[0]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return eleven_bit_scene(needs(DUBAI_IMAGE), tmp_path / "scene.tif")


def normalised_samples(config: dict, data: Path, count: int = 9) -> torch.Tensor:
    """What the pretraining loader feeds the model, under a run's saved config."""
    scan = scan_images(find_images([str(data)]), config["tile_size"])
    scaled = config["scale_low"] is not None
    contract = PixelContract(tuple(config["mean"]), tuple(config["std"]),
                             low=tuple(config["scale_low"]) if scaled else None,
                             high=tuple(config["scale_high"]) if scaled else None)
    dataset = UnlabelledImages(scan.entries, contract, config["img_size"], config["patch_size"], config["tile_size"])
    return torch.stack([dataset[(i, i)]["image"] for i in range(count)])


@pytest.mark.slow
def test_an_11_bit_scene_is_pretrained_on_its_own_range_not_the_dtype_maximum(scene, natural_mae, tmp_path):
    assert image_info(scene).dtype == "uint16" and read_image(scene).max() < 2048 / 65535
    out = tmp_path / "run"
    result = run_cli("pretrain", "--init", str(natural_mae), "--data", str(scene), "--output", str(out),
                     "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--vis-every", "1")
    assert result.returncode == 0, result.stderr
    assert "scaling: stats of 1 image(s): band 1" in result.stderr
    assert "normalisation does not fit" not in result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    low, high = np.array(config["scale_low"]), np.array(config["scale_high"])
    assert np.all(high * 65535 < 2 * 2048) and np.all(low < high)  # the data's range, not the dtype's
    # the exported encoder records the scaling for every later stage
    encoder = json.loads((out / "encoder.json").read_text())
    assert encoder["pixels"]["low"] == config["scale_low"] and encoder["pixels"]["mean"] == IMAGENET[0]

    images = normalised_samples(config, scene)
    per_band_mean, per_band_std = images.mean((0, 2, 3)), images.std((0, 2, 3))
    assert per_band_mean.abs().max() < 1, per_band_mean
    assert per_band_std.min() > 0.3 and per_band_std.max() < 3, per_band_std
    # the dtype scale is what made these images black: the same check fails there
    dark = normalised_samples({**config, "scale_low": None, "scale_high": None}, scene)
    assert dark.mean((0, 2, 3)).abs().min() > 1.5

    # the reconstruction grid's first column (the input) shows the scene, not a black square
    grid = np.asarray(Image.open(out / "reconstructions" / "epoch_0001.png").convert("L")).astype(float)
    original = grid[:, : config["img_size"]]
    assert original.mean() > 60 and original.std() > 15, (original.mean(), original.std())


def test_later_stages_reuse_the_recorded_scaling_and_dtype_is_the_old_behaviour(scene, natural_mae, tmp_path):
    files = [scene]
    measured = measure_scaling(files, "percentile", RGB)
    recorded = RGB.replace(low=tuple(measured.low), high=tuple(measured.high), scaling="recorded")
    assert resolve_scaling("auto", RGB, lambda: files, recorded=recorded).low == measured.low
    assert resolve_scaling("dtype", RGB, lambda: files) is None
    assert resolve_scaling("auto", RGB, lambda: files, explicit_statistics=True) is None
    # weights trained on 8-bit photos (the dtype scale) meet 11-bit data: the data get their own scaling
    assert resolve_scaling("auto", RGB, lambda: files, recorded=RGB).method.startswith("stats")
    # 8-bit data keep the dtype scale (the natural-image recipes are unchanged)
    assert resolve_scaling("auto", RGB, lambda: [needs(DUBAI_IMAGE)]) is None
    # a scaling file: the JSON of a run's encoder (older releases' keys) or its pixel contract
    out = tmp_path / "encoder.json"
    out.write_text(json.dumps({"scale_low": measured.low, "scale_high": measured.high}))
    assert resolve_scaling(str(out), RGB, lambda: files).low == measured.low
    out.write_text(json.dumps({"pixels": recorded.to_dict()}))
    assert resolve_scaling(str(out), RGB, lambda: files).high == measured.high


def test_stats_scaling_gives_the_data_the_models_mean_and_std(scene):
    scaling = measure_scaling([scene], "stats", RGB)
    pixels, _ = sampled_pixels([scene], RGB)
    contract = RGB.replace(low=tuple(scaling.low), high=tuple(scaling.high))
    normalised = (contract.scale(pixels.astype(np.float32)) - np.array(IMAGENET[0])) / np.array(IMAGENET[1])
    assert np.allclose(normalised.mean(0), 0, atol=1e-4) and np.allclose(normalised.std(0), 1, atol=1e-4)


def test_nodata_pixels_are_left_out_of_the_measurement(tmp_path):
    source = needs(DUBAI_IMAGE)
    plain = eleven_bit_scene(source, tmp_path / "plain.tif")
    framed = eleven_bit_scene(source, tmp_path / "framed.tif", border=120)
    grey = PixelContract((0.5,), (0.25,))
    valid = grey.valid(framed)
    assert not valid[:120].any() and valid[120:-120, 120:-120].all()
    inner = read_image(plain)[120:-120, 120:-120]
    expected = np.percentile(inner, [2, 98])
    measured = measure_scaling([framed], "percentile", grey)
    assert measured.low[0] == pytest.approx(expected[0], abs=2 / 65535)
    assert measured.high[0] == pytest.approx(expected[1], abs=2 / 65535)
    # counting the nodata frame would have pulled the low end to 0
    assert measure_scaling([plain], "percentile", grey).low[0] > 0


@pytest.mark.slow
def test_pretraining_windows_that_are_mostly_nodata_are_drawn_again_and_counted(natural_mae, tmp_path):
    source = needs(DUBAI_IMAGE)
    scene = eleven_bit_scene(source, tmp_path / "scene.tif")
    with rasterio.open(scene, "r+") as dst:  # 70% of the columns become nodata
        pixels = dst.read()
        pixels[:, :, :630] = 0
        dst.write(pixels)
        dst.nodata = 0
    scan = scan_images([scene], 256)
    dataset = UnlabelledImages(scan.entries, PixelContract((0.01,) * 3, (0.01,) * 3), 64, 8, 256)
    redrawn = 0
    for seed in range(40):
        tile, count = dataset.load(scan.entries[0], torch.Generator().manual_seed(seed))
        assert (tile.image[:, ~tile.valid] == 0.01).all()  # nodata pixels are at the band mean
        filled = (~tile.valid).float().mean().item()
        assert filled <= 0.5, (seed, filled)
        redrawn += count
    assert redrawn > 40  # most windows of a 70% nodata scene have to be drawn again
    out = tmp_path / "run"
    result = run_cli("pretrain", "--init", str(natural_mae), "--data", str(scene), "--output", str(out),
                     "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--vis-every", "0")
    assert result.returncode == 0, result.stderr
    assert "scene windows drawn this epoch were mostly nodata and skipped" in result.stderr


@pytest.mark.slow
def test_bands_are_selected_recorded_and_reused(tmp_path):
    rng = np.random.default_rng(0)
    scenes = [write_geotiff(tmp_path / "data" / f"{i}.tif", rng.integers(0, 255, (4, 64, 64), dtype=np.uint8))
              for i in range(4)]
    whole = read_image(scenes[0])
    out = tmp_path / "run"
    result = run_cli("pretrain", "--data", str(tmp_path / "data"), "--bands", "4", "1", "--output", str(out),
                     "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--vis-every", "0",
                     *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["in_chans"] == 2
    recorded = json.loads((out / "encoder.json").read_text())["pixels"]
    assert recorded["bands"] == [4, 1] and json.loads((out / "pixels.json").read_text()) == recorded
    contract = PixelContract.from_dict(recorded)
    assert np.array_equal(contract.read_unit(scenes[0])[0], whole[..., [3, 0]])
    assert image_info(scenes[0]).bands == 4  # a file's header is the file's; the contract selects


def test_tools_feed_a_checkpoint_its_recorded_contract_unless_given_their_own_statistics():
    recorded = PixelContract((0.4,) * 3, (0.2,) * 3, bands=(3, 2, 1), low=(0.01,) * 3, high=(0.03,) * 3)
    checkpoint = Checkpoint(Path("run/encoder.safetensors"), "cspt", {}, described={"pixels": recorded.to_dict()})
    assert checkpoint_contract(checkpoint, 3) == recorded
    given = checkpoint_contract(checkpoint, 3, [0.1] * 3, [0.3] * 3)  # --mean/--std: on the dtype scale
    assert given.mean == (0.1,) * 3 and given.low is None and given.bands == (3, 2, 1)
    # what older releases wrote beside the weights reads as the same contract
    legacy = {"mean": [0.4] * 3, "std": [0.2] * 3, "bands": [3, 2, 1], "scale_low": [0.01] * 3,
              "scale_high": [0.03] * 3}
    old = checkpoint_contract(Checkpoint(Path("old/encoder.safetensors"), "cspt", {}, described=legacy), 3)
    assert (old.mean, old.std, old.bands, old.low, old.high) == (recorded.mean, recorded.std, recorded.bands,
                                                                 recorded.low, recorded.high)
