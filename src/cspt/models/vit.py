"""The ViT encoder: size presets, architecture config, fixed 2-D sin-cos position embeddings.

The encoder is timm's ``VisionTransformer``; its parameter names (``cls_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.N``, ``norm``) are the official MAE and
timm names, so weights move between the three without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from cspt.errors import CsptError
from cspt.models.band_groups import BandGroups, GroupedPatchEmbed, GroupedVisionTransformer, check_band_groups

#: width, depth, heads of the standard ViT sizes (MAE decoders default to 512 x 8).
VIT_PRESETS: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
}


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to build an MAE ViT (encoder and decoder)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    band_groups: BandGroups | None = None  #: 0-based bands of each spectral group (SatMAE); None: one token per patch

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise CsptError(
                f"image size {self.img_size} is not divisible by patch size {self.patch_size}"
            )
        for name, dim, heads in (
            ("embed_dim", self.embed_dim, self.num_heads),
            ("decoder_dim", self.decoder_dim, self.decoder_num_heads),
        ):
            if heads < 1 or dim % heads:
                raise CsptError(f"{name} {dim} is not divisible by {heads} attention heads")
        if self.in_chans < 1:
            raise CsptError(f"in_chans must be at least 1, got {self.in_chans}")
        if self.band_groups is not None:
            try:
                object.__setattr__(self, "band_groups", check_band_groups(self.band_groups, self.in_chans))
            except ValueError as error:
                raise CsptError(str(error)) from None

    @property
    def num_groups(self) -> int:
        """Tokens per patch location: the band groups, else 1."""
        return len(self.band_groups) if self.band_groups else 1

    @property
    def grid_size(self) -> int:
        """Patches along one side of the (square) input."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.band_groups is not None:  # lists, for JSON and YAML
            values["band_groups"] = [list(group) for group in self.band_groups]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ArchConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int, cls_token: bool = True,
                     rows_first: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, shape ``(1, [1 +] grid_h * grid_w, dim)``.

    Half of the channels encode the row, half the column (rows first by default, as in
    timm; ``rows_first=False`` gives the other order some MAE exports use), each as
    ``[sin, cos]`` of geometric frequencies; the cls slot is zero.
    """
    if dim % 4:
        raise CsptError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    coords = (rows, cols) if rows_first else (cols, rows)
    for coord in (c.reshape(-1) for c in coords):
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    embed = torch.cat(parts, dim=1).float()
    if cls_token:
        embed = torch.cat([torch.zeros(1, dim), embed], dim=0)
    return embed.unsqueeze(0)


def build_encoder(arch: ArchConfig, learn_pos_embed: bool = False, **kwargs: Any) -> VisionTransformer:
    """A timm ViT encoder with the given architecture, position embeddings set to 2-D sin-cos.

    ``learn_pos_embed``: the positions train (fine-tuning, as MAE's own fine-tuning does,
    so a checkpoint's learned positions keep learning); otherwise they stay fixed (MAE
    pretraining, frozen-feature probes). Extra keyword arguments go to timm
    (``num_classes``, ``global_pool``, ``drop_path_rate``).
    """
    if arch.band_groups:
        encoder = GroupedVisionTransformer(band_groups=arch.band_groups, **vit_kwargs(arch, **kwargs))
    else:
        encoder = VisionTransformer(**vit_kwargs(arch, **kwargs))
    set_sincos_pos_embed(encoder.pos_embed, arch.grid_size)
    encoder.pos_embed.requires_grad_(learn_pos_embed)
    return encoder


def vit_kwargs(arch: ArchConfig, **overrides: Any) -> dict:
    """timm ``VisionTransformer`` arguments for ``arch`` (no classifier head by default; band groups embed
    each group on its own)."""
    grouped = {"embed_layer": partial(GroupedPatchEmbed, band_groups=arch.band_groups)} if arch.band_groups else {}
    return {
        **grouped,
        "img_size": arch.img_size,
        "patch_size": arch.patch_size,
        "in_chans": arch.in_chans,
        "embed_dim": arch.embed_dim,
        "depth": arch.depth,
        "num_heads": arch.num_heads,
        "mlp_ratio": arch.mlp_ratio,
        "qkv_bias": True,
        "num_classes": 0,
        "global_pool": "token",
        **overrides,
    }


def vit_layer_id(name: str, depth: int) -> int:
    """The layer of a ViT parameter for layer-wise lr decay, counted on an architecture of ``depth`` blocks.

    0: the embeddings (patch projection, cls/register tokens, positions); ``i + 1``:
    block ``i``; ``depth + 1``: whatever sits above the blocks (final norm, pooling norm,
    head), as in BEiT and MAE fine-tuning.
    """
    if name.startswith(("patch_embed.", "cls_token", "pos_embed", "group_embed", "reg_token", "dist_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def set_sincos_pos_embed(pos_embed: torch.nn.Parameter, grid_size: int) -> None:
    """Fill ``pos_embed`` (with a cls slot) with fixed sin-cos values and freeze it."""
    with torch.no_grad():
        pos_embed.copy_(sincos_pos_embed(pos_embed.shape[-1], grid_size, grid_size))
    pos_embed.requires_grad_(False)


def resolve_arch(explicit: dict, preset: str | None = None, inferred: dict | None = None) -> ArchConfig:
    """Combine architecture sources: explicit values, then a preset, then a checkpoint's shapes.

    ``explicit`` holds ArchConfig fields (``None`` = not given). Unresolved heads default
    to width/64 (decoder: width/32); everything else to ViT-B/16 at 224 px with a 512 x 8
    decoder.
    """
    if preset is not None and preset not in VIT_PRESETS:
        raise CsptError(f"unknown model '{preset}'; choose one of {', '.join(VIT_PRESETS)}")
    sources = [
        {k: v for k, v in explicit.items() if v is not None},
        VIT_PRESETS.get(preset, {}) if preset else {},
        inferred or {},
    ]
    defaults = ArchConfig()
    values = {}
    for f in fields(ArchConfig):
        values[f.name] = next((s[f.name] for s in sources if f.name in s), None)
    if values["num_heads"] is None and values["embed_dim"] is not None:
        values["num_heads"] = max(1, values["embed_dim"] // 64)
    if values["decoder_num_heads"] is None and values["decoder_dim"] is not None:
        values["decoder_num_heads"] = max(1, values["decoder_dim"] // 32)
    return ArchConfig(**{k: getattr(defaults, k) if v is None else v for k, v in values.items()})
