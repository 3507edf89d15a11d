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
