"""``cspt gap``: how far target imagery is from a checkpoint's source domain.

Measured on seeded samples: a *reference* and a *held-out* half of the source images
and a target sample. The held-out source gives the baseline (what "in domain" looks
like); the target's excess over it is the gap:
- MAE reconstruction loss (same masks everywhere) on held-out source vs target;
- Fréchet distance and MMD (RBF kernel, median bandwidth) between the encoder's pooled
  features of the reference half and of each other set;
- per-band pixel mean and std of the source and the target.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cspt.data.classification import LabelledImages, LabelledSet, collate_labelled
from cspt.data.files import find_images
from cspt.data.stats import band_statistics
from cspt.engine.distributed import resolve_device
from cspt.errors import CsptError
from cspt.metrics import frechet_distance, gap_summary, mmd
from cspt.models.classifier import pooled_features
from cspt.models.mae import MaskedAutoencoderViT
from cspt.models.vit import resolve_arch
from cspt.tasks.common import checkpoint_contract, source_contract
from cspt.weights.load import load_checkpoint, load_into_model

log = logging.getLogger("cspt")


def sample_files(sources: Sequence[str | Path], count: int, seed: int) -> list[Path]:
    """A seeded sample of at most ``count`` of the images in ``sources``, sorted."""
    files = find_images(list(sources))
    return sorted(random.Random(seed).sample(files, min(count, len(files))))


def domain_gap(checkpoint: str | Path, source: Sequence[str | Path], target: Sequence[str | Path],
               max_images: int = 256, img_size: int | None = None, seed: int = 0, device: str = "auto",
               trust: bool = False, max_image_pixels: int | None = None) -> dict[str, Any]:
    """The gap report of ``checkpoint`` between ``source`` and ``target`` image folders (see module doc).

    The target is read through the checkpoint's recorded pixel contract (its bands, nodata and
    scaling), the source images through their own (the model's normalisation, their own scaling).
    """
    loaded = load_checkpoint(checkpoint, trust)
    arch = resolve_arch({"img_size": img_size}, None, loaded.arch)
    model = MaskedAutoencoderViT(arch, group_masking=loaded.group_masking)
    report = load_into_model(model, loaded)
    target_contract = checkpoint_contract(loaded, arch.in_chans, max_image_pixels=max_image_pixels)
    source_files = sample_files(source, 2 * max_images, seed)
    if len(source_files) < 4:
        raise CsptError(f"{', '.join(map(str, source))}: need at least 4 source images, found {len(source_files)}")
    half = len(source_files) // 2
    sets = {"reference": source_files[:half], "source": source_files[half:],
            "target": sample_files(target, max_images, seed)}
    contracts = {"target": target_contract}
    contracts["source"] = contracts["reference"] = source_contract(target_contract, source_files, "gap source")
    torch_device = torch.device(resolve_device(device))
    model = model.to(torch_device).eval()
    features, losses, bands = {}, {}, {}
    for name, files in sets.items():
        contract = contracts[name]
        data = LabelledImages(LabelledSet(files, [0] * len(files), ["image"]), contract, arch.img_size, train=False)
        features[name], losses[name] = encode(model, data, torch_device, seed, loaded.has_decoder)
        if name != "reference":
            stats = band_statistics(files, max_images=None, bands=contract.bands, nodata=contract.nodata,
                                    decibels=contract.decibels, despeckle=contract.despeckle)
            bands[name] = {"mean": stats.mean, "std": stats.std, "pixels": contract.to_dict()}
    del losses["reference"]
    result = {
        "checkpoint": str(loaded.path),
        "images": {name: len(files) for name, files in sets.items()},
        "reconstruction_loss": losses,
        "frechet_distance": {name: frechet_distance(features["reference"], features[name])
                             for name in ("source", "target")},
        "mmd": {name: mmd(features["reference"], features[name]) for name in ("source", "target")},
        "band_statistics": bands,
        "decoder": report.decoder,
    }
    return result


@torch.no_grad()
def encode(model: MaskedAutoencoderViT, data: LabelledImages, device: torch.device, seed: int,
           with_loss: bool) -> tuple[torch.Tensor, float | None]:
    """Pooled features of ``data`` and, with ``with_loss``, its mean MAE loss, in one pass.

    The masks come from ``seed``, so every set is scored with the same masks.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=64, sampler=[(i, 0) for i in range(len(data))],
                        collate_fn=collate_labelled)
    features, total, count = [], 0.0, 0
    for batch in loader:
        images = batch["image"].to(device)
        if len(images) == 0:
            continue
        features.append(pooled_features(model, images).float().cpu())
        if with_loss:
            noise = torch.rand(len(images), model.mask_noise_length, generator=generator)
            valid = batch["valid"].to(device)  # pixels without data are not scored, as in pretraining
            total += float(model(images, noise=noise.to(device), valid=valid)[0]) * len(images)
            count += len(images)
    return torch.cat(features), (total / count if with_loss else None)


def write_gap(result: dict[str, Any], folder: Path) -> Path:
    """``gap.json`` and ``gap.md`` (its summary) in ``folder``; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gap.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "gap.md").write_text("# Domain gap\n\n" + "".join(f"- {line}\n" for line in gap_summary(result)))
    return folder / "gap.json"
