"""What every shipped recipe means: the lr scale and weight decay of each parameter group, and a short run
of each recipe with its own augmentation and schedule on real data.

The expected tables are written here from the recipes' definition (BEiT/MAE layer-wise
decay: a ViT of depth D with decay d trains its embeddings at d**(D+1), block i at
d**(D-i), and everything above the blocks, heads included, at 1.0; weight decay on
weight matrices only, never on norms, biases, the cls token or the positions, which
train in every fine-tune), not from the code that builds the groups.
"""

from __future__ import annotations

import csv
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead

from cspt.config import ClassifyConfig, DetectConfig, PretrainConfig, SegmentConfig, build_config
from cspt.data.bands import sensor_bands
from cspt.data.classification import LabelledSet
from cspt.data.detection import Annotations
from cspt.engine.run_log import read_log
from cspt.tasks import classify, detect, pretrain, segment
from tests.conftest import NATURAL_MAE, ROOT, SHARED, needs, write_geotiff

RECIPE_FILES = sorted({p.resolve() for p in [*(ROOT / "configs").rglob("*.yaml"),
                                             *(ROOT / "src" / "cspt" / "recipes").glob("*.yaml")]})
TASKS = ("pretrain", "classify", "segment", "detect")
CONFIGS = {"pretrain": PretrainConfig, "classify": ClassifyConfig, "segment": SegmentConfig, "detect": DetectConfig}


def task_of(path: Path) -> str:
    return next(t for t in TASKS if path.parent.name == t or path.name.startswith(t))


RECIPES = [pytest.param(p, id=str(p.relative_to(ROOT))) for p in RECIPE_FILES]


def test_every_recipe_is_covered():
    assert {task_of(p) for p in RECIPE_FILES} == set(TASKS)
    assert len(RECIPE_FILES) >= 12


# ---------------------------------------------------------------- the parameter-group table

def expected_layer(name: str, depth: int) -> int:
    """The recipe's layer of a ViT parameter (``name`` relative to the ViT)."""
    if name.split(".")[0] in ("patch_embed", "cls_token", "pos_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def expected_decays(name: str, shape: torch.Size) -> bool:
    return len(shape) > 1 and name.split(".")[-1] not in ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed")


def build_task(kind: str, config):
    """The recipe's task, model and optimizer groups, on stand-in data (the groups do not depend on it)."""
    if kind == "classify":
        config = classify.resolve_config(config)
        task = classify.ClassifyTask(config, {"train": LabelledSet([], [], [f"c{i}" for i in range(7)])})
    elif kind == "segment":
        config = segment.resolve_config(config)
        task = segment.SegmentTask(config, segment.load_palette(config.palette or "dubai", None), {"train": []})
    elif kind == "detect":
        config = detect.resolve_config(config)
        task = detect.DetectTask(config, Annotations([], ["plane", "ship"]), None)
    else:
        config = pretrain.resolve_config(config)
        task = pretrain.PretrainTask(config)
    with torch.device("meta"):
        model = task.build_model(load_init=False)
    return config, model, task.param_groups(model)


def encoder_prefix(kind: str) -> str:
    return {"classify": "", "segment": "backbone.encoder.", "detect": "backbone.pyramid.encoder.",
            "pretrain": ""}[kind]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_parameter_group_follows_the_recipe(recipe: Path):
    kind = task_of(recipe)
    offline = {"init": None, **({"distill_from": None} if kind == "pretrain" else {})}  # no weights needed here
    config = build_config(CONFIGS[kind], recipe, {**offline, "train": "x", "images": "y"} if kind == "detect"
                          else offline)
    config, model, groups = build_task(kind, config)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable), "every trainable parameter in exactly one group"
    depth, prefix = config.depth, encoder_prefix(kind)
    decay = getattr(config, "layer_decay", 1.0)
    checked = 0
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            if kind == "pretrain":
                want_scale = 1.0
            else:
                layer = expected_layer(name[len(prefix):], depth) if name.startswith(prefix) else depth + 1
                want_scale = decay ** (depth + 1 - layer)
            want_decay = config.weight_decay if expected_decays(name, param.shape) else 0.0
            assert group.get("lr_scale", 1.0) == pytest.approx(want_scale, rel=1e-12), (name, group.get("lr_scale"))
            assert group["weight_decay"] == want_decay, name
            checked += 1
    assert checked == len(trainable)
    if kind == "pretrain":
        assert "pos_embed" not in trainable  # MAE pretraining keeps the fixed sin-cos positions
        return
    assert prefix + "pos_embed" in trainable, "fine-tuning trains the position embeddings (as MAE's does)"
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    last = f"{prefix}blocks.{depth - 1}.mlp.fc2.weight"
    if f"{prefix}blocks.{depth - 1}.mlp.fc2.weight" in scale:
        assert scale[last] == pytest.approx(decay), "the last block trains one decay step below the heads"
    assert scale[prefix + "patch_embed.proj.weight"] == pytest.approx(decay ** (depth + 1))


