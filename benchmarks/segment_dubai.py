"""Does consecutive pretraining help segmentation? Direct against CSPT on the shared Dubai tiles, several seeds.

One ``cspt pipeline`` (the mechanism of the demo and the reproduction): the packaged natural-image
tiny MAE as the source; arm ``direct`` fine-tunes it, arm ``cspt`` first continues its MAE
pretraining on the *images* of the training tiles (labels unused; the demo's stage-2 recipe: 912
steps at blr 1.5e-3 on random crops), and both fine-tune the segmentation recipe
(``configs/segment/tiny_cpu.yaml``) on tiles 1-5 and are scored (mIoU) on tiles 6-7, which no stage
trains on; stage 2 also reports its MAE loss on the tiles 6-7 images before and after. Every arm at
every seed is a chain of its own. Prints per seed the mIoU of each arm, the paired difference, its
mean, spread and 95% interval.

Usage: python benchmarks/segment_dubai.py [--seeds 4] [--output runs/segment_dubai] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paired import run_and_compare  # noqa: E402

from cspt.demo import PRETRAIN, recipe  # noqa: E402
from cspt.weights.packaged import PACKAGED  # noqa: E402

TRAIN_TILES, VAL_TILES = range(1, 6), range(6, 8)
TASK = "dubai"


def spec_of(output: str, dubai: Path, seeds: int) -> dict:
    train = [str(dubai / f"tile_{i}") for i in TRAIN_TILES]
    val = [str(dubai / f"tile_{i}") for i in VAL_TILES]
    # stage 2 crops from the default tiles (4 x the input, 256 px: crops shrunk 1.8-4x), about the scale at which
    # the segmenter sees its quarter-resolution tiles
    pretrain = {**recipe("pretrain_tiny_cpu.yaml"), **PRETRAIN, "data": [f"{t}/images" for t in train],
                "eval_data": [f"{t}/images" for t in val], "vis_every": PRETRAIN["epochs"], "device": "auto"}
    segment = {**recipe("segment_tiny_cpu.yaml"), "task": "segment", "images": train, "val_images": val,
               "device": "auto"}
    return {"output": output, "source": PACKAGED["name"], "arms": ["direct", "cspt"], "pretrain": pretrain,
            "finetune": {TASK: segment}, "seeds": list(range(seeds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--output", default="runs/segment_dubai")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_and_compare(spec_of(args.output, Path(args.shared) / "data" / "dubai", args.seeds), TASK, "miou", "mIoU")


if __name__ == "__main__":
    main()
