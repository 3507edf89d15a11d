"""Spectral band groups (SatMAE, Cong et al. 2022): one token per group of bands and patch location.

Each group embeds its own bands: it uses its bands' slice of the one patch-embedding filter
(``patch_embed.proj``, ``(D, C, p, p)``), so a group's filters are its own while the weights keep the
ungrouped model's name and shape (RGB checkpoints load and adapt into them as into any encoder). A
learned group encoding (``group_embed``, ``(1, G, D)``, zero at the start) tells the groups apart; every
group shares the location's position embedding. Tokens are ordered group by group: ``g * L + location``.

Downstream, :class:`GroupedVisionTransformer` keeps every group's tokens through the blocks and averages
them per location where a feature map is taken (pyramids, segmentation); pooled heads pool them all.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

BandGroups = tuple[tuple[int, ...], ...]  #: 0-based model bands of each group


def check_band_groups(groups: Sequence[Sequence[int]], in_chans: int) -> BandGroups:
    """``groups`` as tuples; every model band must be in exactly one group (ValueError otherwise)."""
    groups = tuple(tuple(int(b) for b in group) for group in groups)
    flat = [b for group in groups for b in group]
    if not groups or any(not group for group in groups):
        raise ValueError("band groups must each hold at least one band")
    if sorted(flat) != list(range(in_chans)):
        raise ValueError(f"band groups {[list(g) for g in groups]} must hold each of the {in_chans} bands exactly "
                         "once")
    return groups


def tile_per_group(per_location: torch.Tensor, group_embed: torch.Tensor | None) -> torch.Tensor:
    """``(1, L, D)`` values of each location for every group's tokens, ``(1, G * L, D)``, plus each group's
    encoding ``(1, G, D)`` (None: one group, nothing added)."""
    if group_embed is None:
        return per_location
    groups, length = group_embed.shape[1], per_location.shape[1]
    return per_location.repeat(1, groups, 1) + group_embed.repeat_interleave(length, dim=1)


def grouped_pos_embed(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """timm's ``_pos_embed`` for band-group tokens ``(B, G * L, D)`` of a ViT with a ``group_embed``: the cls
    token first, every token its location's position plus its group's encoding."""
    positions = tile_per_group(vit.pos_embed[:, vit.num_prefix_tokens:], vit.group_embed)
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    return vit.pos_drop(torch.cat([cls, x + positions], dim=1))


class GroupedPatchEmbed(PatchEmbed):
    """timm's ``PatchEmbed`` that embeds each band group on its own: ``(B, C, H, W)`` -> ``(B, G * L, D)``."""

    def __init__(self, *args: Any, band_groups: BandGroups, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.band_groups = band_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.img_size is not None and tuple(x.shape[-2:]) != tuple(self.img_size):
            raise ValueError(f"input images are {tuple(x.shape[-2:])}, the model expects {tuple(self.img_size)}")
        weight, bias, stride = self.proj.weight, self.proj.bias, self.proj.stride
        return torch.cat([F.conv2d(x[:, list(group)], weight[:, list(group)], bias, stride).flatten(2).transpose(1, 2)
                          for group in self.band_groups], dim=1)


class GroupedVisionTransformer(VisionTransformer):
    """timm's ViT on band-group tokens (built by :func:`cspt.models.vit.build_encoder` for grouped
    architectures): positions tiled over the groups plus the group encoding; feature maps average each
    location's group tokens."""

    def __init__(self, *, band_groups: BandGroups, **kwargs: Any):
        super().__init__(**kwargs)
        self.band_groups = band_groups
        self.group_embed = nn.Parameter(torch.zeros(1, len(band_groups), self.embed_dim))

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_pos_embed(self, x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False, **kwargs: Any) -> Any:
        """timm's, with each location's group tokens averaged in the intermediates (``NLC``: ``(B, L, D)``)."""
        batch, _, height, width = x.shape
        out = super().forward_intermediates(x, indices, norm=norm, output_fmt="NLC",
                                            intermediates_only=intermediates_only, **kwargs)
        maps = out if intermediates_only else out[1]
        groups = len(self.band_groups)
        maps = [y.reshape(batch, groups, -1, y.shape[-1]).mean(1) for y in maps]
        if output_fmt == "NCHW":
            rows, cols = self.patch_embed.dynamic_feat_size((height, width))
            maps = [y.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2).contiguous() for y in maps]
        return maps if intermediates_only else (out[0], maps)
