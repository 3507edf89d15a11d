"""Masked autoencoder (He et al., 2022) on a timm ViT encoder.

The model *is* the encoder (it subclasses timm's ``VisionTransformer``) plus the MAE
decoder, so its state dict uses the official MAE names: ``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N``, ``norm``, ``mask_token``, ``decoder_embed``,
``decoder_pos_embed``, ``decoder_blocks.N``, ``decoder_norm``, ``decoder_pred``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.nn import functional as F

from cspt.errors import CsptError
from cspt.models.band_groups import grouped_pos_embed, tile_per_group
from cspt.models.vit import ArchConfig, set_sincos_pos_embed, vit_kwargs

DECODER_PREFIXES = ("mask_token", "decoder_")
#: how band groups are masked: each group on its own (SatMAE's best), or the same locations in every group
GROUP_MASKING = ("independent", "shared")


class Reconstruction(NamedTuple):
    """Images in the model's input space (normalised), all ``(B, C, H, W)``."""

    masked: torch.Tensor  #: input with the masked patches set to zero
    reconstruction: torch.Tensor  #: the decoder's prediction of every patch
    pasted: torch.Tensor  #: the reconstruction with the visible patches of the input pasted back
    mask: torch.Tensor  #: ``(B, G * L)``, 1 where a token (a patch of a band group) was masked


