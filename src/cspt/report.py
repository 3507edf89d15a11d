"""Run and pipeline reports: ``report.md`` and ``report.html`` (figures linked beside them).

A report is a list of blocks (headings, paragraphs, tables, figures) rendered twice,
Markdown and HTML, both linking the figures relative to the report (a report of 64 runs
stays a small page; copy its folder to share it).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from cspt.data.bands import display_order  # noqa: E402
from cspt.data.pixels import read_contract  # noqa: E402
from cspt.engine.run_dir import saved_config  # noqa: E402
from cspt.engine.run_log import read_log  # noqa: E402
from cspt.errors import CsptError  # noqa: E402

log = logging.getLogger("cspt")

Block = tuple  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", path, caption)
WEIGHTS = {"classify": "classifier.json", "detect": "detector.json", "segment": "segmenter.json",
           "pretrain": "encoder.json"}
HEADLINE = {"classify": [("oa", "OA"), ("aa", "AA"), ("kappa", "kappa")],
            "detect": [("map50", "mAP@0.5"), ("map", "mAP@[.5:.95]")],
            "segment": [("miou", "mIoU"), ("oa", "OA"), ("mean_f1", "mean F1"),
                        ("invalid_pixels", "validation pixels without data (not scored)")],
            "probe": [("oa", "probe OA"), ("kappa", "probe kappa")]}


def run_kind(run_dir: Path) -> str:
    """What a run directory holds, from the weights it exported."""
    for kind, name in WEIGHTS.items():
        if (run_dir / name).is_file():
            return kind
    return "pretrain" if (run_dir / "reconstructions").is_dir() else "unknown"


def headline(run_dir: Path, kind: str) -> dict[str, float]:
    """The task's headline metrics from ``metrics.json`` (pretraining: the last logged loss)."""
    if kind == "pretrain":
        losses = [r["loss"] for r in read_log(run_dir) if "loss" in r]
        values = {"final MAE loss": losses[-1]} if losses else {}
        heldout = run_dir / "heldout.json"
        if heldout.is_file():  # data the stage never trained on, same crops and masks each time
            history = json.loads(heldout.read_text())
            first, last = history[0], history[-1]
            values.update({f"held-out MAE loss, epoch {first['epoch']}": first["mae_loss"],
                           f"held-out MAE loss, epoch {last['epoch']}": last["mae_loss"],
                           "held-out MAE loss change": last["mae_loss"] - first["mae_loss"]})
            if "pool_mae_loss" in first:  # the same measure on crops of the images it trained on
                values["pool MAE loss change"] = last["pool_mae_loss"] - first["pool_mae_loss"]
        return values
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    values = {label: metrics[key] for key, label in HEADLINE.get(kind, []) if key in metrics}
    held_out = metrics.get("operating_point", {}).get("validation")
    if held_out:  # detection at the threshold chosen on the training scenes
        threshold = metrics["operating_point"]["threshold"]
        values[f"precision at score {threshold:.2f}"] = held_out["precision"]
        values[f"recall at score {threshold:.2f}"] = held_out["recall"]
    return values


