"""Consecutive pretraining end to end on real RSSCN7 images: learning, --init, resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import timm
import torch
from safetensors.torch import load_file

from cspt.config import PretrainConfig
from cspt.data.pixels import PixelContract
from cspt.engine.run_log import read_log
from cspt.errors import CsptError
from cspt.tasks.pretrain import fixed_crops, pretrain, with_mask_draws
from tests.conftest import NATURAL_MAE, TINY_ARCH, TINY_FLAGS, TINY_IMAGENET, needs, run_cli, write_geotiff, write_rgb

FAST = ["--num-workers", "0", "--warmup-epochs", "0", "--vis-every", "0", "--log-every", "1", "--device", "cpu"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(run_dir) if "loss" in r]


def test_mae_loss_falls_on_real_images(rsscn7_list, tmp_path):
    config = PretrainConfig(data=[str(rsscn7_list(128))], output=str(tmp_path / "run"), epochs=5, batch_size=16,
                            blr=1.5e-3, warmup_epochs=0.5, num_workers=0, log_every=1, vis_every=5, device="cpu",
                            **TINY_ARCH.to_dict())
    run_dir = pretrain(config)
    curve = losses(run_dir)
    assert len(curve) == 40
    assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.05, curve
    assert (run_dir / "reconstructions" / "epoch_0000.png").is_file()
    assert (run_dir / "reconstructions" / "epoch_0005.png").is_file()


def test_a_few_scenes_give_a_fixed_number_of_crops_per_epoch_and_held_out_images_are_scored(tmp_path):
    """--samples-per-epoch sets the step budget whatever the pool's size; --eval-data is scored before and after
    (never trained on), beside the pool by the same rule, with its reconstructions."""
    from tests.conftest import write_rgb

    pool = [write_rgb(tmp_path / "pool" / f"{i}.png", size=96, seed=i) for i in range(2)]
    held_out = write_rgb(tmp_path / "held_out" / "x.png", size=96, seed=9)
    config = PretrainConfig(data=[str(tmp_path / "pool")], eval_data=[str(held_out)], output=str(tmp_path / "run"),
                            epochs=2, batch_size=8, samples_per_epoch=40, blr=1.5e-3, warmup_epochs=0.5,
                            num_workers=0, log_every=1, vis_every=2, device="cpu", **TINY_ARCH.to_dict())
    run_dir = pretrain(config)
    assert len(losses(run_dir)) == 2 * (40 // 8) and len(pool) == 2  # 5 steps an epoch from two images
    history = json.loads((run_dir / "heldout.json").read_text())
    assert [h["epoch"] for h in history] == [0, 2]
    assert all(np.isfinite([h["mae_loss"], h["pool_mae_loss"]]).all() for h in history)
    assert history[0]["mae_loss"] != history[-1]["mae_loss"]  # the weights moved
    assert (run_dir / "reconstructions" / "heldout_epoch_0000.png").is_file()
    assert (run_dir / "reconstructions" / "heldout_epoch_0002.png").is_file()


@pytest.mark.parametrize("sample_by", ["area", "files"])
def test_crops_spread_over_the_pool_by_area_or_each_file_alike(sample_by):
    """A large scene (81 tiles), a smaller one (16) and an image: by area each tile is drawn alike, by files each
    file is; either way the draw is the sample's own (the same index and seed, the same entry)."""
    from cspt.data.images import ImageInfo
    from cspt.data.unlabelled import Entry, UnlabelledImages

    entries = [Entry(Path(name), ImageInfo(1800, 1800, 3, "uint8"), count > 1)
               for name, count in (("large.png", 81), ("small.png", 16), ("image.png", 1)) for _ in range(count)]
    dataset = UnlabelledImages(entries, PixelContract((0.5,) * 3, (0.25,) * 3), 32, 8, 200, samples_per_epoch=40,
                               sample_by=sample_by)
    draws = [dataset.entry_of(index, torch.Generator().manual_seed(1000 + index)) for index in range(6000)]
    assert draws[:50] == [dataset.entry_of(i, torch.Generator().manual_seed(1000 + i)) for i in range(50)]
    shares = {name: sum(entries[d].path.name == name for d in draws) / len(draws)
              for name in ("large.png", "small.png", "image.png")}
    expected = {"large.png": 81 / 98, "small.png": 16 / 98, "image.png": 1 / 98} if sample_by == "area" else \
        dict.fromkeys(shares, 1 / 3)
    assert all(abs(shares[name] - expected[name]) < 0.02 for name in shares), shares


