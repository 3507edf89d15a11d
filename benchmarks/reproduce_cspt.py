"""Reproduce the CSPT claim at small scale, and measure the later methods beside it, as one ``cspt pipeline``.

On one fixed stratified train/test split of RSSCN7 (written to ``OUTPUT/split``; the test
images reach no stage, not even unlabelled pretraining), the arms of ``cspt pipeline``:

- ``random``:  supervised fine-tuning from random initialisation;
- ``direct``:  the natural-image MAE checkpoint, fine-tuned (the usual ImageNet route);
- ``cspt``:    the natural checkpoint, MAE-pretrained further on the training images (labels
  unused), then fine-tuned;
- ``scratch``: MAE from random initialisation on the same images and budget, then fine-tuned;
- ``cspt_teacher``: CSPT with the natural checkpoint as a frozen feature teacher (GFM's loss);
- ``fresh_teacher``: a randomly initialised student guided by that teacher (GFM's setting);
- ``cspt_replay``: CSPT with source-domain images mixed into every batch.

The pipeline runs every arm at every seed (``--seeds``) and every pretraining arm at every
budget (``--budgets``, in epochs), fine-tunes each on every label fraction of the training
split (``--fractions``) and scores the test split (OA, AA, kappa), and probes each frozen
encoder by kNN: on the target (the labelled fraction as memory bank, the test split as
queries) and on the source domain (Tiny-ImageNet val: forgetting; the direct arm's score is
the natural checkpoint's own). Tiny-ImageNet val is split three ways, so that the images the
replay arm trains on are neither the kNN memory bank nor its queries. Everything is chosen
before any test score is seen; nothing is tuned on the test split.

Writes ``pipeline.yaml`` (the whole experiment as a pipeline config), the pipeline's stages
and ``report.html``, then ``results.json``, ``results.md`` (tables) and ``results.png`` /
``gain_vs_compute.png`` (plots) to ``--output``, and copies the last four to ``--docs`` when
given. Finished stages are skipped on a rerun, so an interrupted run continues where it stopped.

    python benchmarks/reproduce_cspt.py --output runs/reproduce --docs docs/reproduction   # ~1.5 h, 2 CPU cores
    python benchmarks/reproduce_cspt.py --output runs/reproduce_quick --quick              # a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from cspt.config import read_yaml
from cspt.data.classification import LabelledSet, keep_label_fraction, read_labelled, stratified_split, write_label_csv
from cspt.data.files import find_images
from cspt.errors import CsptError
from cspt.pipeline import PRETRAINING_ARMS, Stage, run_pipeline, stage_state
from cspt.pipeline import plan as pipeline_stages
from cspt.report import mean_and_spread

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs"
ARMS = ("random", "direct", "cspt", "scratch", "cspt_teacher", "fresh_teacher", "cspt_replay")
ARM_TITLES = {"random": "(a) random init, supervised", "direct": "(b) natural MAE -> fine-tune",
              "cspt": "(c) CSPT: natural MAE -> consecutive MAE -> fine-tune",
              "scratch": "(d) MAE from scratch -> fine-tune",
              "cspt_teacher": "(e) CSPT + frozen natural teacher",
              "fresh_teacher": "(f) fresh student + frozen natural teacher",
              "cspt_replay": "(g) CSPT + source replay"}
#: the pipeline's probes: kNN on the target at each label fraction, and on the source domain
SOURCE_KNN = "source_knn"
#: Tiny-ImageNet val, split per class: replay images, kNN memory bank, and the rest as kNN queries
SOURCE_SPLIT = {"replay": 0.4, "bank": 0.3}
log = logging.getLogger("reproduce")


@dataclasses.dataclass
class Plan:
    """What one invocation runs."""

    data: Path
    source: Path
    source_data: Path
    output: Path
    arms: list[str]
    seeds: list[int]
    fractions: list[float]
    budgets: list[int]  #: pretraining epochs; the last is the main table's
    blr: float  #: the pretraining arms' base learning rate
    replay_fraction: float
    finetune_steps: int
    batch_size: int
    per_class: int | None  #: --quick: images per class in each split
    source_classes: int | None  #: --quick: the first classes of the source set only


# ---------------------------------------------------------------- splits


def make_split(plan: Plan) -> dict[str, LabelledSet]:
    """The fixed target split (and its labelled fractions) and the three-way source split, on disk."""
    folder = plan.output / "split"
    if (folder / "source_queries.csv").is_file():
        target_classes = read_labelled(folder / "train.csv").classes  # one class order for every set
        source_classes = read_labelled(folder / "source_bank.csv").classes
        return {path.stem: read_labelled(path, source_classes if path.stem.startswith("source") else target_classes)
                for path in folder.glob("*.csv")}
    data = first_per_class(read_labelled(plan.data), plan.per_class and 2 * plan.per_class)
    halves = stratified_split(data, {"train": 0.5}, 0, plan.data)
    sets = {"train": halves["train"], "test": halves["test"]}
    for fraction in plan.fractions:
        sets[fraction_name(fraction)] = keep_label_fraction(halves["train"], fraction, seed=0)
    source = read_labelled(plan.source_data)
    if plan.source_classes:
        kept = source.subset([i for i, label in enumerate(source.labels) if label < plan.source_classes])
        source = LabelledSet(kept.paths, kept.labels, source.classes[:plan.source_classes])
    thirds = stratified_split(first_per_class(source, plan.per_class), SOURCE_SPLIT, 0, plan.source_data)
    sets |= {"source_replay": thirds["replay"], "source_bank": thirds["bank"], "source_queries": thirds["test"]}
    for name, subset in sets.items():
        write_label_csv(subset, folder / f"{name}.csv")
    (folder / "unlabelled.txt").write_text("".join(f"{path}\n" for path in sets["train"].paths))
    (folder / "source_replay.txt").write_text("".join(f"{path}\n" for path in sets["source_replay"].paths))
    return sets


def first_per_class(data: LabelledSet, count: int | None) -> LabelledSet:
    """The first ``count`` images of each class (all of them for ``None``)."""
    if not count:
        return data
    members = [[i for i, label in enumerate(data.labels) if label == c] for c in range(len(data.classes))]
    return data.subset(sorted(i for indices in members for i in indices[:count]))


def fraction_name(fraction: float) -> str:
    return f"train_{round(fraction * 100):g}pct"


def check_no_test_images(pretraining_data: list[str], test: LabelledSet) -> None:
    """Refuse a pretraining input that would read any image that is later scored."""
    seen = {path.resolve() for path in find_images(pretraining_data)}
    leaked = sorted(seen & {Path(path).resolve() for path in test.paths})
    if leaked:
        raise CsptError(f"{pretraining_data[0]}: {len(leaked)} test images in the pretraining data, e.g. {leaked[0]}")


# ---------------------------------------------------------------- the experiment as a pipeline


def pipeline_spec(plan: Plan) -> dict[str, Any]:
    """The whole experiment as one ``cspt pipeline`` config."""
    split = plan.output / "split"
    pretrain = {**read_yaml(RECIPES / "pretrain" / "tiny_cpu.yaml"), "data": [str(split / "unlabelled.txt")],
                "warmup_epochs": max(1.0, min(plan.budgets) / 10), "blr": plan.blr, "batch_size": plan.batch_size,
                "vis_every": max(plan.budgets)}
    classify = read_yaml(RECIPES / "classify" / "tiny_cpu.yaml")
    finetune, probes = {}, {}
    for fraction in plan.fractions:
        name = fraction_name(fraction)
        labelled = len(read_labelled(split / f"{name}.csv"))
        epochs = math.ceil(plan.finetune_steps / max(1, labelled // plan.batch_size))
        finetune[name] = {**classify, "task": "classify", "train": str(split / f"{name}.csv"),
                          "test": str(split / "test.csv"), "epochs": epochs, "warmup_epochs": max(1, epochs // 10),
                          "batch_size": plan.batch_size}
        probes[f"knn_{name}"] = {"probe": "knn", "train": str(split / f"{name}.csv"),
                                 "test": str(split / "test.csv"), "num_workers": 0}
    probes[SOURCE_KNN] = {"probe": "knn", "train": str(split / "source_bank.csv"),
                          "test": str(split / "source_queries.csv"), "num_workers": 0}
    return {"output": str(plan.output), "source": str(plan.source), "arms": plan.arms, "seeds": plan.seeds,
            "budgets": plan.budgets, "pretrain": pretrain,
            "replay": {"data": [str(split / "source_replay.txt")], "fraction": plan.replay_fraction},
            "finetune": finetune, "probes": probes}


def run(plan: Plan, sets: dict[str, LabelledSet]) -> dict[str, Any]:
    """Run the experiment's pipeline (skipping finished stages); its results as one dictionary."""
    started = time.perf_counter()
    spec = pipeline_spec(plan)
    check_no_test_images(spec["pretrain"]["data"], sets["test"])
    check_no_test_images(spec["replay"]["data"], sets["source_queries"])
    check_no_test_images(spec["replay"]["data"], sets["source_bank"])
    config = plan.output / "pipeline.yaml"
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_pipeline(config)
    stages = pipeline_stages(spec)
    return {"chains": collect(stages), "stage_seconds": sum(stage_state(stage)["seconds"] for stage in stages),
            "seconds": time.perf_counter() - started}


