"""The field's metrics: OA, AA, Cohen's kappa and the confusion matrix for classification."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``confusion[true, predicted]`` counts."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix  # slow import: on use

    return multiclass_confusion_matrix(predictions, targets, num_classes).long()


def classification_metrics(predictions: torch.Tensor, targets: torch.Tensor,
                           classes: Sequence[str]) -> dict[str, Any]:
    """OA, AA (mean per-class recall over classes present), kappa, per-class scores, confusion.

    Kappa is Cohen's: ``(po - pe) / (1 - pe)`` with ``pe`` from the row and column totals.
    """
    confusion = confusion_matrix(predictions, targets, len(classes)).double()
    total = confusion.sum()
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    correct = confusion.diag()
    oa = (correct.sum() / total).item() if total else 0.0
    present = true_counts > 0
    recall = torch.where(present, correct / true_counts.clamp(min=1), torch.zeros_like(correct))
    precision = torch.where(predicted_counts > 0, correct / predicted_counts.clamp(min=1), torch.zeros_like(correct))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(correct))
    expected = (true_counts * predicted_counts).sum() / total**2 if total else torch.tensor(0.0)
    kappa = ((oa - expected) / (1 - expected)).item() if expected < 1 else 1.0
    per_class = {name: {"recall": recall[i].item(), "precision": precision[i].item(), "f1": f1[i].item(),
                        "support": int(true_counts[i])} for i, name in enumerate(classes)}
    return {"oa": oa, "aa": recall[present].mean().item() if present.any() else 0.0, "kappa": kappa,
            "images": int(total), "per_class": per_class, "classes": list(classes),
            "confusion": confusion.long().tolist()}


def write_confusion_csv(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> None:
    """Rows: true class; columns: predicted class."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, confusion):
            writer.writerow([name, *row])


def segmentation_confusion(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int,
                           ignore_index: int = 255) -> torch.Tensor:
    """``confusion[true, predicted]`` pixel counts; pixels whose target is ``ignore_index`` are left out."""
    keep = targets != ignore_index
    pairs = targets[keep].long() * num_classes + predictions[keep].long()
    return torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """mIoU, per-class IoU/F1/precision/recall, pixel OA and mean F1 from a pixel confusion matrix.

    A class absent from both the targets and the predictions has no IoU/F1 (``None``) and
    is left out of the means, as in mmseg.
    """
    confusion = confusion.double()
    correct, true_counts, predicted_counts = confusion.diag(), confusion.sum(1), confusion.sum(0)
    union = true_counts + predicted_counts - correct
    seen = union > 0
    iou = correct / union.clamp(min=1)
    f1 = 2 * correct / (true_counts + predicted_counts).clamp(min=1)
    total = confusion.sum()
    per_class = {}
    for i, name in enumerate(classes):
        per_class[name] = {"iou": iou[i].item() if seen[i] else None, "f1": f1[i].item() if seen[i] else None,
                           "precision": (correct[i] / predicted_counts[i]).item() if predicted_counts[i] else None,
                           "recall": (correct[i] / true_counts[i]).item() if true_counts[i] else None,
                           "support": int(true_counts[i])}
    return {"miou": iou[seen].mean().item() if seen.any() else 0.0,
            "oa": (correct.sum() / total).item() if total else 0.0,
            "mean_f1": f1[seen].mean().item() if seen.any() else 0.0,
            "pixels": int(total), "per_class": per_class, "classes": list(classes),
            "confusion": confusion.long().tolist()}