@pytest.mark.slow
def test_init_from_natural_checkpoint_matches_every_key(rsscn7_list, natural_mae, tmp_path):
    out = tmp_path / "run"
    result = run_cli("pretrain", "--data", str(rsscn7_list(32)), "--init", str(natural_mae), "--output", str(out),
                     "--epochs", "1", "--batch-size", "16", *FAST)
    assert result.returncode == 0, result.stderr
    assert "loaded 122/122 tensors" in result.stderr and "all keys matched" in result.stderr
    assert "decoder: loaded from the checkpoint" in result.stderr
    config = (out / "config.yaml").read_text()
    assert "embed_dim: 192" in config and "depth: 8" in config and "img_size: 64" in config
    # the exported encoder loads into plain timm and matches the trained weights
    weights = load_file(out / "encoder.safetensors")
    info = json.loads((out / "encoder.json").read_text())
    source, stage = info["lineage"]
    assert source["sha256"].startswith("2877a60b") and source["path"] == str(natural_mae)
    assert stage["images"] == 32 and stage["epochs"] == 1
    vit = timm.create_model("vit_tiny_patch16_224", patch_size=8, img_size=64, depth=8, num_classes=0)
    assert not vit.load_state_dict(weights, strict=True).missing_keys
    assert torch.equal(weights["blocks.0.attn.qkv.weight"], final_weights(out)["blocks.0.attn.qkv.weight"])


def guidance(kind: str, folder: Path) -> list[str]:
    """The flags of plain pretraining, teacher guidance (the natural MAE) or source replay (Tiny-ImageNet)."""
    if kind == "teacher":
        return ["--distill-from", str(needs(NATURAL_MAE))]
    if kind == "replay":
        files = sorted(needs(TINY_IMAGENET).rglob("*.JPEG"))[::50][:32]
        listing = folder / "replay.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        return ["--replay", str(listing), "--replay-fraction", "0.3"]
    return []


