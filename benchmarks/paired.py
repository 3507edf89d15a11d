"""Seeded arms of one pipeline, compared pair by pair: the shared part of the seed benchmarks."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

from cspt.pipeline import run_pipeline
from cspt.report import T_95


def run_and_compare(spec: dict[str, Any], task: str, metric: str, label: str) -> None:
    """Write ``spec`` (with its ``seeds``) to ``OUTPUT/pipeline.yaml``, run it with ``cspt pipeline`` (finished
    stages are skipped), and print the paired comparison of its arms on ``task``'s ``metric``."""
    output = Path(spec["output"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run_pipeline(output / "pipeline.yaml")
    print_paired(arm_scores(output, spec["seeds"], task, metric), label)


def arm_scores(output: Path, seeds: list[int], task: str, metric: str) -> list[tuple[int, float, float, float,
                                                                                      float]]:
    """Per seed: the direct and the CSPT arm's ``metric`` on ``task``, and stage 2's held-out MAE loss before
    and after."""
    rows = []
    for seed in seeds:
        score = {arm: json.loads((output / f"{arm}_s{seed}" / task / "metrics.json").read_text())[metric]
                 for arm in ("direct", "cspt")}
        heldout = json.loads((output / f"pretrain_cspt_s{seed}" / "heldout.json").read_text())
        rows.append((seed, score["direct"], score["cspt"], heldout[0]["mae_loss"], heldout[-1]["mae_loss"]))
    return rows


def print_paired(rows: list[tuple[int, float, float, float, float]], label: str) -> None:
    """The per-seed table, the paired difference's mean, std and 95% interval, and one run's spread."""
    print(f"| seed | direct {label} | CSPT {label} | CSPT - direct | held-out MAE loss before | after |")
    print("|---|---|---|---|---|---|")
    differences = []
    for seed, direct, cspt, before, after in rows:
        differences.append(cspt - direct)
        print(f"| {seed} | {direct:.4f} | {cspt:.4f} | {cspt - direct:+.4f} | {before:.4f} | {after:.4f} |")
    mean, spread = statistics.mean(differences), statistics.stdev(differences)
    half = T_95[min(len(differences) - 1, len(T_95)) - 1] * spread / len(differences) ** 0.5
    print(f"\nmeans: direct {statistics.mean(r[1] for r in rows):.4f} ± {statistics.stdev(r[1] for r in rows):.4f}, "
          f"CSPT {statistics.mean(r[2] for r in rows):.4f} ± {statistics.stdev(r[2] for r in rows):.4f}")
    print(f"paired difference: mean {mean:+.4f}, std {spread:.4f}, 95% interval {mean - half:+.4f} to "
          f"{mean + half:+.4f} over {len(differences)} seeds")
    print(f"spread of one run's difference (2 x std): {2 * spread:.4f}")
    print(f"held-out MAE loss: before {statistics.mean(r[3] for r in rows):.4f}, after "
          f"{statistics.mean(r[4] for r in rows):.4f} (means over seeds)")
