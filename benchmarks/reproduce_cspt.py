"""Reproduce the CSPT claim at small scale: does consecutive pretraining beat fine-tuning the natural checkpoint?

Arms, on one fixed stratified train/test split of RSSCN7 (written to ``OUTPUT/split``;
the test images reach no stage, not even unlabelled pretraining):

- ``random``:  supervised fine-tuning from random initialisation;
- ``natural``: the natural-image MAE checkpoint, fine-tuned (the usual ImageNet route);
- ``cspt``:    the natural checkpoint, MAE-pretrained further on the training images
  (labels unused), then fine-tuned;
- ``scratch``: MAE from random initialisation on the same images and budget, then fine-tuned.

Every arm is fine-tuned on each label fraction of the training split and scored on the
test split (OA, AA, kappa), and its frozen encoder is scored by kNN (the labelled
fraction as memory bank). The main table repeats over ``--seeds``. The ``cspt`` arm is
also swept over the pretraining budget (``--budgets``, 0 = the ``natural`` arm) and the
learning rate (``--sweep-blr`` at ``--sweep-blr-epochs``) at the first seed: the
paper's "how long to keep pretraining". Everything is chosen before any test score is
seen; nothing is tuned on the test split.

Writes ``results.json``, ``results.md`` (tables) and ``results.png``/``sweep.png``
(plots) to ``--output``, and copies the last three to ``--docs`` when given. Finished
stages are skipped on a rerun, so an interrupted run continues where it stopped.

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

from cspt.config import ClassifyConfig, PretrainConfig, ProbeConfig, make_config, read_yaml
from cspt.data.classification import LabelledSet, keep_label_fraction, read_labelled, stratified_split, write_label_csv
from cspt.data.files import find_images
from cspt.data.normalisation import default_normalisation
from cspt.errors import CsptError
from cspt.models.vit import build_encoder, resolve_arch
from cspt.tasks.classify import finetune_classify
from cspt.tasks.pretrain import pretrain
from cspt.tasks.probe import FrozenEncoder, frozen_encoder, probe_encoder

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs"
ARMS = ("random", "natural", "cspt", "scratch")
ARM_TITLES = {"random": "(a) random init, supervised", "natural": "(b) natural MAE -> fine-tune",
              "cspt": "(c) natural MAE -> consecutive MAE -> fine-tune (CSPT)",
              "scratch": "(d) MAE from scratch -> fine-tune"}
log = logging.getLogger("reproduce")


@dataclasses.dataclass
class Plan:
    """What one invocation runs."""

    data: Path
    source: Path
    output: Path
    seeds: list[int]
    fractions: list[float]
    budget: int  #: pretraining epochs of the cspt and scratch arms in the main table
    blr: float  #: their base learning rate
    budgets: list[int]  #: cspt sweep over epochs (first seed)
    sweep_blr: list[float]  #: cspt sweep over blr (first seed) ...
    sweep_blr_epochs: int  #: ... at this many pretraining epochs
    finetune_steps: int
    batch_size: int
    per_class: int | None  #: --quick: images per class in each split


# ---------------------------------------------------------------- split


def make_split(plan: Plan) -> dict[str, LabelledSet]:
    """The fixed 50/50 stratified split (and the labelled fractions of its training half), on disk."""
    folder = plan.output / "split"
    if (folder / "test.csv").is_file():
        classes = read_labelled(folder / "train.csv").classes  # one class order for every set
        return {path.stem: read_labelled(path, classes) for path in folder.glob("*.csv")}
    data = read_labelled(plan.data)
    if plan.per_class:  # --quick: the first images of each class
        members = [[i for i, label in enumerate(data.labels) if label == c] for c in range(len(data.classes))]
        data = data.subset(sorted(i for indices in members for i in indices[:2 * plan.per_class]))
    halves = stratified_split(data, {"train": 0.5}, 0, plan.data)
    sets = {"train": halves["train"], "test": halves["test"]}
    for fraction in plan.fractions:
        sets[fraction_name(fraction)] = keep_label_fraction(halves["train"], fraction, seed=0)
    for name, subset in sets.items():
        write_label_csv(subset, folder / f"{name}.csv")
    (folder / "unlabelled.txt").write_text("".join(f"{path}\n" for path in sets["train"].paths))
    return sets


def fraction_name(fraction: float) -> str:
    return f"train_{round(fraction * 100):g}pct"


def check_no_test_images(pretraining_data: list[str], test: LabelledSet) -> None:
    """Refuse a pretraining stage that would read any test image."""
    seen = {path.resolve() for path in find_images(pretraining_data)}
    leaked = sorted(seen & {Path(path).resolve() for path in test.paths})
    if leaked:
        raise CsptError(f"{pretraining_data[0]}: {len(leaked)} test images in the pretraining data, e.g. {leaked[0]}")


# ---------------------------------------------------------------- stages


def pretrain_stage(plan: Plan, sets: dict[str, LabelledSet], init: Path | None, epochs: int, blr: float,
                   seed: int, name: str) -> tuple[Path, float]:
    """MAE on the training images (labels unused); returns the exported encoder and the seconds it took."""
    run_dir = plan.output / "pretrain" / name
    encoder = run_dir / "encoder.safetensors"
    if encoder.is_file():
        return encoder, json.loads((run_dir / "timing.json").read_text())["seconds"]
    data = [str(plan.output / "split" / "unlabelled.txt")]
    check_no_test_images(data, sets["test"])
    values = {**read_yaml(RECIPES / "pretrain" / "tiny_cpu.yaml"), "data": data, "init": str(init) if init else None,
              "epochs": epochs, "warmup_epochs": max(1.0, epochs / 10), "blr": blr, "seed": seed,
              "batch_size": plan.batch_size, "vis_every": max(1, epochs), "output": str(run_dir)}
    start = time.perf_counter()
    pretrain(make_config(PretrainConfig, values, f"pretraining {name}"))
    seconds = time.perf_counter() - start
    (run_dir / "timing.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return encoder, seconds


def finetune_stage(plan: Plan, sets: dict[str, LabelledSet], init: Path | None, fraction: float, seed: int,
                   name: str) -> dict[str, Any]:
    """Fine-tune on a labelled fraction, score the test split; returns OA, AA, kappa and the seconds."""
    run_dir = plan.output / "finetune" / name / fraction_name(fraction)
    result = run_dir / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    train = sets[fraction_name(fraction)]
    steps_per_epoch = max(1, len(train) // plan.batch_size)
    values = {**read_yaml(RECIPES / "classify" / "tiny_cpu.yaml"), "init": str(init) if init else None,
              "train": str(plan.output / "split" / f"{fraction_name(fraction)}.csv"),
              "test": str(plan.output / "split" / "test.csv"),
              "epochs": math.ceil(plan.finetune_steps / steps_per_epoch), "seed": seed,
              "batch_size": plan.batch_size, "output": str(run_dir)}
    values["warmup_epochs"] = max(1, values["epochs"] // 10)
    start = time.perf_counter()
    finetune_classify(make_config(ClassifyConfig, values, f"fine-tuning {name}"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = {key: metrics[key] for key in ("oa", "aa", "kappa")} | {"seconds": time.perf_counter() - start}
    result.write_text(json.dumps(summary) + "\n")
    return summary


def knn_stage(plan: Plan, sets: dict[str, LabelledSet], encoder: FrozenEncoder, fraction: float) -> float:
    """kNN accuracy on the test split, the labelled fraction as memory bank."""
    splits = {"train": sets[fraction_name(fraction)], "test": sets["test"]}
    metrics, _ = probe_encoder("knn", encoder, splits, ProbeConfig(num_workers=0), torch.device("cpu"))
    return metrics["oa"]


def random_encoder(seed: int, shape: FrozenEncoder) -> FrozenEncoder:
    """A randomly initialised encoder of ``shape``'s architecture."""
    torch.manual_seed(seed)
    arch = resolve_arch({"img_size": shape.img_size, "embed_dim": shape.model.embed_dim,
                         "depth": len(shape.model.blocks), "num_heads": shape.model.blocks[0].attn.num_heads,
                         "patch_size": shape.model.patch_embed.patch_size[0]}, None)
    mean, std = default_normalisation(3)
    return FrozenEncoder(build_encoder(arch), shape.img_size, mean, std)