@pytest.mark.parametrize("depth,decay", [(12, 0.65), (12, 0.75), (8, 0.75)])
def test_pyramid_encoders_keep_the_scales_of_the_whole_vit(depth: int, decay: float):
    """The feature pyramid prunes the final norm: block 11 of a ViT-B still trains at 0.65 (not 1.0)."""
    config = SegmentConfig(model="vit_base", depth=depth, layer_decay=decay, palette="dubai", crop_size=64,
                           patch_size=16)
    _, model, groups = build_task("segment", config)
    scale = {n: g["lr_scale"] for g in groups for p in g["params"] for n, q in model.named_parameters() if q is p}
    assert scale[f"backbone.encoder.blocks.{depth - 1}.attn.qkv.weight"] == pytest.approx(decay)
    assert scale["backbone.encoder.blocks.0.attn.qkv.weight"] == pytest.approx(decay ** depth)
    assert scale["decode_head.fuse.0.weight"] == 1.0


# ---------------------------------------------------------------- every recipe, shrunk, for two steps

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "model": None, "taps": None}
RUN = {"epochs": 1, "device": "cpu", "num_workers": 0, "log_every": 1, "checkpoint_every": 0, "init": None,
       "eval_every": 1}


def rsscn7_files(count: int, seed: int = 0) -> list[tuple[Path, str]]:
    root = needs(SHARED / "data" / "rsscn7")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    rng = random.Random(seed)
    return [(f, c) for i in range(count) for c in [classes[i % len(classes)]]
            for f in [rng.choice(sorted((root / c).glob("*.jpg")))]]


