"""Scene classifier: the ViT encoder with a linear head (timm ``VisionTransformer``).

The keys are timm's, so a trained classifier also loads into
``timm.create_model("vit_...", num_classes=N, global_pool="avg")``.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cspt.models.vit import ArchConfig, build_encoder

#: keys of an initialising checkpoint that a freshly built classifier never takes (an old head)
NOT_FOR_CLASSIFIER = ("head.",)


def build_classifier(arch: ArchConfig, num_classes: int, global_pool: str = "avg",
                     drop_path: float = 0.0) -> VisionTransformer:
    """ViT + head. ``avg``: mean of the patch tokens then ``fc_norm``; ``token``: normed cls token.

    The head starts near zero (std 2e-5), as in the MAE fine-tuning recipe.
    """
    model = build_encoder(arch, learn_pos_embed=True, num_classes=num_classes, global_pool=global_pool,
                          drop_path_rate=drop_path)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    return model


def pooled_features(encoder: VisionTransformer, images: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """Frozen-feature embedding: the normed tokens of the last block, averaged (``avg``) or the cls token."""
    tokens = encoder.forward_features(images)
    prefix = encoder.num_prefix_tokens
    return tokens[:, prefix:].mean(1) if pool == "avg" else tokens[:, 0]