def evaluate_arm(plan: Plan, sets: dict[str, LabelledSet], name: str, init: Path | None, seed: int,
                 knn_encoder: FrozenEncoder) -> dict[str, Any]:
    """Fine-tune and kNN-probe one encoder at every label fraction."""
    cache = plan.output / "knn" / f"{name}.json"
    knn = json.loads(cache.read_text()) if cache.is_file() else {}
    rows = {}
    for fraction in plan.fractions:
        key = fraction_name(fraction)
        if key not in knn:
            knn[key] = knn_stage(plan, sets, knn_encoder, fraction)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(knn) + "\n")
        rows[key] = finetune_stage(plan, sets, init, fraction, seed, name) | {"knn": knn[key]}
        log.info("%s, %s: OA %.3f, kNN %.3f", name, key, rows[key]["oa"], rows[key]["knn"])
    return rows


def run(plan: Plan, sets: dict[str, LabelledSet]) -> dict[str, Any]:
    """Every stage of the plan on the split ``sets``; the results as one dictionary."""
    started = time.perf_counter()
    natural = frozen_encoder(ProbeConfig(checkpoint=str(plan.source)))
    results: dict[str, Any] = {"main": {}, "sweep": {}, "pretrain_seconds": {}}
    for seed in plan.seeds:
        for arm in ARMS:
            name = f"{arm}_s{seed}" if arm in ("random", "natural") else f"{arm}_e{plan.budget}_blr{plan.blr:g}_s{seed}"
            if arm == "random":
                init, encoder = None, random_encoder(seed, natural)
            elif arm == "natural":
                init, encoder = plan.source, natural
            else:
                init, seconds = pretrain_stage(plan, sets, plan.source if arm == "cspt" else None, plan.budget,
                                               plan.blr, seed, name)
                results["pretrain_seconds"][name] = seconds
                encoder = frozen_encoder(ProbeConfig(checkpoint=str(init)))
            results["main"].setdefault(arm, {})[seed] = evaluate_arm(plan, sets, name, init, seed, encoder)
    seed = plan.seeds[0]
    sweep = [(epochs, plan.blr) for epochs in plan.budgets] + [(plan.sweep_blr_epochs, blr) for blr in plan.sweep_blr]
    for epochs, blr in sweep:
        if epochs == 0:
            rows = results["main"]["natural"][seed]
        else:
            name = f"cspt_e{epochs}_blr{blr:g}_s{seed}"
            init, seconds = pretrain_stage(plan, sets, plan.source, epochs, blr, seed, name)
            results["pretrain_seconds"][name] = seconds
            rows = evaluate_arm(plan, sets, name, init, seed, frozen_encoder(ProbeConfig(checkpoint=str(init))))
        results["sweep"][f"{epochs}@{blr:g}"] = {"epochs": epochs, "blr": blr, **rows}
    results["seconds"] = time.perf_counter() - started
    return results


