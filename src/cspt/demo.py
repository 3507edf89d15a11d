"""``cspt demo``: the whole CSPT chain on real NEON aerial scenes, on a laptop CPU, in two arms.

``direct``: source checkpoint -> tree-crown detection fine-tuning on the two Yellowstone
scenes; ``cspt``: source checkpoint -> consecutive MAE pretraining of the tiny ViT (912
steps of the reproduction's recipe) on random crops of the Yellowstone scenes and a
California one -> the same fine-tuning. Both are scored (mAP@0.5, and precision/recall
at the score threshold with the best F1 on training tiles) on two scenes of other sites
(Florida, California) that no stage trains on; stage 2 also reports its MAE loss on
them before and after (no gradient) -> the pipeline report, arms side by side.

The imagery and its boxes ship inside the ``deepforest`` wheel on PyPI (MIT licence).
The README's set-up line downloads the wheel into ``.cache/wheels``; otherwise the demo
downloads it once with pip. Its data files are read straight from the wheel.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

import yaml

from cspt.config import read_yaml
from cspt.data.detection import read_annotations
from cspt.errors import CsptError
from cspt.weights.packaged import PACKAGED, is_packaged_name, packaged_path

log = logging.getLogger("cspt")

DEEPFOREST = "deepforest==2.1.0"
WHEEL = "deepforest-2.1.0-py3-none-any.whl"
NEON_SCENES = ("OSBS_029.png", "SOAP_031.png", "SOAP_061.png", "2019_YELL_2_541000_4977000_image_crop.png",
               "2019_YELL_2_528000_4978000_image_crop2.png")
TRAIN_SCENES = ("2019_YELL_2_541000_4977000_image_crop",  #: 279 tree crowns, Yellowstone
                "2019_YELL_2_528000_4978000_image_crop2")  #: 574 more
HELD_OUT = ("OSBS_029", "SOAP_061")  #: 61 + 37 crowns from Florida and California
#: the unlabelled imagery of consecutive pretraining: the training scenes and SOAP_031 (no held-out scene)
PRETRAIN_SCENES = tuple(f"{stem}.png" for stem in TRAIN_SCENES) + ("SOAP_031.png",)
#: stage 2, the reproduction's recipe (docs/reproduction.md: blr 1.5e-3 at batch 32, 24 epochs of 38 steps, the
#: warm-up 5% of the steps) on random crops of the three unlabelled scenes: 912 steps (crops spread by area; drawn
#: from each scene alike, they did no better: benchmarks/README.md, demo_spread.py). The demo crops them from the
#: detector's own tiles (``demo_spec``), so the encoder adapts at the scale detection sees
PRETRAIN = {"epochs": 24, "samples_per_epoch": 38 * 32, "batch_size": 32, "blr": 1.5e-3, "warmup_epochs": 1.2}
#: what a source checkpoint decides when there is one (the tiny recipes spell out the shared tiny MAE's)
SHAPE_FIELDS = ("model", "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "decoder_dim", "decoder_depth",
                "decoder_num_heads")
#: ``--init random``: no natural-image source (every arm starts from random initialisation)
RANDOM_INIT = "random"
DETECT_EPOCHS = 2  #: over the two Yellowstone scenes' 568 tiles: 284 steps of 4 per arm


def demo_source(init: str | None) -> str | None:
    """The demo's natural-image source: ``--init``, else ``$CSPT_SOURCE_CHECKPOINT``, else the tiny MAE that ships
    with cspt; None only for ``--init random``. A missing packaged file stops the demo in one line."""
    chosen = init or os.environ.get("CSPT_SOURCE_CHECKPOINT") or PACKAGED["name"]
    if chosen == RANDOM_INIT:
        return None
    if is_packaged_name(chosen) and not packaged_path(chosen).is_file():
        raise CsptError(f"no natural-image source: {chosen} is missing from this installation of cspt; pass "
                        "--init CHECKPOINT (or set $CSPT_SOURCE_CHECKPOINT), or --init random to run the chain "
                        "without one")
    return chosen


def cache_dir() -> Path:
    """The cspt cache: ``$CSPT_CACHE``, else ``~/.cache/cspt``."""
    return Path(os.environ.get("CSPT_CACHE", Path.home() / ".cache" / "cspt"))


def wheel_folders() -> list[Path]:
    """Where the README's set-up (``.cache/wheels`` of the checkout) or an earlier demo (the cspt cache) put
    downloaded wheels: the working directory's, the source checkout's (an editable install), the cache."""
    checkout = Path(__file__).resolve().parents[2]
    return [Path(".cache") / "wheels", checkout / ".cache" / "wheels", cache_dir() / "wheels"]


def deepforest_wheel() -> Path:
    """The wheel from the set-up's ``.cache/wheels``, the cspt cache, or downloaded once with pip."""
    for candidate in (folder / WHEEL for folder in wheel_folders()):
        if candidate.is_file():
            return candidate
    target = cache_dir() / "wheels"
    target.mkdir(parents=True, exist_ok=True)
    log.info("downloading the %s wheel for its NEON scenes", DEEPFOREST)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEEPFOREST, "-d", tmp],
                                capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode or not wheels:
            reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise CsptError(f"cannot download {DEEPFOREST} from PyPI for the demo imagery ({reason}); without a "
                            f"network, put {WHEEL} into {target}")
        wheels[0].replace(target / WHEEL)
    return target / WHEEL