def collect(stages: list[Stage]) -> dict[str, dict[str, Any]]:
    """Per chain: arm, budget, seed, pretraining seconds, and the scores of its fine-tunes and probes."""
    chains: dict[str, dict[str, Any]] = {}
    for stage in stages:
        chain = stage.chain
        if chain is None:
            continue
        row = chains.setdefault(chain.label, {"arm": chain.arm, "epochs": chain.epochs, "seed": chain.seed,
                                              "pretrain_seconds": 0.0})
        if stage.kind == "pretrain":
            row["pretrain_seconds"] = stage_state(stage)["seconds"]
            continue
        metrics = json.loads((stage.run_dir / "metrics.json").read_text())
        row[stage.name.split("/", 1)[1]] = {key: metrics[key] for key in ("oa", "aa", "kappa")}
    return chains


# ---------------------------------------------------------------- tables and plots


def rows_of(results: dict[str, Any], arm: str, epochs: int | None) -> list[dict[str, Any]]:
    """The chains (one per seed) of ``arm`` at ``epochs`` (``None`` for the arms that do not pretrain)."""
    epochs = epochs if arm in PRETRAINING_ARMS else None
    return [row for row in results["chains"].values() if row["arm"] == arm and row["epochs"] == epochs]


def mean(rows: list[dict[str, Any]], *keys: str) -> float:
    """The mean over seeds of ``row[keys[0]][keys[1]]...``."""
    return statistics.mean(dig(row, keys) for row in rows)


