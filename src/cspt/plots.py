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

from cspt.data.bands import display_order  # noqa: E402
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


#: the colour of each split's regions in :func:`plot_split`
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def plot_split(regions: dict[str, list[tuple[Path, Sequence[int]]]], sizes: dict[Path, tuple[int, int]],
               path: Path, title: str = "", panels: int = 12) -> Path:
    """Where each split's regions (``(image, (top, left, height, width))``) lie on their images (``sizes``:
    height, width), one panel per image in pixel coordinates (the first ``panels`` images)."""
    from matplotlib.patches import Patch, Rectangle

    images = list(sizes)[:panels]
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows + 0.6), squeeze=False)
    for ax, image in zip(axes.flat, images, strict=False):
        height, width = sizes[image]
        ax.add_patch(Rectangle((0, 0), width, height, facecolor="0.92", edgecolor="0.5"))
        for split, boxes in regions.items():
            for _, (top, left, box_h, box_w) in (r for r in boxes if r[0] == image):
                ax.add_patch(Rectangle((left, top), box_w, box_h, facecolor=SPLIT_COLORS.get(split, "0.4"),
                                       alpha=0.75, linewidth=0))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_aspect("equal")
        ax.set_title(image.name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(images):]:
        ax.axis("off")
    fig.legend(handles=[Patch(color=color, label=name) for name, color in SPLIT_COLORS.items()
                        if name in regions], loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


GAP = 2


def to_display(images: torch.Tensor, contract: PixelContract, order: Sequence[int] | None = None) -> np.ndarray:
    """Normalised ``(B, C, H, W)`` -> uint8 ``(B, H, W, 3)`` on the contract's 0-1 scale: the bands of
    ``order`` as red, green, blue (default: :func:`~cspt.data.bands.display_order`)."""
    pixels = contract.unnormalise(images.cpu().float()).clamp(0, 1)
    order = list(order) if order is not None else display_order(contract.spectral, pixels.shape[1])[0]
    return (pixels[:, order].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def group_order(group: Sequence[int], contract: PixelContract) -> list[int]:
    """The bands of a band group a picture shows as red, green and blue (grey for one or two)."""
    spectral = [contract.spectral[b] for b in group] if contract.spectral else None
    return [group[i] for i in display_order(spectral, len(group))[0]]


def reconstruction_grid(model: MaskedAutoencoderViT, images: torch.Tensor, contract: PixelContract,
                        noise: torch.Tensor | None = None) -> Image.Image:
    """One row per image, four columns; masked patches shown at the band means (grey). Images of more than
    three bands are drawn in true or false colour (:func:`~cspt.data.bands.display_order`), and the first
    image then again band by band, one grey row each; a model with band groups draws the first image group
    by group instead (each group's own masks; a group of three or more bands in colour)."""
    was_training = model.training
    model.eval()
    result = model.reconstruct(images, noise=noise)
    model.train(was_training)
    steps = (images, result.masked, result.reconstruction, result.pasted)
    columns = [to_display(t, contract) for t in steps]
    panels = [[band] * 3 for band in range(images.shape[1])] if images.shape[1] > 3 else []
    if model.arch.band_groups:
        panels = [group_order(group, contract) for group in model.arch.band_groups]
    if panels:
        columns = [np.concatenate([colour] + [to_display(t[:1], contract, order) for order in panels])
                   for colour, t in zip(columns, steps)]
    rows, height, width = columns[0].shape[0], images.shape[2], images.shape[3]
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
