"""Scene classification end to end on real RSSCN7 images: fine-tune, resume, evaluate, predict, probes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from cspt.config import ClassifyConfig, ProbeConfig
from cspt.models.vit import build_encoder
from cspt.tasks.classify import finetune_classify, make_splits
from cspt.tasks.probe import FrozenEncoder, frozen_encoder, probe_encoder
from tests.conftest import PLAIN_FINETUNE, TINY_ARCH, TINY_ENCODER_FLAGS, run_cli, write_geotiff, write_rgb

ENCODER_ONLY = {k: v for k, v in TINY_ARCH.to_dict().items() if not k.startswith("decoder")}
FAST = {"num_workers": 0, "device": "cpu", "log_every": 1}


@pytest.mark.slow
def test_tiny_model_beats_chance_on_held_out_images(rsscn7_csv, tmp_path):
    config = ClassifyConfig(data=str(rsscn7_csv(60)), output=str(tmp_path / "run"), train_fraction=0.5, epochs=8,
                            batch_size=32, lr=2e-3, warmup_epochs=1, **PLAIN_FINETUNE, **ENCODER_ONLY, **FAST)
    run_dir = finetune_classify(config)  # 8 epochs x 6 steps = 48 CPU steps
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["images"] == 210 and metrics["data"].endswith("splits/test.csv")
    assert metrics["oa"] > 0.25, metrics["oa"]  # chance is 1/7 = 0.143
    assert metrics["kappa"] > 0.1 and len(metrics["confusion"]) == 7
    train = {row["path"] for row in csv.DictReader(open(run_dir / "splits" / "train.csv"))}
    tested = {row["path"] for row in csv.DictReader(open(run_dir / "predictions.csv"))}
    assert len(train) == 210 and len(tested) == 210 and not train & tested


@pytest.mark.slow
def test_resume_with_mixup_randaugment_erasing_and_ema_is_exact(rsscn7_csv, tmp_path):
    """All the recipe's randomness (timm mixup/cutmix, RandAugment, erasing, EMA) survives a restart."""
    recipe = dict(data=str(rsscn7_csv(8)), train_fraction=0.5, val_fraction=0.25, epochs=2, batch_size=4,
                  warmup_epochs=0.5, ema=0.9, checkpoint_every=0, seed=5, **ENCODER_ONLY, **FAST)
    reference = finetune_classify(ClassifyConfig(output=str(tmp_path / "reference"), **recipe))
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    checkpoints = sorted((resumed / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    assert len(checkpoints) == 2  # one per epoch
    for path in [resumed / "checkpoints" / "last.pt", checkpoints[-1], resumed / "metrics.json"]:
        path.unlink()
    finetune_classify(ClassifyConfig(output=str(resumed), **recipe))  # continues from epoch 1
    want, got = final_state(reference), final_state(resumed)
    assert want["step"] == got["step"] == 14  # 28 training images, 7 steps per epoch
    for part in ("model", "optimizer"):
        assert all(torch.equal(a, b) for a, b in zip(tensors(want[part]), tensors(got[part]))), part
    ema = tensors(want["task"]["ema"])
    assert ema and all(torch.equal(a, b) for a, b in zip(ema, tensors(got["task"]["ema"])))
    assert not all(torch.equal(a, b) for a, b in zip(ema, tensors(want["model"])))  # the EMA is its own copy
    assert json.loads((resumed / "metrics.json").read_text())["confusion"] == json.loads(
        (reference / "metrics.json").read_text())["confusion"]


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def tensors(tree) -> list[torch.Tensor]:
    """Every tensor in a nested state dict, in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in tensors(item)]
    return []


@pytest.mark.slow
def test_cli_finetune_evaluate_predict(rsscn7_csv, natural_mae, tmp_path):
    run = tmp_path / "run"
    result = run_cli("finetune", "classify", "--data", str(rsscn7_csv(6)), "--init", str(natural_mae),
                     "--output", str(run), "--train-fraction", "0.5", "--val-fraction", "0.17", "--epochs", "1",
                     "--batch-size", "4", "--img-size", "32", "--num-workers", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    # the natural checkpoint's encoder loads; its MAE decoder and final norm (avg pooling uses fc_norm) do not
    assert "loaded 100/104 tensors" in result.stderr
    assert "decoder: in the checkpoint, not used by this model" in result.stderr
    assert "missing (initialised): fc_norm.weight, fc_norm.bias, head.weight, head.bias" in result.stderr
    assert "pos_embed: fixed sin-cos recomputed for a 4x4 grid (was 8x8)" in result.stderr
    info = json.loads((run / "classifier.json").read_text())
    assert info["selected"].startswith("best validation OA") and info["lineage"][0]["path"] == str(natural_mae)
    assert {"oa", "aa", "kappa", "per_class", "confusion"} <= set(json.loads((run / "metrics.json").read_text()))
    # the weights are a plain timm classifier
    model = timm.create_model("vit_tiny_patch16_224", patch_size=8, img_size=32, depth=8, num_classes=7,
                              global_pool="avg", pretrained=False)
    model.load_state_dict(load_file(run / "classifier.safetensors"), strict=True)

    evaluated = run_cli("evaluate", "classify", "--checkpoint", str(run), "--num-workers", "0")
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.startswith("OA ") and "(14 images)" in evaluated.stdout  # the run's test split
    for name in ("metrics.json", "confusion.csv", "confusion.png", "predictions.csv"):
        assert (run / name).is_file()
    other = rsscn7_csv(3, seed=9)
    elsewhere = run_cli("evaluate", "classify", "--checkpoint", str(run), "--data", str(other), "--num-workers", "0")
    assert elsewhere.returncode == 0 and "(21 images)" in elsewhere.stdout, elsewhere.stderr
    assert json.loads((run / "evaluation" / other.stem / "metrics.json").read_text())["images"] == 21

    images = tmp_path / "new"
    for i in range(3):
        write_rgb(images / f"{i}.png", size=40, seed=i)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    predicted = run_cli("predict", "classify", "--checkpoint", str(run / "classifier.safetensors"), "--images",
                        str(images), "--output", str(tmp_path / "p.csv"), "--num-workers", "0")
    assert predicted.returncode == 3, predicted.stderr  # written, but not every image: the status says so
    assert "1 of 4 images could not be read" in predicted.stderr
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [Path(r["path"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(r["label"] in info["classes"] and 0 < float(r["score"]) <= 1 for r in rows)
    assert "broken.jpg" in predicted.stderr and "1 unreadable skipped" in predicted.stderr

    # a large scene: one class per window, written on the scene's map grid
    quadrants = [np.asarray(Image.open(row["path"]).convert("RGB").resize((200, 200)))
                 for row in list(csv.DictReader(open(other)))[::6][:4]]
    mosaic = np.concatenate([np.concatenate(quadrants[:2], 1), np.concatenate(quadrants[2:], 1)], 0)
    scene = write_geotiff(tmp_path / "mosaic.tif", np.moveaxis(mosaic, -1, 0).copy())
    for index, quadrant in enumerate(quadrants):
        write_geotiff(tmp_path / "parts" / f"{index}.tif", np.moveaxis(quadrant, -1, 0).copy())
    for source, folder in ((scene, "maps"), (tmp_path / "parts", "parts_maps")):
        mapped = run_cli("predict", "classify", "--checkpoint", str(run), "--scene", str(source), "--window", "200",
                         "--output", str(tmp_path / folder), "--device", "cpu")
        assert mapped.returncode == 0, mapped.stderr
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "maps" / "mosaic.tif") as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        classes = dst.read(1)
    for index in range(4):
        block = classes[200 * (index // 2):200 * (index // 2 + 1), 200 * (index % 2):200 * (index % 2 + 1)]
        alone = rasterio.open(tmp_path / "parts_maps" / f"{index}.tif").read(1)
        assert (block == block[0, 0]).all() and (alone == block[0, 0]).all() and block[0, 0] < 7


@pytest.mark.slow
def test_cli_refuses_bad_input_in_one_line(rsscn7_csv, tmp_path):
    write_rgb(tmp_path / "one" / "forest" / "a.png")
    broken_csv = tmp_path / "labels.csv"
    broken_csv.write_text("path,label\nmissing.jpg,forest\n")
    cases = [
        (["--data", str(tmp_path / "one")], "found 1 class (forest); classification needs at least 2"),
        (["--data", str(broken_csv)], "labels.csv:2: no such image missing.jpg"),
        (["--data", str(rsscn7_csv(4)), "--label-fraction", "0.1"], "--label-fraction 0.1 leaves class aGrass"),
        (["--data", str(rsscn7_csv(4)), "--img-size", "36"], "image size 36 is not divisible by patch size 8"),
    ]
    for flags, message in cases:
        size = [] if "--img-size" in flags else ["--img-size", "32"]
        result = run_cli("finetune", "classify", *flags, "--output", str(tmp_path / "run"), *TINY_ENCODER_FLAGS,
                         *size)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_knn_natural_checkpoint_beats_random_encoder(rsscn7_csv, natural_mae):
    config = ProbeConfig(checkpoint=str(natural_mae), data=str(rsscn7_csv(60)), train_fraction=0.5,
                         num_workers=0, device="cpu")
    natural = frozen_encoder(config)
    torch.manual_seed(0)
    shape = natural.model.patch_embed.proj.out_channels, len(natural.model.blocks)
    assert shape == (192, 8)
    random_encoder = build_encoder(TINY_ARCH.__class__(embed_dim=192, depth=8, num_heads=3, patch_size=8,
                                                       img_size=64))
    splits = make_splits(config)
    natural_oa = probe_encoder("knn", natural, splits, config, torch.device("cpu"))[0]["oa"]
    random_oa = probe_encoder("knn", FrozenEncoder(random_encoder, 64, natural.contract), splits, config,
                              torch.device("cpu"))[0]["oa"]
    print(f"kNN OA on 210 RSSCN7 test images: natural MAE {natural_oa:.3f}, random init {random_oa:.3f}")
    assert natural_oa > random_oa + 0.05, (natural_oa, random_oa)


@pytest.mark.slow
def test_cli_probes_write_metrics(rsscn7_csv, natural_mae, tmp_path):
    for kind in ("knn", "linear"):
        out = tmp_path / kind
        result = run_cli("probe", kind, "--checkpoint", str(natural_mae), "--data", str(rsscn7_csv(10)),
                         "--output", str(out), "--epochs", "20", "--num-workers", "0", "--device", "cpu")
        assert result.returncode == 0, result.stderr
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["probe"] == kind and metrics["images"] == 35 and metrics["oa"] > 1 / 7
        assert (out / "splits" / "train.csv").is_file() and (out / "confusion.png").is_file()