@pytest.mark.parametrize("kind", ["plain", "teacher", "replay"])
@pytest.mark.slow
def test_sigkill_at_a_random_step_then_restart_gives_identical_weights(kind, rsscn7_list, tmp_path):
    data = str(rsscn7_list(48))
    args = ["pretrain", "--data", data, "--epochs", "3", "--batch-size", "8", "--checkpoint-every", "2",
            "--seed", "7", *TINY_FLAGS, *FAST, *guidance(kind, tmp_path)]
    reference = tmp_path / "reference"
    assert run_cli(*args, "--output", str(reference)).returncode == 0
    total = len(losses(reference))
    assert total == 18

    interrupted = tmp_path / "interrupted"
    seed = int(os.environ.get("CSPT_KILL_SEED", random.SystemRandom().randrange(2**32)))
    kill_at = random.Random(seed).randint(3, total - 3)
    print(f"kill step {kill_at}, from seed {seed}: replay with CSPT_KILL_SEED={seed}")
    process = subprocess.Popen([sys.executable, "-m", "cspt", *args, "--output", str(interrupted)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if len(losses(interrupted)) >= kill_at:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before step {kill_at} (CSPT_KILL_SEED={seed})"
    resumed = run_cli(*args, "--output", str(interrupted))
    assert resumed.returncode == 0, f"CSPT_KILL_SEED={seed}: {resumed.stderr}"
    assert "resuming from" in resumed.stderr
    want, got = final_weights(reference), final_weights(interrupted)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), \
        f"weights differ after a kill at step {kill_at} (CSPT_KILL_SEED={seed})"
    assert losses(interrupted) == losses(reference), f"CSPT_KILL_SEED={seed}"
    if kind == "teacher":  # the projector trains and resumes with the student; the teacher is not saved
        assert any(k.startswith("distill_head.") for k in want) and not any("teacher" in k for k in want)
        parts = [r for r in read_log(reference) if "loss" in r]
        assert all(r["loss"] == pytest.approx(r["loss_reconstruction"] + r["loss_distill"], rel=1e-5)
                   for r in parts)


@pytest.mark.slow
def test_resume_refuses_weights_only_files_and_changed_settings(rsscn7_list, natural_mae, tmp_path):
    result = run_cli("pretrain", "--resume", str(natural_mae))
    assert result.returncode == 2 and "weights-only checkpoint cannot be resumed" in result.stderr
    assert "use --init" in result.stderr and "Traceback" not in result.stderr
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(rsscn7_list(16)), "--output", str(out), "--epochs", "1", "--batch-size", "8",
            *TINY_FLAGS, *FAST]
    assert run_cli(*args).returncode == 0
    changed = run_cli(*args, "--blr", "1e-2")
    assert changed.returncode == 2 and "holds a run with other settings (blr" in changed.stderr
    extended = run_cli("pretrain", "--resume", str(out), "--epochs", "2")
    assert extended.returncode == 0, extended.stderr
    assert max(r.get("epoch", 0) for r in read_log(out)) == 2


@pytest.mark.parametrize("kind", ["plain", "teacher", "replay"])
@pytest.mark.slow
def test_two_process_gloo_matches_one_process(kind, rsscn7_list, tmp_path):
    data = str(rsscn7_list(48))
    common = ["pretrain", "--data", data, "--epochs", "1", "--seed", "3", *TINY_FLAGS, *FAST, *guidance(kind, tmp_path)]
    single = tmp_path / "single"
    assert run_cli(*common, "--batch-size", "8", "--output", str(single)).returncode == 0
    double = tmp_path / "double"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cspt",
         *common, "--batch-size", "4", "--output", str(double)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(single), losses(double)
    assert len(one) == len(two) == 6
    assert np.allclose(one, two, atol=1e-4), (one, two)


