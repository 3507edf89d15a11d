"""``cspt visualize``: a checkpoint's MAE reconstructions of some images, as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cspt.data.files import find_images
from cspt.data.unlabelled import UnlabelledImages, evaluation_images, scan_images
from cspt.errors import CsptError
from cspt.models.mae import MaskedAutoencoderViT
from cspt.models.vit import resolve_arch
from cspt.plots import reconstruction_grid, save_grid
from cspt.tasks.common import checkpoint_contract
from cspt.weights.load import load_checkpoint, load_into_model


def visualize_checkpoint(checkpoint: str | Path, images: Sequence[str], output: str | Path, count: int = 8,
                         img_size: int | None = None, mask_ratio: float = 0.75,
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                         trust: bool = False, seed: int = 0, max_image_pixels: int | None = None) -> Path:
    """Write the reconstruction grid of ``count`` images (seeded masks) to ``output``."""
    ckpt = load_checkpoint(checkpoint, trust)
    if not ckpt.has_decoder:
        raise CsptError(f"{checkpoint}: has no MAE decoder, so it cannot reconstruct images")
    arch = resolve_arch({"img_size": img_size}, None, ckpt.arch)
    model = MaskedAutoencoderViT(arch, mask_ratio, group_masking=ckpt.group_masking)
    load_into_model(model, ckpt)
    contract = checkpoint_contract(ckpt, arch.in_chans, mean, std, max_image_pixels)
    scan = scan_images(find_images(list(images)), 4 * arch.img_size)
    dataset = UnlabelledImages(scan.entries, contract, arch.img_size, arch.patch_size, 4 * arch.img_size)
    batch, _ = evaluation_images(dataset, count)
    noise = torch.rand(len(batch), model.mask_noise_length, generator=torch.Generator().manual_seed(seed))
    return save_grid(reconstruction_grid(model, batch, contract, noise), output)
