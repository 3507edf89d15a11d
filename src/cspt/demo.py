"""``cspt demo``: consecutive pretraining on real NEON aerial scenes, on a laptop CPU.

The imagery ships inside the ``deepforest`` wheel on PyPI (MIT licence); the demo
downloads that wheel once with pip and keeps the scenes in a cache folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

from cspt.config import PretrainConfig, build_config
from cspt.errors import CsptError

log = logging.getLogger("cspt")

DEEPFOREST = "deepforest==2.1.0"
NEON_SCENES = ("OSBS_029.png", "SOAP_031.png", "SOAP_061.png", "2019_YELL_2_541000_4977000_image_crop.png",
               "2019_YELL_2_528000_4978000_image_crop2.png")
DEMO_EPOCHS = 20
#: the natural-image MAE this project's workspace provides, if it is there
SHARED_CHECKPOINT = Path("../shared/weights/mae_vit_tiny_p8_64_tinyimagenet.pth")


def cache_dir() -> Path:
    return Path(os.environ.get("CSPT_CACHE", Path.home() / ".cache" / "cspt"))


def neon_scenes(target: Path | None = None) -> Path:
    """A folder of the NEON RGB scenes from the deepforest wheel (downloaded once)."""
    target = target or cache_dir() / "neon"
    if all((target / name).is_file() for name in NEON_SCENES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log.info("downloading the %s wheel for its NEON scenes", DEEPFOREST)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEEPFOREST,
                                 "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode or not wheels:
            reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise CsptError(f"cannot download {DEEPFOREST} from PyPI for the demo imagery ({reason})")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in NEON_SCENES:
                (target / name).write_bytes(wheel.read(f"deepforest/data/{name}"))
    return target


def demo_config(output: str, init: str | None) -> PretrainConfig:
    recipe = resources.files("cspt") / "recipes" / "pretrain_tiny_cpu.yaml"
    with resources.as_file(recipe) as path:
        return build_config(PretrainConfig, path, {"output": output, "init": init, "epochs": DEMO_EPOCHS,
                                                   "vis_every": DEMO_EPOCHS, "data": [str(neon_scenes())]})


def run_demo(output: str = "runs/demo", init: str | None = None) -> Path:
    """Consecutive pretraining of the tiny recipe on NEON scenes; returns the run directory."""
    from cspt.tasks.pretrain import pretrain

    if init is None and SHARED_CHECKPOINT.is_file():
        init = str(SHARED_CHECKPOINT)
    if init is None:
        log.info("no source checkpoint given (--init): pretraining from scratch")
    return pretrain(demo_config(output, init))