# ---------------------------------------------------------------- report


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def tables(plan: Plan, results: dict[str, Any], sets: dict[str, LabelledSet]) -> str:
    """The Markdown tables of the main comparison and of the budget sweep."""
    lines = [f"Train/test split: {len(sets['train'])}/{len(sets['test'])} images, "
             f"{len(sets['train'].classes)} classes; label fractions of the training half: "
             + ", ".join(f"{f:.0%} ({len(sets[fraction_name(f)])} images)" for f in plan.fractions)
             + f". Seeds {', '.join(map(str, plan.seeds))} (mean ± std over seeds). Pretraining of (c) and (d): "
             f"{plan.budget} epochs at blr {plan.blr:g}.", "",
             "| arm | labels | OA | AA | kappa | kNN OA |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        for fraction in plan.fractions:
            rows = [results["main"][arm][seed][fraction_name(fraction)] for seed in plan.seeds]
            cells = [mean_spread([row[key] for row in rows]) for key in ("oa", "aa", "kappa", "knn")]
            lines.append(f"| {ARM_TITLES[arm]} | {fraction:.0%} | " + " | ".join(cells) + " |")
    lines += ["", f"Sweep of the CSPT arm (seed {plan.seeds[0]}; 0 epochs = arm (b)):", "",
              "| pretraining epochs | blr | labels | OA | kappa | kNN OA |", "|---|---|---|---|---|---|"]
    for entry in results["sweep"].values():
        for fraction in plan.fractions:
            row = entry[fraction_name(fraction)]
            lines.append(f"| {entry['epochs']} | {entry['blr']:g} | {fraction:.0%} | {row['oa']:.3f} | "
                         f"{row['kappa']:.3f} | {row['knn']:.3f} |")
    return "\n".join(lines) + "\n"


def plots(plan: Plan, results: dict[str, Any], folder: Path) -> None:
    """``results.png``: OA and kNN per arm and fraction; ``sweep.png``: the CSPT arm against its budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    width = 0.8 / len(ARMS)
    for ax, key, title in zip(axes, ("oa", "knn"), ("fine-tuned OA", "kNN OA (frozen encoder)")):
        for i, arm in enumerate(ARMS):
            values = [[results["main"][arm][s][fraction_name(f)][key] for s in plan.seeds] for f in plan.fractions]
            means = [statistics.mean(v) for v in values]
            spread = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            positions = [j + (i - (len(ARMS) - 1) / 2) * width for j in range(len(plan.fractions))]
            ax.bar(positions, means, width, yerr=spread, capsize=3, label=ARM_TITLES[arm])
        ax.set_xticks(range(len(plan.fractions)), [f"{f:.0%} labels" for f in plan.fractions])
        ax.set_title(title)
    axes[0].set_ylabel("test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(folder / "results.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    budget_sweep = sorted((e for e in results["sweep"].values() if e["blr"] == plan.blr), key=lambda e: e["epochs"])
    for fraction in plan.fractions:
        key = fraction_name(fraction)
        epochs = [e["epochs"] for e in budget_sweep]
        ax.plot(epochs, [e[key]["oa"] for e in budget_sweep], "o-", label=f"fine-tuned OA, {fraction:.0%} labels")
        ax.plot(epochs, [e[key]["knn"] for e in budget_sweep], "s--", label=f"kNN OA, {fraction:.0%} labels")
    ax.set_xlabel(f"consecutive MAE pretraining epochs (blr {plan.blr:g})")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sweep.png", dpi=120)
    plt.close(fig)


def write_outputs(plan: Plan, sets: dict[str, LabelledSet], results: dict[str, Any], command: str,
                  docs: Path | None) -> None:
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    stages = sum(json.loads(path.read_text())["seconds"] for path in [*plan.output.glob("pretrain/*/timing.json"),
                                                                        *plan.output.glob("finetune/*/*/result.json")])
    header = (f"# CSPT reproduction results\n\nCommand: `{command}`\n\nMachine: {machine}. Pretraining and "
              f"fine-tuning stages: {stages / 60:.1f} min in all; this invocation: {results['seconds'] / 60:.1f} min "
              "(finished stages are not run again).\n\n")
    (plan.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (plan.output / "results.md").write_text(header + tables(plan, results, sets))
    plots(plan, results, plan.output)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "results.json", "results.png", "sweep.png"):
            shutil.copy(plan.output / name, docs / name)


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rsscn7"))
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "weights" /
                                               "mae_vit_tiny_p8_64_tinyimagenet.pth"))
    parser.add_argument("--output", required=True)
    parser.add_argument("--docs", default=None, help="also copy the tables and plots here")
    parser.add_argument("--quick", action="store_true", help="a few images per class, one seed, minimal budgets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--budget", type=int, default=50, help="pretraining epochs of arms (c) and (d)")
    parser.add_argument("--blr", type=float, default=1.5e-3, help="their base learning rate")
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 25, 50, 100])
    parser.add_argument("--sweep-blr", type=float, nargs="*", default=[1.5e-4], help="other blr for arm (c)")
    parser.add_argument("--sweep-blr-epochs", type=int, default=25, help="their pretraining epochs")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("cspt").setLevel(logging.WARNING)
    if args.quick:
        args.seeds, args.budget, args.budgets, args.finetune_steps, args.batch_size = [0], 1, [0, 1, 2], 4, 4
        args.sweep_blr_epochs = 1
        args.sweep_blr = args.sweep_blr[:1]
    plan = Plan(Path(args.data), Path(args.source), Path(args.output), args.seeds, args.fractions, args.budget,
                args.blr, args.budgets, args.sweep_blr, args.sweep_blr_epochs, args.finetune_steps, args.batch_size,
                8 if args.quick else None)
    for path, what in ((plan.data, "--data"), (plan.source, "--source")):
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
