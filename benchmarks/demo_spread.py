"""The seed-to-seed spread behind ``cspt demo``'s verdict: the demo's own pipeline, both arms, several seeds.

Writes the demo's embedded pipeline (``cspt.demo.demo_spec``: the same stages, data and budgets) with
``seeds: [0, ..., N-1]`` and runs it with ``cspt pipeline`` (each arm at each seed is a chain of its own:
its pretraining, fine-tuning and evaluation all seeded). Then prints, per seed, the held-out mAP@0.5 of
each arm, the paired difference (CSPT minus direct) and its mean, standard deviation and 95% interval
(Student's t), and the spread of one run's difference (2 x the standard deviation of the paired
differences): the number the demo records in ``src/cspt/recipes/demo_evidence.yaml`` so that its
verdict on a single run is only as strong as this evidence. Also the held-out MAE loss of stage 2
before and after, per seed.

Usage: python benchmarks/demo_spread.py [--seeds 4] [--output runs/demo_spread] [--init SOURCE]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cspt.demo import demo_source, demo_spec  # noqa: E402
from cspt.pipeline import run_pipeline  # noqa: E402
from cspt.report import T_95  # noqa: E402

TASK = "neon_trees"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--output", default="runs/demo_spread")
    parser.add_argument("--init", help="source checkpoint (default: the demo's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = {**demo_spec(args.output, demo_source(args.init)), "seeds": list(range(args.seeds))}
    spec.pop("evidence", None)  # this benchmark measures the evidence; it does not judge by it
    path = Path(args.output) / "pipeline.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_pipeline(path)

    rows, differences = [], []
    for seed in spec["seeds"]:
        scores = {arm: json.loads((Path(args.output) / f"{arm}_s{seed}" / TASK / "metrics.json").read_text())["map50"]
                  for arm in ("direct", "cspt")}
        heldout = json.loads((Path(args.output) / f"pretrain_cspt_s{seed}" / "heldout.json").read_text())
        differences.append(scores["cspt"] - scores["direct"])
        rows.append((seed, scores["direct"], scores["cspt"], differences[-1], heldout[0]["mae_loss"],
                     heldout[-1]["mae_loss"]))
    print("| seed | direct mAP@0.5 | CSPT mAP@0.5 | CSPT - direct | held-out MAE loss before | after |")
    print("|---|---|---|---|---|---|")
    for seed, direct, cspt, difference, before, after in rows:
        print(f"| {seed} | {direct:.4f} | {cspt:.4f} | {difference:+.4f} | {before:.4f} | {after:.4f} |")
    mean, spread = statistics.mean(differences), statistics.stdev(differences)
    half = T_95[min(len(differences) - 1, len(T_95)) - 1] * spread / len(differences) ** 0.5
    print(f"\npaired difference: mean {mean:+.4f}, std {spread:.4f}, 95% interval {mean - half:+.4f} to "
          f"{mean + half:+.4f} over {len(differences)} seeds")
    print(f"spread of one run's difference (2 x std): {2 * spread:.4f}")
    print(f"held-out MAE loss: before {statistics.mean(r[4] for r in rows):.4f}, after "
          f"{statistics.mean(r[5] for r in rows):.4f} (means over seeds)")


if __name__ == "__main__":
    main()