def plot_curves(run_dir: Path, target: Path) -> Path | None:
    """Training loss and learning rate against the optimizer step."""
    records = [r for r in read_log(run_dir) if "loss" in r]
    if not records:
        return None
    steps = [r["step"] for r in records]
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(steps, [r["loss"] for r in records])
    loss_ax.set(xlabel="step", ylabel="loss", title="training loss")
    lr_ax.plot(steps, [r["lr"] for r in records], color="tab:orange")
    lr_ax.set(xlabel="step", ylabel="lr", title="learning rate")
    evals = [r for r in read_log(run_dir) if r.get("event") == "eval"]
    metrics = [k for k in (evals[0] if evals else {}) if k.startswith(("val_", "knn_"))]
    if metrics:  # validation metrics or kNN probes, on a second axis
        twin = loss_ax.twinx()
        for metric in metrics:
            twin.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", label=metric)
        twin.legend(fontsize=7)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def example_figures(run_dir: Path, kind: str) -> list[tuple[Path, str]]:
    """Pictures of the model at work: reconstructions before/after, confusion matrix, boxes, an overlay."""
    if kind == "pretrain":
        figures = []
        contract = read_contract(run_dir)
        bands = ""
        groups = (saved_config(run_dir) or {}).get("band_groups")
        if contract is not None and groups:
            bands = f"; then the first image band group by band group ({'; '.join(groups)})"
            if contract.in_chans > 3:
                bands = f"; {display_order(contract.spectral, contract.in_chans)[1]}{bands}"
        elif contract is not None and contract.in_chans > 3:
            names = [b.name for b in contract.spectral] if contract.spectral else range(1, contract.in_chans + 1)
            bands = (f"; {display_order(contract.spectral, contract.in_chans)[1]}, then the first image band by "
                     f"band ({', '.join(map(str, names))})")
        for prefix, what in (("epoch_", "training images"), ("heldout_epoch_", "held-out images (never trained on)")):
            grids = sorted((run_dir / "reconstructions").glob(f"{prefix}*.png"))
            chosen = [grids[0], grids[-1]] if len(grids) > 1 else grids
            figures += [(g, f"MAE reconstructions of {what} at epoch {int(g.stem.rsplit('_', 1)[1])} (original | "
                            f"masked | reconstruction | reconstruction with the visible patches){bands}")
                        for g in chosen]
        return figures
    if kind == "classify" and (run_dir / "confusion.png").is_file():
        return [(run_dir / "confusion.png", "confusion matrix on the test split")]
    example = _detection_example(run_dir) if kind == "detect" else (
        _segmentation_example(run_dir) if kind == "segment" else None)
    split_map = run_dir / "splits" / "map.png"
    return ([example] if example else []) + ([(split_map, "where the training and validation regions lie on "
                                                           "their images (splits/*.csv)")]
                                             if kind == "segment" and split_map.is_file() else [])


def _detection_example(run_dir: Path) -> tuple[Path, str] | None:
    """The drawing the detection run made of its first validation scene (``examples/labelled/``)."""
    drawn = sorted((run_dir / "examples" / "labelled").glob("*.png"))
    if not drawn:
        return None
    info = json.loads((run_dir / WEIGHTS["detect"]).read_text())
    point = info.get("operating_point")
    threshold, chosen = (point or {}).get("threshold", 0.5), ""
    if point:
        held_out = point.get("validation", {})
        chosen = (f": the threshold of the best F1 on the {point['chosen_on']} (held-out precision "
                  f"{held_out.get('precision', 0):.2f}, recall {held_out.get('recall', 0):.2f})")
    return drawn[0], (f"detections scoring {threshold:.2f} or more on the held-out scene {drawn[0].stem}{chosen}; "
                      "green: they match a labelled object (IoU 0.5 or more), red: false alarms, cyan outline: "
                      "labelled objects missed")


def _segmentation_example(run_dir: Path) -> tuple[Path, str] | None:
    """The overlay the segmentation run made of its first validation tile (``examples/``)."""
    overlays = sorted((run_dir / "examples").glob("*_overlay.jpg"))
    if not overlays:
        return None
    return overlays[0], f"predicted classes over the held-out region of {overlays[0].stem.removesuffix('_overlay')}"


def lineage_lines(run_dir: Path, kind: str) -> list[str]:
    """The numbered stages of the lineage of a run's exported weights (none when it exported none)."""
    path = run_dir / WEIGHTS.get(kind, "")
    if not path.is_file():
        return []
    lines = []
    for number, stage in enumerate(json.loads(path.read_text()).get("lineage", []), 1):
        details = ", ".join(f"{k}={v}" for k, v in stage.items() if k not in ("stage", "config"))
        lines.append(f"{number}. {stage.get('stage')}: {details}")
    return lines