def masking_order(noise: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Tokens in the order of their noise, ``(B, N)``: a stable sort, so ties break alike on every device;
    with ``groups``, each of that many equal blocks of ``noise`` sorted on its own (indices into the row)."""
    if groups == 1:
        return noise.argsort(dim=1, stable=True)
    batch, length = noise.shape[0], noise.shape[1] // groups
    order = noise.reshape(batch, groups, length).argsort(dim=-1, stable=True)
    return (order + torch.arange(groups, device=noise.device)[:, None] * length).flatten(1)


def noise_groups(arch: ArchConfig, group_masking: str = "independent") -> int:
    """How many blocks of mask noise a sample needs: one per band group when each is masked on its own."""
    return arch.num_groups if group_masking == "independent" else 1


def mask_noise_length(arch: ArchConfig, group_masking: str = "independent") -> int:
    """The length of a sample's mask noise: the patches, once per independently masked band group."""
    return arch.grid_size**2 * noise_groups(arch, group_masking)


class MaskedAutoencoderViT(VisionTransformer):
    """MAE: encode the visible patches, decode all patches, regress the masked pixels.

    ``embed_visible_only`` (default): only the kept patches go through the patch
    embedding, a quarter of its work at mask 0.75; False runs the convolution over every
    patch and then drops the masked ones (the reference path, same loss to 1e-5).
    """

    embed_visible_only: bool = True

    def __init__(self, arch: ArchConfig, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 group_masking: str = "independent"):
        super().__init__(**vit_kwargs(arch))
        if not 0.0 <= mask_ratio < 1.0:
            raise CsptError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if group_masking not in GROUP_MASKING:
            raise CsptError(f"group masking must be one of {', '.join(GROUP_MASKING)}, got {group_masking!r}")
        self.arch = arch
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.group_masking = group_masking
        grouped = arch.band_groups is not None
        if grouped:
            band_group = torch.tensor([next(g for g, group in enumerate(arch.band_groups) if band in group)
                                       for band in range(arch.in_chans)])
            #: (C, G): 1 where a band belongs to a group
            self.register_buffer("band_onehot", F.one_hot(band_group, arch.num_groups).float(), persistent=False)
            value_group = band_group.repeat(arch.patch_size**2)  # of each value of a patchified patch
            #: the values of a patchified patch ordered group by group, and the permutation back
            self.register_buffer("value_order", value_group.argsort(stable=True), persistent=False)
            self.register_buffer("value_restore", self.value_order.argsort(), persistent=False)
            self.group_values = [len(group) * arch.patch_size**2 for group in arch.band_groups]
            #: the same for the patch embedding's im2col columns (bands first, then pixels)
            column_group = band_group.repeat_interleave(arch.patch_size**2)
            self.register_buffer("column_order", column_group.argsort(stable=True), persistent=False)
        self.group_embed = nn.Parameter(torch.zeros(1, arch.num_groups, arch.embed_dim)) if grouped else None
        num_patches = arch.grid_size**2
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.mask_token = nn.Parameter(torch.zeros(1, 1, arch.decoder_dim))
        self.decoder_embed = nn.Linear(arch.embed_dim, arch.decoder_dim)
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, arch.decoder_dim), requires_grad=False
        )
        self.decoder_blocks = nn.Sequential(
            *[
                Block(arch.decoder_dim, arch.decoder_num_heads, arch.mlp_ratio, qkv_bias=True,
                      norm_layer=norm_layer)
                for _ in range(arch.decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(arch.decoder_dim)
        self.decoder_pred = nn.Linear(
            arch.decoder_dim, arch.patch_size**2 * arch.in_chans, bias=True
        )
        self.decoder_group_embed = nn.Parameter(torch.zeros(1, arch.num_groups, arch.decoder_dim)) if grouped else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE initialisation: sin-cos positions, xavier linears, small random tokens."""
        set_sincos_pos_embed(self.pos_embed, self.arch.grid_size)
        set_sincos_pos_embed(self.decoder_pos_embed, self.arch.grid_size)
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for embed in (self.group_embed, self.decoder_group_embed):
            if embed is not None:
                nn.init.normal_(embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's, or with band groups their tiled positions and encodings (for ``forward_features``)."""
        return super()._pos_embed(x) if self.group_embed is None else grouped_pos_embed(self, x)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under plain timm ViT names (no decoder, no mask token)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(DECODER_PREFIXES)}

    # -- patches -------------------------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, L, p*p*C)``, pixels of a patch in (row, col, band) order."""
        p = self.arch.patch_size
        b, c, h, w = images.shape
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify` for a square grid."""
        p, c = self.arch.patch_size, self.arch.in_chans
        b, length, _ = patches.shape
        g = int(length**0.5)
        x = patches.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    # -- forward -------------------------------------------------------------------------
    @property
    def mask_noise_length(self) -> int:
        """The length of a sample's mask noise (:func:`mask_noise_length`)."""
        return mask_noise_length(self.arch, self.group_masking)

    def random_masking(
        self, batch: int, mask_ratio: float, noise: torch.Tensor | None, device: torch.device,
        ids_shuffle: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking: in each band group, its patches in the order of their noise (a stable
        sort), the first kept; the same number in every group.

        ``noise`` ``(B, L)`` masks the same locations in every group, ``(B, G * L)`` each group by its own
        block; ``ids_shuffle`` (:func:`masking_order` of it, e.g. computed by the loader) skips the sort.
        Returns the indices of the kept tokens ``(B, G * n_keep)``, group by group, the permutation that
        restores token order ``(B, G * L)`` and the binary mask ``(B, G * L)`` (1 = masked).
        """
        groups, length = self.arch.num_groups, self.arch.grid_size**2
        if ids_shuffle is None:
            if noise is None:
                noise = torch.rand(batch, self.mask_noise_length, device=device)
            ids_shuffle = masking_order(noise, noise.shape[1] // length)
        if ids_shuffle.shape[1] != self.mask_noise_length:
            raise CsptError(f"mask noise of {ids_shuffle.shape[1]} values a sample, the model masks with "
                            f"{self.mask_noise_length} (--group-masking {self.group_masking})")
        if ids_shuffle.shape[1] == length and groups > 1:  # the same locations in every group
            ids_shuffle = torch.cat([ids_shuffle + g * length for g in range(groups)], dim=1)
        n_keep = int(length * (1 - mask_ratio))
        per_group = ids_shuffle.reshape(batch, groups, length)
        kept = per_group[:, :, :n_keep].flatten(1)
        order = torch.cat([kept, per_group[:, :, n_keep:].flatten(1)], dim=1) if groups > 1 else ids_shuffle
        positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
        ids_restore = torch.empty_like(order).scatter_(1, order, positions)  # the inverse, no sort
        mask = (ids_restore >= kept.shape[1]).float()
        return kept, ids_restore, mask

    def forward_encoder(
        self, images: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
        ids_shuffle: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches; returns tokens (cls first), mask and restore ids."""
        b, dim = images.shape[0], self.embed_dim
        ids_keep, ids_restore, mask = self.random_masking(b, mask_ratio, noise, images.device, ids_shuffle)
        keep = ids_keep.unsqueeze(-1)
        if self.embed_visible_only:
            x = self.embed_patches(images, ids_keep)
        else:
            x = self.patch_embed(images).gather(1, keep.expand(-1, -1, dim))
        positions = tile_per_group(self.pos_embed[:, 1:], self.group_embed)
        x = x + positions.expand(b, -1, -1).gather(1, keep.expand(-1, -1, dim))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = self.norm(self.blocks(torch.cat([cls, x], dim=1)))
        return x, mask, ids_restore

    def embed_patches(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The patch embedding of the tokens ``ids`` ``(B, n)`` only: im2col, gather, one matmul per band
        group (``ids`` group by group, the same number in each, as :meth:`random_masking` gives them)."""
        proj = self.patch_embed.proj
        p, size = self.arch.patch_size, self.arch.img_size
        if tuple(images.shape[-2:]) != (size, size):
            raise CsptError(f"input images are {tuple(images.shape[-2:])}, the model expects {size} x {size}")
        patches = F.unfold(images, p, stride=p).transpose(1, 2)  # (B, L, C*p*p), the conv weight's order
        if self.arch.band_groups is None:
            patches = patches.gather(1, ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            return F.linear(patches, proj.weight.flatten(1), proj.bias)
        length = patches.shape[1]
        columns = patches.index_select(-1, self.column_order).split(self.group_values, dim=-1)
        weights = proj.weight.flatten(1).index_select(1, self.column_order).split(self.group_values, dim=1)
        blocks = ids.reshape(ids.shape[0], self.arch.num_groups, -1)
        tokens = []
        for g, (group_columns, weight) in enumerate(zip(columns, weights)):
            chosen = (blocks[:, g] - g * length).unsqueeze(-1).expand(-1, -1, group_columns.shape[-1])
            tokens.append(F.linear(group_columns.gather(1, chosen), weight, proj.bias))
        return torch.cat(tokens, dim=1)

    def forward_decoder(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict the pixels of every patch, ``(B, L, p*p*C)``: each band group's values from its own tokens."""
        x = self.decoder_embed(tokens)
        b, n_tokens, dim = x.shape
        length = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(b, length + 1 - n_tokens, -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        positions = tile_per_group(self.decoder_pos_embed[:, 1:], self.decoder_group_embed)
        x = torch.cat([x[:, :1] + self.decoder_pos_embed[:, :1], patches + positions], dim=1)
        x = self.decoder_norm(self.decoder_blocks(x))[:, 1:]
        if self.arch.band_groups is None:
            return self.decoder_pred(x)
        per_group = x.reshape(b, self.arch.num_groups, -1, dim)
        weights = self.decoder_pred.weight.index_select(0, self.value_order).split(self.group_values)
        biases = self.decoder_pred.bias.index_select(0, self.value_order).split(self.group_values)
        parts = [F.linear(per_group[:, g], w, bias) for g, (w, bias) in enumerate(zip(weights, biases))]
        return torch.cat(parts, dim=-1).index_select(-1, self.value_restore)

    def per_value(self, per_token: torch.Tensor) -> torch.Tensor:
        """``(B, G * L)`` values of each token spread over the values of its band group in the patchified
        image, ``(B, L, p*p*C)``; without groups ``(B, L, 1)``, which broadcasts over a patch's values."""
        if self.arch.band_groups is None:
            return per_token.unsqueeze(-1)
        b, (groups, length) = per_token.shape[0], (self.arch.num_groups, self.arch.grid_size**2)
        per_group = per_token.reshape(b, groups, length).transpose(1, 2)  # (B, L, G); no matmul: kept in fp32
        per_band = (per_group.unsqueeze(2) * self.band_onehot).sum(-1)  # (B, L, C)
        return per_band.unsqueeze(2).expand(-1, -1, self.arch.patch_size**2, -1).reshape(b, length, -1)

    def group_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, L, p*p*C)`` summed over each band group's values, as ``(B, G * L)`` (group by group); without
        groups over each patch's values, ``(B, L)``."""
        if self.arch.band_groups is None:
            return values.sum(-1)
        b, length = values.shape[:2]
        per_band = values.reshape(b, length, -1, self.arch.in_chans).sum(2)  # (B, L, C)
        per_group = (per_band.unsqueeze(-1) * self.band_onehot).sum(2)  # (B, L, G); no matmul: kept in fp32
        return per_group.transpose(1, 2).flatten(1)

    def patch_statistics(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patchified images with each token's mean and std (as used by ``norm_pix_loss``), spread over its
        values: every patch over all its bands, or over its group's bands."""
        target = self.patchify(images)
        count = self.group_sums(torch.ones_like(target))
        mean = self.per_value(self.group_sums(target) / count)
        var = self.per_value(self.group_sums((target - mean).pow(2)) / (count - 1).clamp(min=1))
        return target, mean, (var + 1e-6).sqrt()

    def scored_patches(self, valid: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` 1.0 for the patches at least half of whose pixels hold data (``valid`` ``(B, H, W)``, or per
        band ``(B, C, H, W)``: data in any band)."""
        valid = valid.any(1) if valid.dim() == 4 else valid
        share = F.avg_pool2d(valid[:, None].float(), self.arch.patch_size)
        return (share.flatten(1) >= 0.5).float()

    def scored_tokens(self, valid: torch.Tensor) -> torch.Tensor:
        """:meth:`scored_patches` per band group, ``(B, G * L)``: per-band ``valid`` counts the group's bands."""
        if valid.dim() == 3 or self.arch.band_groups is None:
            return self.scored_patches(valid).repeat(1, self.arch.num_groups)
        return torch.cat([self.scored_patches(valid[:, list(group)]) for group in self.arch.band_groups], dim=1)

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error over the masked tokens (a patch, or a patch of a band group). With ``valid``
        ``(B, H, W)``: only the tokens mostly with data are scored, and within them only the pixels with data
        (in the error and in the per-token mean and std of ``norm_pix_loss``), so what fills the pixels without
        data never reaches the loss. ``valid`` ``(B, C, H, W)`` says it per band (a replayed image of another
        sensor lacks some bands)."""
        target = self.patchify(images).float()
        if valid is None:
            weights = torch.ones_like(target)
        else:
            per_band = valid if valid.dim() == 4 else valid[:, None].expand_as(images)
            weights = self.patchify(per_band.to(target.dtype)).float()
        count = self.group_sums(weights).clamp(min=1)
        if self.norm_pix_loss:
            mean = self.per_value(self.group_sums(target * weights) / count)
            var = self.per_value(self.group_sums((target - mean).pow(2) * weights) / (count - 1).clamp(min=1))
            target = (target - mean) / (var + 1e-6).sqrt()
        per_token = self.group_sums((pred.float() - target).pow(2) * weights) / count
        scored = mask if valid is None else mask * self.scored_tokens(valid)
        return (per_token * scored).sum() / scored.sum().clamp(min=1)

    def forward(
        self, images: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        ids_shuffle: torch.Tensor | None = None, valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, pred, mask)``; ``noise`` (:meth:`random_masking`) fixes the masks when given, or
        ``ids_shuffle`` = :func:`masking_order` of it, computed beforehand (by the loader); ``valid``
        ``(B, H, W)`` (or ``(B, C, H, W)``, per band) leaves what has no data out of the loss."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        tokens, mask, ids_restore = self.forward_encoder(images, ratio, noise, ids_shuffle)
        pred = self.forward_decoder(tokens, ids_restore)
        return self.forward_loss(images, pred, mask, valid), pred, mask

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> Reconstruction:
        """Masked input and reconstruction in pixel space (``norm_pix_loss`` undone per patch)."""
        _, pred, mask = self(images, mask_ratio, noise)
        patches, mean, std = self.patch_statistics(images)
        if self.norm_pix_loss:
            pred = pred * std + mean
        visible = self.per_value(1 - mask)
        return Reconstruction(
            masked=self.unpatchify(patches * visible),
            reconstruction=self.unpatchify(pred),
            pasted=self.unpatchify(patches * visible + pred * (1 - visible)),
            mask=mask,
        )