def dig(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        row = row[key]
    return row


def mean_spread(rows: list[dict[str, Any]], *keys: str) -> str:
    """Mean ± std over seeds of ``row[keys[0]][keys[1]]...``; ``-`` where the chains have no such score."""
    if not rows or not all(keys[0] in row for row in rows):
        return "-"
    return mean_and_spread([dig(row, keys) for row in rows], digits=3)


def source_drop(results: dict[str, Any], arm: str, epochs: int) -> float:
    """Source-domain kNN lost against the natural checkpoint (arm direct), in OA points."""
    return mean(rows_of(results, "direct", None), SOURCE_KNN, "oa") - mean(rows_of(results, arm, epochs), SOURCE_KNN,
                                                                           "oa")


def tables(plan: Plan, results: dict[str, Any], sets: dict[str, LabelledSet]) -> str:
    """The Markdown tables: every arm, budget and label fraction; then each method against plain CSPT."""
    arms = [arm for arm in ARMS if arm in plan.arms]
    lines = [f"Target: {len(sets['train'])}/{len(sets['test'])} train/test images, {len(sets['train'].classes)} "
             "classes; label fractions of the training half: "
             + ", ".join(f"{f:.0%} ({len(sets[fraction_name(f)])} images)" for f in plan.fractions)
             + f". Source kNN: {len(sets['source_bank'])} memory-bank and {len(sets['source_queries'])} query images "
             f"of {len(sets['source_bank'].classes)} classes; replay draws from {len(sets['source_replay'])} others. "
             f"Seeds {', '.join(map(str, plan.seeds))} (mean ± std over seeds). Pretraining at blr {plan.blr:g}.", "",
             "| arm | pretraining epochs | labels | OA | kappa | target kNN OA | source kNN OA | pretraining min |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        for epochs in plan.budgets if arm in PRETRAINING_ARMS else [None]:
            rows = rows_of(results, arm, epochs)
            minutes = f"{mean(rows, 'pretrain_seconds') / 60:.1f}" if epochs else "-"
            for fraction in plan.fractions:
                name = fraction_name(fraction)
                lines.append(f"| {ARM_TITLES[arm]} | {epochs or '-'} | {fraction:.0%} | "
                             f"{mean_spread(rows, name, 'oa')} | {mean_spread(rows, name, 'kappa')} | "
                             f"{mean_spread(rows, 'knn_' + name, 'oa')} | {mean_spread(rows, SOURCE_KNN, 'oa')} | "
                             f"{minutes} |")
    if "cspt" in arms and "direct" in arms:
        lines += ["", "Each method against plain CSPT at the same budget (means over seeds; the goal: at least "
                  "+1.5 OA points over CSPT at the smallest label fraction, with at most half CSPT's source kNN drop; "
                  "drop = the natural checkpoint's source kNN minus the arm's):", "",
                  "| arm | pretraining epochs | labels | OA - CSPT OA | OA - direct OA | source kNN drop | "
                  "drop / CSPT's drop | goal met |", "|---|---|---|---|---|---|---|---|"]
        for arm in [a for a in arms if a in PRETRAINING_ARMS]:
            for epochs in plan.budgets:
                cspt_drop, drop = source_drop(results, "cspt", epochs), source_drop(results, arm, epochs)
                ratio = f"{drop / cspt_drop:.2f}" if cspt_drop > 0 else "-"
                for index, fraction in enumerate(plan.fractions):
                    name = fraction_name(fraction)
                    ours = mean(rows_of(results, arm, epochs), name, "oa")
                    over_cspt = ours - mean(rows_of(results, "cspt", epochs), name, "oa")
                    over_direct = ours - mean(rows_of(results, "direct", None), name, "oa")
                    goal = "-" if index or arm == "cspt" else \
                        "yes" if over_cspt >= 0.015 and drop <= max(cspt_drop, 0.0) / 2 else "no"
                    lines.append(f"| {ARM_TITLES[arm]} | {epochs} | {fraction:.0%} | {100 * over_cspt:+.1f} | "
                                 f"{100 * over_direct:+.1f} | {100 * drop:+.1f} | {ratio} | {goal} |")
    return "\n".join(lines) + "\n"


def plots(plan: Plan, results: dict[str, Any], folder: Path) -> None:
    """``results.png``: OA and kNN per arm at the main budget; ``gain_vs_compute.png``: OA gain over the direct arm
    and source kNN drop against pretraining minutes, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [arm for arm in ARMS if arm in plan.arms]
    main_budget = plan.budgets[-1]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    width = 0.8 / len(arms)
    panels = [(name, key, f"{title}, {fraction:.0%} labels") for fraction in plan.fractions[:1]
              for name, key, title in ((fraction_name(fraction), "oa", "fine-tuned OA"),
                                       ("knn_" + fraction_name(fraction), "oa", "target kNN OA"))]
    for ax, (name, key, title) in zip(axes, panels + [(SOURCE_KNN, "oa", "source kNN OA (forgetting)")]):
        for i, arm in enumerate(arms):
            values = [dig(r, (name, key)) for r in rows_of(results, arm, main_budget) if name in r]
            if not values:  # the random arm has no encoder to probe before fine-tuning
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(i * width, statistics.mean(values), width, yerr=spread, capsize=3, color=f"C{i}",
                   label=ARM_TITLES[arm])
        ax.set_xticks([])
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel(f"test accuracy (pretraining arms: {main_budget} epochs)")
    axes[2].set_ylabel("query accuracy, 200 classes")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(folder / "results.png", dpi=120)
    plt.close(fig)

    methods = [arm for arm in arms if arm in PRETRAINING_ARMS]
    minutes = {arm: [mean(rows_of(results, arm, e), "pretrain_seconds") / 60 for e in plan.budgets] for arm in methods}
    fig, axes = plt.subplots(1, len(plan.fractions) + 1, figsize=(5 * (len(plan.fractions) + 1), 4.2))
    for ax, fraction in zip(axes, plan.fractions):
        name = fraction_name(fraction)
        direct = mean(rows_of(results, "direct", None), name, "oa")
        for arm in methods:
            gains = [100 * (mean(rows_of(results, arm, e), name, "oa") - direct) for e in plan.budgets]
            ax.plot(minutes[arm], gains, "o-", color=f"C{arms.index(arm)}", label=ARM_TITLES[arm])
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"OA gain over (b), {fraction:.0%} labels", fontsize=10)
        ax.set_xlabel("pretraining minutes (2 CPU cores)")
        ax.set_ylabel("OA points")
    ax = axes[-1]
    for arm in methods:
        drops = [100 * source_drop(results, arm, e) for e in plan.budgets]
        ax.plot(minutes[arm], drops, "o-", color=f"C{arms.index(arm)}", label=ARM_TITLES[arm])
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_title("source kNN drop against the natural checkpoint", fontsize=10)
    ax.set_xlabel("pretraining minutes (2 CPU cores)")
    ax.set_ylabel("OA points lost")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(folder / "gain_vs_compute.png", dpi=120)
    plt.close(fig)


OUTPUTS = ("results.md", "results.json", "results.png", "gain_vs_compute.png")


def write_outputs(plan: Plan, sets: dict[str, LabelledSet], results: dict[str, Any], command: str,
                  docs: Path | None) -> None:
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    header = (f"# CSPT reproduction results\n\nCommand: `{command}`\n\nMachine: {machine}. Pipeline stages: "
              f"{results['stage_seconds'] / 60:.1f} min in all; this invocation: {results['seconds'] / 60:.1f} min "
              "(finished stages are not run again).\n\n")
    (plan.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (plan.output / "results.md").write_text(header + tables(plan, results, sets))
    plots(plan, results, plan.output)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            shutil.copy(plan.output / name, docs / name)


def main(argv: list[str] | None = None) -> None:
    import sys

    shared = ROOT.parent / "shared"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(shared / "data" / "rsscn7"))
    parser.add_argument("--source", default=str(shared / "weights" / "mae_vit_tiny_p8_64_tinyimagenet.pth"))
    parser.add_argument("--source-data", default=str(shared / "data" / "tiny-imagenet-val"),
                        help="labelled source-domain images: forgetting (kNN) and the replay arm's images")
    parser.add_argument("--output", required=True)
    parser.add_argument("--docs", default=None, help="also copy the tables and plots here")
    parser.add_argument("--quick", action="store_true", help="a few images per class, one seed, minimal budgets")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--budgets", type=int, nargs="+", default=[12, 24],
                        help="pretraining epochs of every pretraining arm (the last is the main table's)")
    parser.add_argument("--blr", type=float, default=1.5e-3, help="their base learning rate")
    parser.add_argument("--replay-fraction", type=float, default=0.25)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.seeds, args.budgets, args.finetune_steps, args.batch_size = [0], [1, 2], 4, 4
    plan = Plan(Path(args.data), Path(args.source), Path(args.source_data), Path(args.output), args.arms, args.seeds,
                args.fractions, sorted(args.budgets), args.blr, args.replay_fraction, args.finetune_steps,
                args.batch_size, 8 if args.quick else None, 10 if args.quick else None)
    for path, what in ((plan.data, "--data"), (plan.source, "--source"), (plan.source_data, "--source-data")):
        if not path.exists():
            raise SystemExit(f"reproduce_cspt: error: {what} {path} does not exist")
    try:
        sets = make_split(plan)
        results = run(plan, sets)
    except CsptError as err:  # bad data or checkpoint: one line, as the cspt command gives
        raise SystemExit(f"reproduce_cspt: error: {err}") from None
    command = "python benchmarks/reproduce_cspt.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_outputs(plan, sets, results, command, Path(args.docs) if args.docs else None)
    print((plan.output / "results.md").read_text())


if __name__ == "__main__":
    main()