def run_blocks(run_dir: Path, name: str, figures: Path) -> list[Block]:
    """The report blocks of one run: headline metrics, curves, an example, lineage."""
    kind = run_kind(run_dir)
    blocks: list[Block] = [("h", 2, f"{name} ({kind})")]
    metrics = headline(run_dir, kind)
    if metrics:
        blocks.append(("table", ["metric", "value"],
                       [[k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in metrics.items()]))
    contract = read_contract(run_dir)
    if contract is not None:
        blocks.append(("p", f"Pixels (how files became inputs): {contract.describe()}."))
    slug = name.replace("/", "_")
    curves = plot_curves(run_dir, figures / f"{slug}_curves.png")
    if curves:
        blocks.append(("img", curves, "loss, learning rate (and validation metric) over training"))
    try:
        examples = example_figures(run_dir, kind)
    except Exception as err:  # a report must not fail for want of an illustration
        log.warning("%s: no example figure (%s)", run_dir, err)
        examples = []
    blocks += [("img", path, caption) for path, caption in examples if path.is_file()]
    lineage = lineage_lines(run_dir, kind)
    if lineage:
        blocks += [("p", "Lineage of the weights:"), ("list", lineage)]
    return blocks


def render_markdown(blocks: Sequence[Block], folder: Path) -> str:
    """The report as Markdown, its figures linked relative to ``folder`` (where the file is written)."""
    out = []
    for block in blocks:
        if block[0] == "h":
            out.append(f"{'#' * block[1]} {block[2]}\n")
        elif block[0] == "p":
            out.append(f"{block[1]}\n")
        elif block[0] == "list":
            out.append("".join(f"- {item}\n" for item in block[1]))
        elif block[0] == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
                       + "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows))
        elif block[0] == "img":
            out.append(f"![{block[2]}]({_relative(block[1], folder)})\n\n*{block[2]}*\n")
    return "\n".join(out)


def render_html(blocks: Sequence[Block], title: str, folder: Path) -> str:
    """The report as HTML, its figures linked relative to ``folder`` (where the page is written)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}</style></head><body>"]
    for block in blocks:
        if block[0] == "h":
            out.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            out.append(f"<p>{html.escape(block[1])}</p>")
        elif block[0] == "list":
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block[1]) + "</ul>")
        elif block[0] == "table":
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif block[0] == "img":
            out.append(f"<figure><img src='{html.escape(_relative(block[1], folder))}' alt='{html.escape(block[2])}'>"
                       f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    return "\n".join(out) + "</body></html>\n"


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def write_report(blocks: Sequence[Block], folder: Path, title: str) -> Path:
    """``report.md`` and ``report.html`` in ``folder``; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(f"# {title}\n\n" + render_markdown(blocks, folder))
    (folder / "report.html").write_text(render_html([("h", 1, title), *blocks], title, folder))
    return folder / "report.html"


def write_run_report(run_dir: str | Path) -> Path:
    """The report of one run directory (``cspt report RUN_DIR``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "log.jsonl").is_file():
        raise CsptError(f"{run_dir}: not a cspt run directory (no log.jsonl)")
    return write_report(run_blocks(run_dir, run_dir.name, run_dir / "figures"), run_dir, f"cspt run {run_dir.name}")


def gap_blocks(folder: Path) -> list[Block]:
    """The domain-gap section of a pipeline report: the source's and the pretrained encoder's gap, the share closed."""
    from cspt.metrics import gap_summary

    blocks: list[Block] = [("h", 2, "Domain gap")]
    for name, caption in (("source", "source checkpoint"), ("pretrained", "after consecutive pretraining")):
        path = folder / name / "gap.json"
        if path.is_file():
            blocks += [("p", f"{caption}:"), ("list", gap_summary(json.loads(path.read_text())))]
    closed = folder / "gap_closed.json"
    if closed.is_file():
        value = json.loads(closed.read_text())["frechet_distance_gap_closed_percent"]
        if value is not None:
            blocks.append(("p", f"Consecutive pretraining closed {value:.1f}% of the feature-distance gap "
                                "(target minus held-out source, Fréchet distance)."))
    return blocks


#: what an arm changes against the direct arm, in words
ARM_WORDS = {"cspt": "consecutive pretraining", "random": "random initialisation instead of the source"}


def arm_comparison(stages: Sequence[Any], evidence: dict[str, dict[str, Any]] | None = None) -> list[Block]:
    """Each fine-tune and probe of every arm beside the direct arm's, averaged over the seeds: the difference, and
    a verdict only as strong as the evidence (:func:`verdict`)."""
    groups: dict[tuple[Any, str], dict[int | None, dict[str, float]]] = {}  #: an arm at a budget, per seed
    for stage in stages:
        if stage.chain and stage.kind != "pretrain" and stage.run_dir.is_dir():
            task = stage.name.split("/", 1)[-1]
            group = dataclasses.replace(stage.chain, seed=None)
            groups.setdefault((group, task), {})[stage.chain.seed] = headline(stage.run_dir, stage.kind)
    blocks: list[Block] = []
    for (group, task), ours in groups.items():
        direct = next((seeds for (other, name), seeds in groups.items()
                       if name == task and other.arm == "direct"), None)
        label = group.label
        if group.arm == "direct" or direct is None:
            continue
        metrics = [metric for metric in next(iter(ours.values()))
                   if all(metric in h for h in [*ours.values(), *direct.values()])]
        if not metrics:
            continue
        rows = []
        for metric in metrics:
            arm_values, direct_values = [h[metric] for h in ours.values()], [h[metric] for h in direct.values()]
            rows.append([metric, mean_and_spread(direct_values), mean_and_spread(arm_values),
                         f"{statistics.mean(arm_values) - statistics.mean(direct_values):+.4f}"])
        what = ARM_WORDS.get(group.arm, f"pretraining as {group.arm}")
        paired = [ours[seed][metrics[0]] - direct[seed][metrics[0]] for seed in ours if seed in direct]
        record = (evidence or {}).get(task)
        blocks += [("h", 2, f"{task}: direct against {label}"),
                   ("p", f"{rows[0][0]}: direct {rows[0][1]}, {label} {rows[0][2]}, difference {rows[0][3]}: "
                         f"{verdict(what, paired, record if record and record['metric'] == rows[0][0] else None)}."),
                   ("table", ["metric", "direct", label, f"{label} - direct"], rows)]
    return blocks


def verdict(what: str, paired: Sequence[float], evidence: dict[str, Any] | None) -> str:
    """Words for the paired differences (arm minus direct, one per seed), no stronger than the evidence.

    Several seeds: "helped"/"hurt" when the 95% interval of the mean paired difference
    (Student's t) leaves out zero. One seed: when the difference goes beyond the spread a
    benchmark measured for this budget (``evidence``: ``spread``, the 95% half-width of one
    paired difference, and ``measured_by``). Otherwise the arms cannot be told apart.
    """
    mean = statistics.mean(paired)
    word = "helped" if mean > 0 else "hurt"
    if len(paired) > 1:
        half = T_95[min(len(paired) - 1, len(T_95)) - 1] * statistics.stdev(paired) / len(paired) ** 0.5
        interval = f"95% interval of the paired difference over {len(paired)} seeds: {mean - half:+.4f} to " \
                   f"{mean + half:+.4f}"
        return f"{what} {word} ({interval})" if abs(mean) > half else \
            f"the arms cannot be told apart ({interval}, which holds zero)"
    if evidence is None:
        return ("the arms cannot be told apart from one run each: no seed-to-seed spread is recorded for this "
                "budget (run the pipeline with seeds)")
    spread = float(evidence["spread"])
    source = f"{evidence['measured_by']}"
    if abs(mean) > spread:
        return f"{what} {word}, beyond the ±{spread:.4f} seed-to-seed spread of one run measured by {source}"
    return (f"the arms cannot be told apart at this budget: the difference lies within the ±{spread:.4f} "
            f"seed-to-seed spread of one run measured by {source}")


#: two-sided 95% Student's t quantiles for 1, 2, ... 10 degrees of freedom (beyond: about 2)
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_and_spread(values: Sequence[float], digits: int = 4) -> str:
    """``0.1234``, or ``0.1234 ± 0.0056`` (sample standard deviation) for more than one value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_pipeline_report(output: Path, stages: Sequence[Any], spec: dict[str, Any]) -> Path:
    """The pipeline's report: a metrics table of every stage and arm, then each run's section."""
    figures = output / "figures"
    rows = []
    for stage in stages:
        if stage.kind == "gap" or not stage.run_dir.is_dir():
            continue
        metrics = headline(stage.run_dir, stage.kind)
        rows.append([stage.name, stage.kind, stage.arm or "-",
                     ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "(none)"])
    source = spec.get("source")
    first = (f"Source checkpoint: {source}; arms: {', '.join(spec['arms'])}." if source else
             "No natural-image source: every arm starts from random initialisation, so 'direct' fine-tunes a random "
             f"ViT and a pretraining arm is MAE from scratch; arms: {', '.join(spec['arms'])}.")
    blocks: list[Block] = [("p", first),
                           ("h", 2, "Results"), ("table", ["stage", "task", "arm", "metrics"], rows)]
    blocks += arm_comparison(stages, spec.get("evidence"))
    for stage in stages:
        if stage.kind == "gap":
            blocks += gap_blocks(stage.run_dir)
        elif stage.run_dir.is_dir() and stage.kind != "probe":  # a probe's figures are its metrics, in the table
            blocks += run_blocks(stage.run_dir, stage.name, figures)
            write_run_report(stage.run_dir)
    return write_report(blocks, output, "cspt pipeline report")