def voc_ap(recall: torch.Tensor, precision: torch.Tensor) -> float:
    """Area under the precision envelope, all points (VOC 2010+)."""
    recall = torch.cat([torch.tensor([0.0]), recall.double(), torch.tensor([1.0])])
    precision = torch.cat([torch.tensor([0.0]), precision.double(), torch.tensor([0.0])])
    precision = precision.flip(0).cummax(0).values.flip(0)
    steps = torch.nonzero(recall[1:] != recall[:-1]).squeeze(1)
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def match_detections(boxes: torch.Tensor, scores: torch.Tensor, objects: torch.Tensor, difficult: torch.Tensor,
                     iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """VOC's greedy matching in one image and class: best score first, a detection takes the object it
    overlaps most when their IoU reaches ``iou_threshold`` and no better detection took it. Returns each
    detection's outcome (1 hit, 0 false alarm, -1 on a difficult object) and which objects were found."""
    from torchvision.ops import box_iou

    outcome = torch.zeros(len(boxes), dtype=torch.long)
    taken = torch.zeros(len(objects), dtype=torch.bool)
    if not len(boxes) or not len(objects):
        return outcome, taken
    overlaps = box_iou(boxes.double(), objects.double())
    for k in scores.argsort(descending=True).tolist():
        best, j = overlaps[k].max(0)
        if best >= iou_threshold:
            if difficult[j]:
                outcome[k] = -1
            elif not taken[j]:
                taken[j], outcome[k] = True, 1
    return outcome, taken


def image_outcomes(found: dict, truth: dict, iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`match_detections` class by class over one image's detections and labelled objects."""
    outcome = torch.zeros(len(found["scores"]), dtype=torch.long)
    taken = torch.zeros(len(truth["labels"]), dtype=torch.bool)
    for label in set(found["labels"].tolist()) | set(truth["labels"].tolist()):
        mine, targets = found["labels"] == label, truth["labels"] == label
        outcome[mine], taken[targets] = match_detections(found["boxes"][mine], found["scores"][mine],
                                                         truth["boxes"][targets], truth["difficult"][targets],
                                                         iou_threshold)
    return outcome, taken


def scored_outcomes(detections: Sequence[dict], ground_truths: Sequence[dict], label: int,
                    iou_threshold: float = 0.5) -> tuple[list[tuple[float, int]], int]:
    """Every detection of class ``label`` as ``(score, 1 hit | 0 false alarm)``, best first, and the objects
    to find. A detection matching a difficult object is left out (neither a hit nor a false alarm)."""
    positives = sum(int(((g["labels"] == label) & ~g["difficult"]).sum()) for g in ground_truths)
    found = []
    for det, gt in zip(detections, ground_truths, strict=True):
        mine, targets = det["labels"] == label, gt["labels"] == label
        scores = det["scores"][mine]
        outcome, _ = match_detections(det["boxes"][mine], scores, gt["boxes"][targets], gt["difficult"][targets],
                                      iou_threshold)
        order = scores.argsort(descending=True)
        found += [(score, hit) for score, hit in zip(scores[order].tolist(), outcome[order].tolist(), strict=True)
                  if hit >= 0]
    return sorted(found, key=lambda f: -f[0]), positives


def voc_map(detections: Sequence[dict], ground_truths: Sequence[dict], classes: Sequence[str],
            iou_threshold: float = 0.5) -> dict[str, Any]:
    """VOC mAP: per-class AP at ``iou_threshold``, all-point interpolation, difficult objects ignored.

    ``detections[i]``: ``boxes`` (N, 4) xyxy, ``scores``, ``labels`` (class indices) of image ``i``;
    ``ground_truths[i]``: ``boxes``, ``labels`` and ``difficult`` (bool). A detection matching a
    difficult object counts neither as a hit nor as a false alarm.
    """
    per_class: dict[str, float | None] = {}
    for label, name in enumerate(classes):
        found, positives = scored_outcomes(detections, ground_truths, label, iou_threshold)
        if positives == 0:
            per_class[name] = None
            continue
        hits = torch.tensor([f[1] for f in found], dtype=torch.double)
        true_positives, false_positives = hits.cumsum(0), (1 - hits).cumsum(0)
        recall = true_positives / positives
        precision = true_positives / (true_positives + false_positives).clamp(min=1e-12)
        per_class[name] = voc_ap(recall, precision) if len(found) else 0.0
    scored = [v for v in per_class.values() if v is not None]
    return {"map50": sum(scored) / len(scored) if scored else 0.0, "ap50_per_class": per_class}


def _pooled(detections: Sequence[dict], ground_truths: Sequence[dict], classes: int,
            iou_threshold: float) -> tuple[list[tuple[float, int]], int]:
    outcomes = [scored_outcomes(detections, ground_truths, label, iou_threshold) for label in range(classes)]
    return sorted((f for found, _ in outcomes for f in found), key=lambda f: -f[0]), sum(n for _, n in outcomes)


def precision_recall_at(detections: Sequence[dict], ground_truths: Sequence[dict], classes: int, threshold: float,
                        iou_threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 of the detections scoring at least ``threshold`` (all classes pooled)."""
    found, positives = _pooled(detections, ground_truths, classes, iou_threshold)
    kept = [hit for score, hit in found if score >= threshold]
    return _scores(threshold, sum(kept), len(kept), positives)


def _scores(threshold: float, hits: int, kept: int, positives: int) -> dict[str, float]:
    precision = hits / kept if kept else 0.0
    recall = hits / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1, "detections": kept}


def best_f1_threshold(detections: Sequence[dict], ground_truths: Sequence[dict], classes: int,
                      iou_threshold: float = 0.5) -> dict[str, float]:
    """The score threshold with the best F1 (all classes pooled), with its precision and recall."""
    found, positives = _pooled(detections, ground_truths, classes, iou_threshold)
    best = _scores(1.0, 0, 0, positives)
    hits = 0
    for k, (score, hit) in enumerate(found):
        hits += hit
        if k + 1 < len(found) and found[k + 1][0] == score:
            continue  # a threshold keeps every detection of its score
        candidate = _scores(score, hits, k + 1, positives)
        if candidate["f1"] > best["f1"]:
            best = candidate
    return best


def coco_map(detections: Sequence[dict], ground_truths: Sequence[dict]) -> dict[str, float]:
    """COCO mAP@[.5:.95], mAP@.5 and @.75 (pycocotools' evaluation; difficult = crowd).

    COCO counts at most the 100 best detections of an image; a whole aerial scene holds
    hundreds of objects, so the cap here is the larger of 100 and the most objects or
    detections any scene has (as DOTA-style evaluations raise it). pycocotools' own summary
    reads its headline number at 100 detections whatever the cap, so the numbers are read
    from its accumulated precision at the raised cap (its summary's rule otherwise).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    most = max([100] + [len(d["scores"]) for d in detections] + [len(g["labels"]) for g in ground_truths])
    truths, results = [], []
    for image_id, (found, truth) in enumerate(zip(detections, ground_truths, strict=True), 1):
        for (x1, y1, x2, y2), label, crowd in zip(truth["boxes"].tolist(), truth["labels"].tolist(),
                                                 truth["difficult"].tolist(), strict=True):
            truths.append({"id": len(truths) + 1, "image_id": image_id, "category_id": label + 1,
                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
        for (x1, y1, x2, y2), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                  found["labels"].tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    if not truths:
        return {"map": -1.0, "map_50": -1.0, "map_75": -1.0}
    if not results:
        return {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    labels = sorted({a["category_id"] for a in truths} | {r["category_id"] for r in results})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        reference = COCO()
        reference.dataset = {"images": [{"id": i} for i in range(1, len(detections) + 1)], "annotations": truths,
                             "categories": [{"id": c} for c in labels]}
        reference.createIndex()
        evaluation = COCOeval(reference, reference.loadRes(results), "bbox")
        evaluation.params.maxDets = [1, 10, most]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # IoU x recall x class, all areas, the raised cap

    def mean(values: np.ndarray) -> float:
        kept = values[values > -1]
        return float(kept.mean()) if kept.size else -1.0

    return {"map": mean(precision), "map_50": mean(precision[0]), "map_75": mean(precision[5])}


# ---------------------------------------------------------------- domain gap (cspt gap)

def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` of two feature sets."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace())


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def mmd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared maximum mean discrepancy with an RBF kernel (bandwidth: median pairwise distance)."""
    joint = torch.cat([a, b]).double()
    distances = torch.cdist(joint, joint).pow(2)
    bandwidth = distances[distances > 0].median()
    kernel = (-distances / bandwidth).exp()
    n = len(a)
    return float(kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean())


def gap_summary(result: dict[str, Any]) -> list[str]:
    """Human-readable lines: each measure on held-out source vs target."""
    lines = []
    for key, name in (("reconstruction_loss", "MAE reconstruction loss"), ("frechet_distance", "Fréchet distance"),
                      ("mmd", "MMD")):
        values = result[key]
        if values.get("target") is not None:
            lines.append(f"{name}: source {values['source']:.4f}, target {values['target']:.4f}")
    return lines


def gap_closed(before: dict[str, Any], after: dict[str, Any], key: str = "frechet_distance") -> float | None:
    """Percent of the target's excess distance over the held-out source removed between two reports."""
    excess = [r[key]["target"] - r[key]["source"] for r in (before, after)]
    return 100 * (excess[0] - excess[1]) / excess[0] if excess[0] > 0 else None

