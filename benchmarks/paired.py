"""Seeded arms of one pipeline, compared pair by pair: the shared part of the seed benchmarks."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cspt.pipeline import run_pipeline
from cspt.report import T_95


@dataclass(frozen=True)
class SeedScores:
    """One seed: each arm's score on the task, and stage 2's held-out MAE loss before and after."""

    seed: int
    scores: dict[str, float]  #: arm -> metric
    before: float
    after: float


def run_and_compare(spec: dict[str, Any], task: str, metric: str, label: str) -> None:
    """Write ``spec`` (with its ``seeds``) to ``OUTPUT/pipeline.yaml``, run it with ``cspt pipeline`` (finished
    stages are skipped), and print the paired comparison of its arms on ``task``'s ``metric``."""
    output = Path(spec["output"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run_pipeline(output / "pipeline.yaml")
    print_paired(arm_scores(output, spec["seeds"], task, metric, spec["arms"]), label)


def arm_scores(output: Path, seeds: list[int], task: str, metric: str,
               arms: Sequence[str] = ("direct", "cspt")) -> list[SeedScores]:
    """Per seed: each arm's ``metric`` on ``task`` and stage 2's held-out MAE loss before and after."""
    rows = []
    for seed in seeds:
        scores = {arm: json.loads((output / f"{arm}_s{seed}" / task / "metrics.json").read_text())[metric]
                  for arm in arms}
        heldout = json.loads((output / f"pretrain_cspt_s{seed}" / "heldout.json").read_text())
        rows.append(SeedScores(seed, scores, heldout[0]["mae_loss"], heldout[-1]["mae_loss"]))
    return rows


def paired_interval(differences: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample std and the half-width of the 95% interval (Student's t) of paired differences."""
    mean, spread = statistics.mean(differences), statistics.stdev(differences)
    return mean, spread, T_95[min(len(differences) - 1, len(T_95)) - 1] * spread / len(differences) ** 0.5


def print_paired(rows: list[SeedScores], label: str) -> None:
    """The per-seed table, each arm's mean and std, the paired differences' (CSPT minus direct, and direct minus
    random when there is a random arm) mean, std and 95% interval, and one run's spread of CSPT minus direct."""
    arms = list(rows[0].scores)
    names = {"random": "random init", "direct": "natural source", "cspt": "CSPT"}
    print(f"| seed | {' | '.join(f'{names.get(a, a)} {label}' for a in arms)} | CSPT - direct | held-out MAE loss "
          "before | after |")
    print("|---|" + "---|" * (len(arms) + 3))
    for row in rows:
        values = " | ".join(f"{row.scores[a]:.4f}" for a in arms)
        print(f"| {row.seed} | {values} | {row.scores['cspt'] - row.scores['direct']:+.4f} | {row.before:.4f} | "
              f"{row.after:.4f} |")
    print("\nmeans: " + ", ".join(f"{names.get(a, a)} {statistics.mean(r.scores[a] for r in rows):.4f} ± "
                                  f"{statistics.stdev(r.scores[a] for r in rows):.4f}" for a in arms))
    pairs = [("cspt", "direct")] + ([("direct", "random")] if "random" in arms else [])
    for better, base in pairs:
        differences = [r.scores[better] - r.scores[base] for r in rows]
        mean, spread, half = paired_interval(differences)
        print(f"paired difference {names[better]} - {names[base]}: mean {mean:+.4f}, std {spread:.4f}, 95% interval "
              f"{mean - half:+.4f} to {mean + half:+.4f} over {len(differences)} seeds")
    cspt_spread = statistics.stdev(r.scores["cspt"] - r.scores["direct"] for r in rows)
    print(f"spread of one run's difference CSPT - direct (2 x std): {2 * cspt_spread:.4f}")
    print(f"held-out MAE loss: before {statistics.mean(r.before for r in rows):.4f}, after "
          f"{statistics.mean(r.after for r in rows):.4f} (means over seeds)")
