"""The field's metrics: OA, AA, Cohen's kappa and the confusion matrix for classification."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

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