def neon_scenes(target: Path | None = None) -> Path:
    """A folder with the NEON scenes (PNG) and their tree-crown boxes (VOC XML) from the wheel."""
    target = target or cache_dir() / "neon"
    wanted = list(NEON_SCENES) + [f"{stem}.xml" for stem in (*TRAIN_SCENES, *HELD_OUT)]
    if all((target / name).is_file() for name in wanted):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(deepforest_wheel()) as wheel:
        for name in wanted:
            (target / name).write_bytes(wheel.read(f"deepforest/data/{name}"))
    return target


def crowns_csv(scenes: Path, stems: tuple[str, ...], target: Path) -> Path:
    """One CSV of the crowns of scenes ``stems``, every one labelled Tree (SOAP_061 says Alive/Dead)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "xmin", "ymin", "xmax", "ymax", "label"])
        for stem in stems:
            scene = read_annotations(scenes / f"{stem}.xml", scenes).scenes[0]
            writer.writerows([scene.image.name, *map(float, box), "Tree"] for box in scene.boxes)
    return target


def recipe(name: str) -> dict:
    """A recipe YAML that ships with cspt (``cspt/recipes/NAME``), as a dict."""
    with resources.as_file(resources.files("cspt") / "recipes" / name) as path:
        return read_yaml(path)


def shaped_like(options: dict, patch: int | None, grid: int) -> dict:
    """A tiny recipe for a source of patch size ``patch``: its shape fields dropped (the checkpoint gives them)
    and the input ``grid`` patches wide, as the tiny ViT's (patch 8) is; unchanged without a source."""
    if patch is None:
        return options
    size_key = "tile_size" if "tile_size" in options else "img_size"
    return {**{k: v for k, v in options.items() if k not in SHAPE_FIELDS}, size_key: grid * patch}


def demo_spec(output: str, init: str | None) -> dict:
    """The embedded pipeline: both arms; no stage trains on a held-out scene (stage 2 only scores them)."""
    from cspt.weights.load import load_checkpoint

    scenes = neon_scenes()
    data = Path(output) / "data"
    patch = load_checkpoint(init).arch["patch_size"] if init else None
    detect = {**shaped_like(recipe("detect_tiny_cpu.yaml"), patch, 16), "task": "detect",
              "train": str(crowns_csv(scenes, TRAIN_SCENES, data / "train.csv")), "images": str(scenes),
              "val": str(crowns_csv(scenes, HELD_OUT, data / "held_out.csv")), "classes": ["Tree"],
              "epochs": DETECT_EPOCHS, "warmup_epochs": DETECT_EPOCHS / 8, "eval_every": DETECT_EPOCHS,
              "device": "auto"}
    # crops from the detector's tiles (57-128 px of a 128 px tile for a 64 px model): from the default 4x-input
    # tiles, shrunk 1.8-4x, the held-out MAE loss rose at every seed (benchmarks/README.md, demo_spread.py)
    pretrain = {**shaped_like(recipe("pretrain_tiny_cpu.yaml"), patch, 8), **PRETRAIN,
                "tile_size": detect["tile_size"], "data": [str(scenes / name) for name in PRETRAIN_SCENES],
                "eval_data": [str(scenes / f"{stem}.png") for stem in HELD_OUT],  # scored, never trained on
                "vis_every": PRETRAIN["epochs"], "device": "auto"}
    return {"output": output, "source": init, "arms": ["direct", "cspt"], "pretrain": pretrain,
            "finetune": {"neon_trees": detect}, "evidence": recipe("evidence/demo.yaml")}


def run_demo(output: str = "runs/demo", init: str | None = None) -> Path:
    """Run the embedded NEON pipeline; returns the report path."""
    from cspt.pipeline import run_pipeline

    init = demo_source(init)
    if init is None:
        log.info("--init random: no natural-image source; the tiny ViT starts from random initialisation, so this "
                 "shows the chain, not the benefit of a natural-image source")
    else:
        log.info("source checkpoint: %s%s", init, f" ({PACKAGED['terms']})" if init == PACKAGED["name"] else "")
    spec_path = Path(output) / "pipeline.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(yaml.safe_dump(demo_spec(output, init), sort_keys=False))
    return run_pipeline(spec_path)
