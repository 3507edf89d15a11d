"""Figures for runs and reports: confusion matrices (matplotlib, no display needed) and MAE reconstruction grids
(original | masked | reconstruction | reconstruction + visible patches)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cspt.data.pixels import PixelContract  # noqa: E402
from cspt.models.mae import MaskedAutoencoderViT  # noqa: E402


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                   title: str = "") -> Path:
    """A row-normalised confusion matrix (recall per true class) with the counts written in."""
    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


GAP = 2


def to_display(images: torch.Tensor, contract: PixelContract) -> np.ndarray:
    """Normalised ``(B, C, H, W)`` -> uint8 ``(B, H, W, 3)`` on the contract's 0-1 scale: first three bands,
    or grey."""
    pixels = contract.unnormalise(images.cpu().float()).clamp(0, 1)
    pixels = pixels[:, :3] if pixels.shape[1] >= 3 else pixels[:, :1].expand(-1, 3, -1, -1)
    return (pixels.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def reconstruction_grid(model: MaskedAutoencoderViT, images: torch.Tensor, contract: PixelContract,
                        noise: torch.Tensor | None = None) -> Image.Image:
    """One row per image, four columns; masked patches shown at the band means (grey)."""
    was_training = model.training
    model.eval()
    result = model.reconstruct(images, noise=noise)
    model.train(was_training)
    columns = [to_display(t, contract) for t in (images, result.masked, result.reconstruction, result.pasted)]
    rows, height, width = images.shape[0], images.shape[2], images.shape[3]
    canvas = np.full((rows * (height + GAP) - GAP, 4 * (width + GAP) - GAP, 3), 255, dtype=np.uint8)
    for col, panel in enumerate(columns):
        for row in range(rows):
            top, left = row * (height + GAP), col * (width + GAP)
            canvas[top : top + height, left : left + width] = panel[row]
    return Image.fromarray(canvas)


def save_grid(image: Image.Image, path: str | Path) -> Path:
    """Save a figure at ``path`` (its folder created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
