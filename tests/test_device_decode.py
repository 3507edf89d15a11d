"""--decode-on device: JPEGs decoded in batches on the training device (here the CPU stands in for the GPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cspt.data.device_decode import decode_batch
from cspt.data.pixels import PixelContract
from cspt.data.unlabelled import UnlabelledImages, collate, collate_for_device, scan_images
from cspt.engine.run_log import read_log
from tests.conftest import TINY_FLAGS, run_cli, write_rgb

RGB = PixelContract((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def datasets(files: list[Path]) -> tuple[UnlabelledImages, UnlabelledImages]:
    entries = scan_images(files, tile_size=256).entries
    return tuple(UnlabelledImages(entries, RGB, 32, 8, 256, 0.2, on_device) for on_device in (False, True))


def test_device_decoding_draws_the_loader_path_s_boxes_flips_and_noise(rsscn7: Path, tmp_path: Path):
    files = sorted(rsscn7.rglob("*.jpg"))[::40][:12]
    write_rgb(tmp_path / "tile.png", size=48)  # not a JPEG: arrives decoded, finished the same way
    files.append(tmp_path / "tile.png")
    on_loader, on_device = datasets(files)
    items = [(i, 1000 + i) for i in range(len(files))]
    reference = collate([on_loader[item] for item in items])
    batch = collate_for_device([on_device[item] for item in items])
    assert sum(type(s).__name__ == "EncodedCrop" for s in batch["image"]) == 12
    images, valid, failed = decode_batch(batch["image"], batch["valid"], batch["flip"], 32, RGB, torch.device("cpu"))
    assert not failed and torch.equal(batch["noise"], reference["noise"])  # the mask noise, bit for bit
    assert torch.equal(images[-1], reference["image"][-1])  # the PNG: the same pixels, flip and normalisation
    assert torch.equal(valid, reference["valid"])
    difference = ((images - reference["image"]) * RGB.std_tensor).abs().mean((1, 2, 3))  # on the 0-1 scale
    mirrored = ((images.flip(-1) - reference["image"]) * RGB.std_tensor).abs().mean((1, 2, 3))
    assert difference.max() < 0.02, difference  # the resamplers differ; boxes and flips do not
    assert (mirrored[:12] > 2 * difference[:12]).all(), (difference, mirrored)


@pytest.mark.slow
def test_an_undecodable_jpeg_is_replaced_and_named_and_pretraining_runs_on_the_device_path(rsscn7: Path,
                                                                                       tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(rsscn7.rglob("*.jpg"))[::50][:7]:
        shutil.copy(path, data / path.name)
    good = (data / sorted(p.name for p in data.iterdir())[0]).read_bytes()
    (data / "broken.jpg").write_bytes(good[:700] + bytes(range(256)) * 8)  # its header reads, its scan does not
    _, on_device = datasets(sorted(data.iterdir()))
    index = [e.path.name for e in on_device.entries].index("broken.jpg")
    batch = collate_for_device([on_device[(i, i)] for i in (index, 0, 1)])
    images, _, failed = decode_batch(batch["image"], batch["valid"], batch["flip"], 32, RGB, torch.device("cpu"))
    assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
    assert len(failed) == 1 and "broken.jpg: cannot decode JPEG" in failed[0]

    run = tmp_path / "run"
    result = run_cli("pretrain", "--data", str(data), "--output", str(run), "--decode-on", "device", "--epochs", "1",
                     "--batch-size", "4", "--num-workers", "1", "--warmup-epochs", "0", "--log-every", "1",
                     "--vis-every", "0", "--device", "cpu", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [r["loss"] for r in read_log(run) if "loss" in r]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