def write_csv(rows: list[tuple[Path, str]], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((str(f), c) for f, c in rows)
    return path


def dubai_crops(folder: Path, count: int, size: int = 64) -> Path:
    """``count`` real Dubai image/mask crops of ``size`` px (an epoch of 32 px crops is 4 samples each)."""
    tile = needs(SHARED / "data" / "dubai") / "tile_1"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, image in enumerate(sorted((tile / "images").glob("*.jpg"))[:count]):
        mask = tile / "masks" / f"{image.stem}.png"
        box = (100, 100, 100 + size, 100 + size)
        Image.open(image).convert("RGB").crop(box).save(folder / "images" / f"{i}.png")
        Image.open(mask).convert("RGB").crop(box).save(folder / "masks" / f"{i}.png")
    return folder / "images"


def neon_crop(neon: Path, folder: Path, size: int = 96) -> Path:
    """The top-left ``size`` px of OSBS_029 with the crowns inside it, as VOC XML."""
    folder.mkdir(parents=True)
    Image.open(neon / "OSBS_029.png").convert("RGB").crop((0, 0, size, size)).save(folder / "crop.png")
    root = ET.parse(neon / "OSBS_029.xml").getroot()
    out = ET.Element("annotation")
    ET.SubElement(out, "filename").text = "crop.png"
    for obj in root.iter("object"):
        box = [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        if box[2] <= size and box[3] <= size:
            new = ET.SubElement(out, "object")
            ET.SubElement(new, "name").text = obj.findtext("name")
            ET.SubElement(new, "difficult").text = "0"
            bnd = ET.SubElement(new, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bnd, key).text = str(value)
    ET.ElementTree(out).write(folder / "crop.xml")
    return folder / "crop.xml"


def recipe_data(kind: str, config, tmp_path: Path, neon: Path | None) -> dict:
    """Real shared data for two optimizer steps of the recipe's own batch and accumulation."""
    if kind == "pretrain":
        count = 2 * 4 * config.accum_iter
        files = tmp_path / "images.txt"
        photos = [f for f, _ in rsscn7_files(count)]
        if config.sensor:  # a sensor's recipe: real photos as that sensor's band count (uint16, 0 = nodata)
            bands = len(sensor_bands(config.sensor))
            photos = [write_geotiff(tmp_path / "scenes" / f"{i}.tif", np.resize(
                np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1).astype(np.uint16) * 40 + 1,
                (bands, *Image.open(f).size[::-1]))) for i, f in enumerate(photos)]
        files.write_text("".join(f"{f}\n" for f in photos))
        teacher = {"distill_from": str(needs(NATURAL_MAE))} if config.distill_from else {}  # the shared stand-in
        return {"data": [str(files)], "batch_size": 4, "img_size": 32, "decoder_dim": 32, "decoder_depth": 1,
                "decoder_num_heads": 2, "samples_per_epoch": None, **teacher}  # one crop per image: two steps
    if kind == "classify":
        train = rsscn7_files(2 * 4 * config.accum_iter)
        return {"train": str(write_csv(train, tmp_path / "train.csv")), "data": None, "img_size": 32,
                "test": str(write_csv(rsscn7_files(7, seed=1), tmp_path / "test.csv")), "batch_size": 4}
    if kind == "segment":
        images = dubai_crops(tmp_path / "dubai", 1, size=round(64 / config.resize))  # 64 px at the recipe's scale
        return {"images": [str(images)], "val_images": [str(images)], "palette": "dubai", "crop_size": 32,
                "stride": None, "batch_size": 2, "channels": 32, "aux_channels": 16 if config.aux_channels else 0}
    xml = neon_crop(neon, tmp_path / "neon")
    return {"train": str(xml), "images": str(xml.parent), "val": str(xml), "val_images": None, "format": "voc",
            "tile_size": 64, "tile_overlap": 32, "batch_size": 2, "fpn_channels": 32, "roi_samples": 32,
            "classes": None, "empty_tiles": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_two_steps_with_its_own_augmentation_and_schedule(recipe: Path, tmp_path: Path,
                                                                               request: pytest.FixtureRequest):
    kind = task_of(recipe)
    neon = request.getfixturevalue("neon") if kind == "detect" else None
    original = build_config(CONFIGS[kind], recipe)
    overrides = {**TINY, **RUN, **recipe_data(kind, original, tmp_path, neon), "output": str(tmp_path / "run")}
    if kind == "pretrain":
        overrides.pop("eval_every")
        overrides.pop("taps")
    if kind == "classify":
        overrides.pop("taps")
    config = build_config(CONFIGS[kind], recipe, overrides)
    for key in ("rand_augment", "mixup", "cutmix", "reprob", "smoothing", "layer_decay", "drop_path", "accum_iter",
                "warmup_epochs", "lr_schedule", "blr", "weight_decay", "scale_range", "photometric", "mask_ratio",
                "norm_pix_loss", "min_scale", "min_lr", "betas", "global_pool", "aux_weight", "pyramid", "box_head",
                "rpn_proposals"):
        if hasattr(original, key):
            assert getattr(config, key) == getattr(original, key), key  # the recipe's own, not switched off
    run = {"pretrain": pretrain.pretrain, "classify": classify.finetune_classify, "segment": segment.finetune_segment,
           "detect": detect.finetune_detect}[kind](config)
    steps = [r["step"] for r in read_log(run) if "loss" in r]
    assert steps == [1, 2], steps
    assert all(np.isfinite(r["loss"]) for r in read_log(run) if "loss" in r)
    if original.__dict__.get("distill_from"):  # the two losses of teacher guidance, logged apart
        assert all("loss_distill" in r and "loss_reconstruction" in r for r in read_log(run) if "loss" in r)
    if kind == "classify":
        assert json.loads((run / "metrics.json").read_text())["images"] == 7
    if kind == "detect":  # the box head the recipe names is the one trained and saved
        model, info, _ = detect.load_detector(run)
        assert info.box_head == original.box_head
        assert isinstance(model.roi_heads.box_head, FastRCNNConvFCHead) == (original.box_head == "conv")
        kept = {mode: (model.train(mode == "train").rpn.pre_nms_top_n(), model.rpn.post_nms_top_n())
                for mode in ("train", "test")}
        default = {"train": (2000, 2000), "test": (1000, 1000)}  # torchvision's
        proposals = original.rpn_proposals
        assert kept == (default if proposals is None else {m: (proposals, proposals) for m in default})


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_classifier_norms_and_head_train_at_the_full_rate_with_either_pooling(pool: str):
    """With cls-token pooling the final norm is in use: it sits above the blocks (1.0), not with block 11."""
    _, model, groups = build_task("classify", ClassifyConfig(model="vit_base", patch_size=16, img_size=224,
                                                             global_pool=pool, layer_decay=0.65))
    scale = {n: g["lr_scale"] for g in groups for p in g["params"] for n, q in model.named_parameters() if q is p}
    used_norm = "norm.weight" if pool == "token" else "fc_norm.weight"
    assert scale[used_norm] == 1.0 and scale["head.weight"] == 1.0
    assert scale["blocks.11.norm1.weight"] == pytest.approx(0.65)
    assert scale["pos_embed"] == pytest.approx(0.65 ** 13)
