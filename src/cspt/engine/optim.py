"""AdamW, its parameter groups, and the per-iteration warmup + cosine (or poly) schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "dist_token", "reg_token", "group_embed",
                  "decoder_group_embed")


def adamw(groups: list[dict], betas: Sequence[float], fused: bool = True) -> torch.optim.AdamW:
    """AdamW for the engine; ``fused``: one kernel over all tensors (CPU and CUDA) instead of a loop per tensor.

    The fused step computes the same update (the equality is tested to 1e-5); on a
    tiny ViT it saves about a tenth of a CPU training step.
    """
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(betas), fused=fused)


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay for weight matrices, none for norms, biases, tokens and positions."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def param_groups_layer_decay(model: nn.Module, encoder: nn.Module, depth: int, weight_decay: float,
                             layer_decay: float) -> list[dict]:
    """Layer-wise lr decay (BEiT/MAE) over the ViT ``encoder`` inside ``model``; full lr for everything else.

    ``depth`` is the architecture's block count, not what is left in ``encoder``: a
    feature pyramid prunes the final norm (and any block after its last tap), and the
    recipe's scales must not move with it. An encoder parameter at layer ``l``
    (:func:`~cspt.models.vit.vit_layer_id`) trains at ``layer_decay ** (depth + 1 - l)``
    times the scheduled lr; weight decay spares norms, biases, tokens and positions.
    Each group carries its ``layer``, ``lr_scale`` and ``weight_decay``.
    """
    from cspt.models.vit import vit_layer_id

    in_encoder = {id(p): name for name, p in encoder.named_parameters()}
    top = depth + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = vit_layer_id(in_encoder[id(param)], depth) if id(param) in in_encoder else top
        decays = not (param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES)
        group = groups.setdefault((layer, decays), {
            "params": [], "layer": layer, "lr_scale": layer_decay ** (top - layer),
            "weight_decay": weight_decay if decays else 0.0})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def warmup_poly(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float,
                power: float = 1.0) -> float:
    """Linear warmup, then polynomial decay ``(1 - progress) ** power`` to ``min_lr`` (mmseg's "poly")."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * (1.0 - progress) ** power


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step ``step``: linear warmup, then half a cosine to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
