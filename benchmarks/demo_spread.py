"""The seed-to-seed spread behind ``cspt demo``'s verdict: the demo's own pipeline, both arms, several seeds.

Writes the demo's embedded pipeline (``cspt.demo.demo_spec``: the same stages, data and budgets) with
``seeds: [0, ..., N-1]`` and runs it with ``cspt pipeline`` (each arm at each seed is a chain of its own:
its pretraining, fine-tuning and evaluation all seeded). Then prints, per seed, the held-out mAP@0.5 of
each arm, the paired difference (CSPT minus direct) and its mean, standard deviation and 95% interval
(Student's t; with ``--arms random direct cspt`` also the natural source against random
initialisation), and the spread of one run's difference (2 x the standard deviation of the paired
differences): the number the demo records in ``src/cspt/recipes/evidence/demo.yaml`` so that its
verdict on a single run is only as strong as this evidence. Also the held-out MAE loss of stage 2
before and after, per seed.

With ``--frozen-encoder``, each chain also fine-tunes its detector with the encoder frozen
(``layer_decay: 0``) and the comparison is of those: a probe of what each start's features give.

Usage: python benchmarks/demo_spread.py [--seeds 4] [--output runs/demo_spread] [--init SOURCE]
       [--arms random direct cspt] [--frozen-encoder]
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

from cspt.demo import demo_source, demo_spec  # noqa: E402

TASK = "neon_trees"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--output", default="runs/demo_spread")
    parser.add_argument("--init", help="source checkpoint (default: the demo's)")
    parser.add_argument("--arms", nargs="+", default=["direct", "cspt"], choices=["random", "direct", "cspt"],
                        help="add random to measure the natural source against random initialisation too")
    parser.add_argument("--frozen-encoder", action="store_true",
                        help="also fine-tune every arm's detector with its encoder frozen (layer_decay 0: the "
                             "encoder's lr is 0; the pyramid and heads train) and compare those: what each start's "
                             "features give on their own")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = {**demo_spec(args.output, demo_source(args.init)), "seeds": list(range(args.seeds)), "arms": args.arms}
    spec.pop("evidence", None)  # this benchmark measures the evidence; it does not judge by it
    task = TASK
    if args.frozen_encoder:  # beside the demo's own fine-tune, so the finished stages of both are reused
        task = f"{TASK}_frozen"
        spec["finetune"][task] = {**spec["finetune"][TASK], "layer_decay": 0.0}
    run_and_compare(spec, task, "map50", "mAP@0.5")


if __name__ == "__main__":
    main()
