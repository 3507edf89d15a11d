"""Every stage feeds an encoder the statistics it was pretrained with, unless told otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from cspt.config import ClassifyConfig, DetectConfig, PretrainConfig, ProbeConfig, SegmentConfig
from cspt.data.normalisation import resolve_normalisation
from cspt.errors import CsptError
from cspt.tasks.classify import finetune_classify
from cspt.tasks.detect import finetune_detect
from cspt.tasks.pretrain import pretrain
from cspt.tasks.probe import frozen_encoder
from cspt.tasks.segment import finetune_segment
from cspt.weights.load import load_checkpoint
from tests.conftest import PLAIN_FINETUNE
from tests.test_recipe_semantics import dubai_crops, neon_crop, rsscn7_files

#: the pretraining run's own 4-band statistics (RGB + a near-infrared stand-in)
MEAN4 = [0.41, 0.43, 0.39, 0.52]
STD4 = [0.21, 0.19, 0.2, 0.23]
TINY4 = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8, in_chans=4, device="cpu", num_workers=0, epochs=1,
             warmup_epochs=0.0, checkpoint_every=0)


def four_band_tiff(source: Path, target: Path) -> Path:
    """An RGB image with a fourth band (the green-red difference, as vegetation indices do), as uint16 TIFF."""
    rgb = np.asarray(Image.open(source).convert("RGB")).astype(np.float32) / 255
    nir = np.clip(0.5 + rgb[..., 1] - rgb[..., 0], 0, 1)[..., None]
    target.parent.mkdir(parents=True, exist_ok=True)
    bands = np.moveaxis(np.concatenate([rgb, nir], -1), -1, 0)
    tifffile.imwrite(target, (bands * 65535).astype(np.uint16), photometric="minisblack", planarconfig="separate")
    return target


def test_explicit_then_recorded_then_default():
    assert resolve_normalisation(None, None, 4, (MEAN4, STD4), "run") == (MEAN4, STD4)
    assert resolve_normalisation([0.1] * 4, [0.2] * 4, 4, (MEAN4, STD4), "run") == ([0.1] * 4, [0.2] * 4)
    assert resolve_normalisation(None, None, 3, (MEAN4, STD4), "run")[0] == [0.485, 0.456, 0.406]
    assert resolve_normalisation(None, None, 4) == ([0.5] * 4, [0.25] * 4)
    for mean, std, flag in (([0.5] * 5, [0.25] * 4, "--mean"), ([0.5] * 4, [0.25] * 3, "--std")):
        with pytest.raises(CsptError, match=f"{flag}: . value.s. for a model of 4 band") as error:
            resolve_normalisation(mean, std, 4)
        assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_four_band_encoder_is_fine_tuned_by_every_task_with_its_own_statistics(tmp_path: Path, neon: Path,
                                                                                  caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="cspt")
    files = [four_band_tiff(f, tmp_path / "tif" / c / f"{f.stem}.tif") for f, c in rsscn7_files(14)]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    source = pretrain(PretrainConfig(data=[str(listing)], output=str(tmp_path / "mae4"), mean=MEAN4, std=STD4,
                                     img_size=32, decoder_dim=32, decoder_depth=1, decoder_num_heads=2, batch_size=7,
                                     vis_every=0, **TINY4))
    assert load_checkpoint(source).normalisation == (MEAN4, STD4)

    dubai = dubai_crops(tmp_path / "dubai", 2)
    for image in sorted(dubai.glob("*.png")):
        four_band_tiff(image, image.with_suffix(".tif"))
        image.unlink()
    scene = neon_crop(neon, tmp_path / "neon", size=96)
    four_band_tiff(scene.parent / "crop.png", scene.parent / "crop.tif")
    (scene.parent / "crop.png").unlink()
    stages = {
        "classify": lambda out: finetune_classify(ClassifyConfig(
            data=str(tmp_path / "tif"), train_fraction=0.5, output=out, init=str(source), img_size=32, batch_size=4,
            **{**PLAIN_FINETUNE, **TINY4})),
        "segment": lambda out: finetune_segment(SegmentConfig(
            images=[str(dubai)], palette="dubai", output=out, init=str(source), crop_size=32, batch_size=4,
            channels=16, aux_channels=0, layer_decay=1.0, **TINY4)),
        "detect": lambda out: finetune_detect(DetectConfig(
            train=str(scene), images=str(scene.parent), output=out, init=str(source), tile_size=64, tile_overlap=16,
            batch_size=2, fpn_channels=16, roi_samples=16, **TINY4)),
    }
    for name, run in stages.items():
        caplog.clear()
        run_dir = run(str(tmp_path / name))
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (saved["mean"], saved["std"]) == (MEAN4, STD4), name
        assert any("normalisation:" in r.message and "statistics recorded with" in r.message
                   and str(source) in r.message for r in caplog.records), name
    probed = frozen_encoder(ProbeConfig(checkpoint=str(source)))
    assert (list(probed.contract.mean), list(probed.contract.std)) == (MEAN4, STD4)


def test_statistics_for_another_band_count_are_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="cspt")
    mean, std = resolve_normalisation(None, None, 3, (MEAN4, STD4), tmp_path / "encoder.json")
    assert mean == [0.485, 0.456, 0.406] and std == [0.229, 0.224, 0.225]
    assert any("records 4-band statistics" in r.message for r in caplog.records)


@pytest.mark.slow
def test_eleven_bit_data_under_imagenet_statistics_is_named_before_training(rsscn7, tmp_path: Path):
    """A SpaceNet-like uint16 scene using 11 bits: on the dtype scale ImageNet's statistics make it a near-constant
    input, and the run says so before it trains; the default scaling and the statistics ``cspt stats`` measures
    both standardise it."""
    from cspt.data.unlabelled import UnlabelledImages, scan_images
    from tests.conftest import TINY_FLAGS, run_cli

    source = np.asarray(Image.open(next(rsscn7.rglob("*.jpg"))).convert("RGB").resize((900, 900)))
    scene = tmp_path / "scene.tif"
    tifffile.imwrite(scene, (source.astype(np.uint16) * 8), photometric="rgb")  # 0-2040: 11 bits in uint16
    args = ["pretrain", "--data", str(scene), "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
            "--device", "cpu", "--vis-every", "0", *TINY_FLAGS]
    first = run_cli(*args, "--scale", "dtype", "--output", str(tmp_path / "imagenet"))
    assert first.returncode == 0, first.stderr[-2000:]
    warning = [line for line in first.stderr.splitlines() if "normalisation does not fit the data" in line]
    assert len(warning) == 1 and "band 1 mean -" in warning[0] and "--scale percentile" in warning[0]
    scaled = run_cli(*args, "--output", str(tmp_path / "scaled"))  # the default measures the data's own range
    assert scaled.returncode == 0 and "scaling: stats of 1 image(s)" in scaled.stderr, scaled.stderr[-2000:]
    assert "does not fit" not in scaled.stderr
    stats = run_cli("stats", str(scene)).stdout
    mean = yaml.safe_load(stats.split("mean: ")[1].split("\n")[0])
    std = yaml.safe_load(stats.split("std: ")[1].split("\n")[0])
    second = run_cli(*args, "--mean", *map(str, mean), "--std", *map(str, std), "--output", str(tmp_path / "own"))
    assert second.returncode == 0 and "does not fit" not in second.stderr, second.stderr[-2000:]
    from cspt.data.pixels import PixelContract

    dataset = UnlabelledImages(scan_images([scene], 128).entries, PixelContract(tuple(mean), tuple(std)), 32, 8, 128)
    batch = torch.stack([dataset[(i, i)]["image"] for i in range(16)])
    assert batch.mean().abs() < 1 and 0.3 < batch.std() < 3
