"""Multi-level feature pyramid from a plain ViT, for dense heads (UperNet, Faster R-CNN + FPN).

Two shapes, both giving four maps at 1/4, 1/2, 1, 2 times the patch stride (strides
4, 8, 16, 32 for patch 16):

- ``cspt`` (BEiT/CSPT style, the paper's default): taps after four blocks (3, 5, 7 and 11
  of a 12-block ViT), then deconv-BN-GELU-deconv, deconv, identity and max-pool;
- ``simple`` (ViTDet): the same four operations, all on the last block's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

PYRAMID_STYLES = ("cspt", "simple")
#: the CSPT/BEiT taps of a 12-block ViT
CSPT_TAPS_OF_12 = (3, 5, 7, 11)


def default_taps(depth: int, style: str = "cspt") -> list[int]:
    """Blocks to tap: CSPT's 3/5/7/11 scaled to ``depth`` blocks, or the last block four times."""
    if style == "simple":
        return [depth - 1] * 4
    return [max(0, round((i + 1) * depth / 12) - 1) for i in CSPT_TAPS_OF_12]


def _scale(dim: int, factor: float) -> nn.Module:
    """Resample a stride-``p`` map to stride ``p / factor`` (factor 4, 2, 1 or 0.5)."""
    if factor == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
                             nn.ConvTranspose2d(dim, dim, 2, stride=2))
    if factor == 2:
        return nn.ConvTranspose2d(dim, dim, 2, stride=2)
    if factor == 1:
        return nn.Identity()
    return nn.MaxPool2d(2, stride=2)


class ViTFeaturePyramid(nn.Module):
    """A ViT encoder that returns four NCHW maps, finest first (all ``embed_dim`` channels).

    Blocks after the last tap, the final norm and the head are pruned from ``encoder``
    (nothing unused is left for DDP to wait on); load weights into it before wrapping
    it, or into ``.encoder`` (extra keys are then reported as unused).
    """

    scale_factors = (4, 2, 1, 0.5)

    def __init__(self, encoder: VisionTransformer, style: str = "cspt", taps: Sequence[int] | None = None):
        super().__init__()
        if style not in PYRAMID_STYLES:
            raise ValueError(f"unknown pyramid style {style!r}; choose one of {', '.join(PYRAMID_STYLES)}")
        depth = len(encoder.blocks)
        self.taps = list(taps) if taps is not None else default_taps(depth, style)
        if len(self.taps) != 4 or not all(0 <= t < depth for t in self.taps):
            raise ValueError(f"pyramid taps {self.taps} must be four block indices below {depth}")
        encoder.prune_intermediate_layers(sorted(set(self.taps)), prune_norm=True, prune_head=True)
        self.encoder = encoder
        self.style = style
        dim = encoder.embed_dim
        self.scales = nn.ModuleList(_scale(dim, f) for f in self.scale_factors)
        self.channels = [dim] * 4
        patch = encoder.patch_embed.patch_size[0]
        self.strides = [int(patch / f) for f in self.scale_factors]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        wanted = sorted(set(self.taps))
        maps = self.encoder.forward_intermediates(images, indices=wanted, intermediates_only=True)
        by_block = dict(zip(wanted, maps, strict=True))
        return [scale(by_block[tap]) for scale, tap in zip(self.scales, self.taps, strict=True)]
