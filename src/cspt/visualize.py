"""Reconstruction grids: original | masked | reconstruction | reconstruction + visible patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cspt.data.pixels import PixelContract
from cspt.models.mae import MaskedAutoencoderViT

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