@pytest.mark.slow
def test_bad_input_gives_one_line_errors_or_logged_skips(rsscn7, natural_mae, tmp_path):
    def cli(*args):
        result = run_cli("pretrain", *args, "--epochs", "1", "--batch-size", "4", *TINY_FLAGS, *FAST)
        assert "Traceback" not in result.stderr
        return result

    missing = cli("--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "a"))
    assert missing.returncode == 2 and "nowhere: no such file or folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = cli("--data", str(tmp_path / "empty"), "--output", str(tmp_path / "b"))
    assert empty.returncode == 2 and "empty: folder contains no images" in empty.stderr
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    as_init = run_cli("pretrain", "--data", str(rsscn7), "--init", str(text), "--output", str(tmp_path / "c"))
    assert as_init.returncode == 2 and f"{text}: not a PyTorch checkpoint" in as_init.stderr
    assert len(as_init.stderr.strip().splitlines()) == 1

    mixed = tmp_path / "mixed"
    good = sorted(rsscn7.rglob("*.jpg"))[:8]
    for i, path in enumerate(good):
        (mixed / f"{i}.jpg").parent.mkdir(exist_ok=True)
        (mixed / f"{i}.jpg").write_bytes(path.read_bytes())
    (mixed / "broken.jpg").write_bytes(good[0].read_bytes()[:2000])
    tifffile.imwrite(mixed / "dem16.tif", (np.random.default_rng(0).random((80, 80)) * 65535).astype(np.uint16))
    run = cli("--data", str(mixed), "--output", str(tmp_path / "d"), "--batch-size", "5")
    assert run.returncode == 0, run.stderr
    assert "skipped unreadable image" in run.stderr and "broken.jpg" in run.stderr
    epoch_end = [r for r in read_log(tmp_path / "d") if r.get("event") == "epoch_end"][-1]
    assert epoch_end["skipped_images"] == 1


@pytest.mark.slow
def test_visualize_and_stats_commands(rsscn7_list, natural_mae, tmp_path):
    png = tmp_path / "recon.png"
    result = run_cli("visualize", "--checkpoint", str(natural_mae), "--images", str(rsscn7_list(4)),
                     "--output", str(png), "--count", "4")
    assert result.returncode == 0, result.stderr
    from PIL import Image

    assert Image.open(png).size == (4 * 64 + 3 * 2, 4 * 64 + 3 * 2)
    folder = tmp_path / "imgs"
    for i in range(3):
        write_rgb(folder / f"{i}.png", seed=i)
    stats = run_cli("stats", str(folder))
    assert stats.returncode == 0 and "mean: [" in stats.stdout and "std: [" in stats.stdout


def test_knn_probes_during_pretraining_and_stop_on_plateau(rsscn7_list, rsscn7_csv, tmp_path):
    """Probes are logged every epoch; a patience of one probe ends the run once the probe stops improving."""
    config = PretrainConfig(data=[str(rsscn7_list(32))], output=str(tmp_path / "run"), epochs=6, batch_size=16,
                            blr=1e-2, warmup_epochs=0, num_workers=0, log_every=1, vis_every=0, device="cpu",
                            probe_target=str(rsscn7_csv(6)), probe_source=str(rsscn7_csv(4, seed=3)),
                            probe_every=1, stop_on_plateau=1, **TINY_ARCH.to_dict())
    run_dir = pretrain(config)
    probes = [r for r in read_log(run_dir) if r.get("event") == "eval"]
    assert probes and all(0 <= r["knn_target"] <= 1 and 0 <= r["knn_source"] <= 1 for r in probes)
    best = max(range(len(probes)), key=lambda i: probes[i]["knn_target"])
    stopped = [r for r in read_log(run_dir) if r.get("event") == "stopped"]
    if len(probes) < 6:  # ended early: exactly one probe after the best one, and the reason recorded
        assert len(probes) == best + 2 and stopped and "has not improved for 1 probes" in stopped[0]["reason"]
        assert json.loads((run_dir / "stopped.json").read_text())["reason"] == stopped[0]["reason"]
    else:  # the probe improved every epoch: it never stopped
        assert not stopped and all(a["knn_target"] < b["knn_target"] for a, b in zip(probes, probes[1:]))
    assert (run_dir / "encoder.safetensors").is_file()  # an early stop still exports the encoder


@pytest.mark.slow
def test_a_second_process_is_refused_a_run_directory_in_use(rsscn7_list, tmp_path):
    """A double launch: the second start is refused in one line naming the holder, and nothing of it is
    written; once the first ends, the same command resumes."""
    out = tmp_path / "run"
    args = ["pretrain", "--data", str(rsscn7_list(16)), "--output", str(out), "--epochs", "1", "--batch-size", "8",
            *TINY_FLAGS, *FAST]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from cspt.engine.run_dir import run_lock\n"
        f"with run_lock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = run_cli(*args)
        assert refused.returncode == 2 and "another process trains into this run directory" in refused.stderr
        assert f"pid {holder.pid} on " in refused.stderr and "Traceback" not in refused.stderr
        assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(*args).returncode == 0  # the kernel released the killed holder's lock


@pytest.mark.slow
def test_a_run_directory_inside_the_data_is_not_read_as_data(rsscn7, tmp_path):
    data = tmp_path / "images"
    for i in range(16):
        write_rgb(data / f"{i}.png", size=48, seed=i)
    out = data / "runs" / "mae"

    def run(epochs: int) -> subprocess.CompletedProcess:
        return run_cli("pretrain", "--data", str(data), "--output", str(out), "--epochs", str(epochs),
                       "--batch-size", "8", "--vis-every", "1", *TINY_FLAGS, "--num-workers", "0",
                       "--warmup-epochs", "0", "--device", "cpu")

    first = run(1)
    assert first.returncode == 0 and "data: 16 files" in first.stderr, first.stderr[-2000:]
    assert len(list((out / "reconstructions").glob("*.png"))) == 2
    again = run(2)  # continues with the run's own PNGs now inside --data: still the 16 images
    assert again.returncode == 0 and "data: 16 files" in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
def test_compiled_training_step_follows_the_eager_one(rsscn7_list, tmp_path):
    """``--compile`` on the CPU (inductor): the same losses as eager, and the compilation time is logged."""
    common = ["pretrain", "--data", str(rsscn7_list(24)), "--epochs", "1", "--batch-size", "8", "--seed", "2",
              *TINY_FLAGS, *FAST]
    eager = tmp_path / "eager"
    assert run_cli(*common, "--output", str(eager)).returncode == 0
    compiled = tmp_path / "compiled"
    result = run_cli(*common, "--compile", "--output", str(compiled))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled the training step: the first step took" in result.stderr
    assert len(losses(eager)) == 3 and np.allclose(losses(eager), losses(compiled), atol=1e-4)


def test_held_out_crops_are_windows_with_data_where_the_scene_has_them(tmp_path):
    """A scene whose left half is a -9999 border: the evenly spread windows (the first of every row) all fall in
    it, so windows with data take their place, themselves spread over the scene; the same crops every time."""
    rows = np.arange(256, dtype=np.int16)[:, None] * 10  # the value tells the row
    pixels = np.broadcast_to(rows, (1, 256, 256)).copy()
    pixels[:, :, :128] = -9999
    scene = write_geotiff(tmp_path / "scene.tif", pixels, nodata=-9999)
    contract = PixelContract((0.5,), (0.25,), nodata=-9999, low=(0.0,), high=(2560 / 32767,))
    images, valid, noise = fixed_crops(contract, [scene], 64, 32, 16, limit=8)
    assert len(images) == 8 and noise.shape == (8, 16)
    assert all(float(v.float().mean()) >= 0.5 for v in valid)
    centre_rows = sorted(round(float(contract.unnormalise(image).mean()) * 2560 / 10) for image in images)
    assert centre_rows[0] < 64 and centre_rows[-1] > 192, centre_rows  # from the top and the bottom quarter
    again, _, _ = fixed_crops(contract, [scene], 64, 32, 16, limit=8)
    assert torch.equal(images, again)
    nothing = write_geotiff(tmp_path / "border.tif", np.full((1, 64, 64), -9999, np.int16), nodata=-9999)
    assert len(fixed_crops(contract, [nothing], 64, 32, 16, limit=8)[0]) == 4  # all empty: still measured
    # a truncated GeoTIFF among them is left out, as training skips it; nothing readable is one line
    broken = tmp_path / "broken.tif"
    broken.write_bytes(scene.read_bytes()[:300])
    _, valid_with_broken, _ = fixed_crops(contract, [broken, scene], 64, 32, 16, limit=8)
    assert len(valid_with_broken) == 8 and all(float(v.float().mean()) >= 0.5 for v in valid_with_broken)
    with pytest.raises(CsptError, match="broken.tif: no readable image"):
        fixed_crops(contract, [broken], 64, 32, 16, limit=8)


@pytest.mark.parametrize("height, width, rows", [
    (96, 120, [23.5] * 2 + [71.5] * 2),  # too small to tile: its quadrants
    (60, 120, [14.5] * 3 + [44.5] * 3),  # 2:1, so the largest training crop is 60 x 80: windows 30 x 40
    (128, 128, [31.5] * 2 + [95.5] * 2),  # exactly twice the tile: still cropped whole
    (129, 128, [15.5] * 4 + [47.5] * 4 + [79.5] * 4 + [111.5] * 4 + [112.5] * 4),  # tiled: half a tile
])
def test_held_out_windows_are_half_the_largest_training_crop(tmp_path, height, width, rows):
    """Training crops a tile of a scene larger than twice the tile size (64 here), else the whole image, in boxes
    of aspect 3/4-4/3: the held-out windows are half the largest such box, the scale training sees them at."""
    values = np.arange(height, dtype=np.int16)[:, None] * 10  # the value tells the row
    image = write_geotiff(tmp_path / "image.tif", np.broadcast_to(values, (1, height, width)).copy())
    contract = PixelContract((0.5,), (0.25,), low=(0.0,), high=(1290 / 32767,))
    images, _, _ = fixed_crops(contract, [image], 64, 32, 16, limit=64)
    assert len(images) == len(rows)
    centre_rows = sorted(float(contract.unnormalise(crop).mean()) * 1290 / 10 for crop in images)
    assert np.allclose(centre_rows, rows, atol=0.5), centre_rows


def test_few_held_out_windows_are_each_measured_under_several_fixed_masks(tmp_path):
    """One image too small to tile has four windows: each is measured under 32 // 4 = 8 masks, all different, the
    first the one it had alone; enough windows are measured once each, as before."""
    image = write_geotiff(tmp_path / "image.tif", np.random.default_rng(0).integers(0, 999, (1, 96, 96), np.int16))
    contract = PixelContract((0.5,), (0.25,), low=(0.0,), high=(999 / 32767,))
    crops = fixed_crops(contract, [image], 64, 32, 16, limit=32)
    images, valid, noise = with_mask_draws(crops, 32)
    assert len(crops[0]) == 4 and images.shape == (32, 1, 32, 32) and valid.shape == (32, 32, 32)
    assert torch.equal(images[4:8], crops[0]) and torch.equal(noise[:4], crops[2])
    assert len({tuple(row.argsort()[:4].tolist()) for row in noise}) == 32  # 32 different masks
    many = fixed_crops(contract, [image], 16, 32, 16, limit=32)  # tiled at 16 px: 8 px windows, 144 of them
    assert len(many[0]) == 32 and with_mask_draws(many, 32) is many


def test_a_pool_of_only_corrupt_files_is_one_line_naming_one(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "broken.tif").write_bytes(b"II*\x00" + bytes(200))  # a TIFF whose header is cut off
    config = PretrainConfig(data=[str(tmp_path / "pool")], output=str(tmp_path / "run"), epochs=1, samples_per_epoch=4,
                            batch_size=4, num_workers=0, device="cpu", vis_every=0, **TINY_ARCH.to_dict())
    with pytest.raises(CsptError, match=r"broken\.tif: .*\(no readable image among the 1 given\)$"):
        pretrain(config)


def test_a_truncated_geotiff_first_in_the_pool_is_skipped_when_bands_are_named(tmp_path):
    """The band names come from the first readable image: a broken one before it is skipped, not a traceback."""
    pool = tmp_path / "pool"
    good = write_geotiff(pool / "b.tif", np.random.default_rng(0).integers(1, 3000, (4, 64, 64)).astype(np.uint16))
    (pool / "a.tif").write_bytes(good.read_bytes()[:300])
    config = PretrainConfig(data=[str(pool)], eval_data=[str(pool)], output=str(tmp_path / "run"), epochs=1,
                            samples_per_epoch=4, batch_size=4, sensor="worldview3-4band", bands=["red", "nir1"],
                            num_workers=0, device="cpu", vis_every=0, **{**TINY_ARCH.to_dict(), "in_chans": None})
    run = Path(pretrain(config))
    assert json.loads((run / "heldout.json").read_text())[0]["mae_loss"] > 0
