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
from cspt.models.vit import ArchConfig, set_sincos_pos_embed, vit_kwargs

DECODER_PREFIXES = ("mask_token", "decoder_")


class Reconstruction(NamedTuple):
    """Images in the model's input space (normalised), all ``(B, C, H, W)``."""

    masked: torch.Tensor  #: input with the masked patches set to zero
    reconstruction: torch.Tensor  #: the decoder's prediction of every patch
    pasted: torch.Tensor  #: the reconstruction with the visible patches of the input pasted back
    mask: torch.Tensor  #: ``(B, L)``, 1 where a patch was masked


def masking_order(noise: torch.Tensor) -> torch.Tensor:
    """Patches in the order of their noise, ``(B, L)``: a stable sort, so ties break alike on every device."""
    return noise.argsort(dim=1, stable=True)


class MaskedAutoencoderViT(VisionTransformer):
    """MAE: encode the visible patches, decode all patches, regress the masked pixels.

    ``embed_visible_only`` (default): only the kept patches go through the patch
    embedding, a quarter of its work at mask 0.75; False runs the convolution over every
    patch and then drops the masked ones (the reference path, same loss to 1e-5).
    """

    embed_visible_only: bool = True

    def __init__(self, arch: ArchConfig, mask_ratio: float = 0.75, norm_pix_loss: bool = True):
        super().__init__(**vit_kwargs(arch))
        if not 0.0 <= mask_ratio < 1.0:
            raise CsptError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.arch = arch
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE initialisation: sin-cos positions, xavier linears, small random tokens."""
        set_sincos_pos_embed(self.pos_embed, self.arch.grid_size)
        set_sincos_pos_embed(self.decoder_pos_embed, self.arch.grid_size)
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

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
    def random_masking(
        self, num_patches: int, batch: int, mask_ratio: float, noise: torch.Tensor | None,
        device: torch.device, ids_shuffle: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking: patches in the order of their noise (a stable sort), the first kept.

        ``ids_shuffle`` (that order, e.g. sorted by the loader) skips the sort. Returns the
        indices of the kept patches ``(B, n_keep)``, the permutation that restores patch
        order ``(B, L)`` and the binary mask ``(B, L)`` (1 = masked).
        """
        if ids_shuffle is None:
            if noise is None:
                noise = torch.rand(batch, num_patches, device=device)
            ids_shuffle = masking_order(noise)
        n_keep = int(num_patches * (1 - mask_ratio))
        positions = torch.arange(num_patches, device=ids_shuffle.device).expand_as(ids_shuffle)
        ids_restore = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, positions)  # the inverse, no sort
        mask = (ids_restore >= n_keep).float()
        return ids_shuffle[:, :n_keep], ids_restore, mask

    def forward_encoder(
        self, images: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
        ids_shuffle: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches; returns tokens (cls first), mask and restore ids."""
        b, length, dim = images.shape[0], self.pos_embed.shape[1] - 1, self.embed_dim
        ids_keep, ids_restore, mask = self.random_masking(length, b, mask_ratio, noise, images.device, ids_shuffle)
        keep = ids_keep.unsqueeze(-1)
        if self.embed_visible_only:
            x = self.embed_patches(images, ids_keep)
        else:
            x = self.patch_embed(images).gather(1, keep.expand(-1, -1, dim))
        x = x + self.pos_embed[:, 1:].expand(b, -1, -1).gather(1, keep.expand(-1, -1, dim))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = self.norm(self.blocks(torch.cat([cls, x], dim=1)))
        return x, mask, ids_restore

    def embed_patches(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The patch embedding of the patches ``ids`` ``(B, n)`` only: im2col, gather, one matmul."""
        proj = self.patch_embed.proj
        p, size = self.arch.patch_size, self.arch.img_size
        if tuple(images.shape[-2:]) != (size, size):
            raise CsptError(f"input images are {tuple(images.shape[-2:])}, the model expects {size} x {size}")
        patches = F.unfold(images, p, stride=p).transpose(1, 2)  # (B, L, C*p*p), the conv weight's order
        patches = patches.gather(1, ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return F.linear(patches, proj.weight.flatten(1), proj.bias)

    def forward_decoder(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict the pixels of every patch, ``(B, L, p*p*C)``."""
        x = self.decoder_embed(tokens)
        b, n_tokens, dim = x.shape
        length = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(b, length + 1 - n_tokens, -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))
        return x[:, 1:]

    def patch_statistics(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patchified images with each patch's mean and std (as used by ``norm_pix_loss``)."""
        target = self.patchify(images)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return target, mean, std

    def scored_patches(self, valid: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` 1.0 for the patches at least half of whose pixels hold data (``valid`` ``(B, H, W)``, or per
        band ``(B, C, H, W)``: data in any band)."""
        valid = valid.any(1) if valid.dim() == 4 else valid
        share = F.avg_pool2d(valid[:, None].float(), self.arch.patch_size)
        return (share.flatten(1) >= 0.5).float()

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error over the masked patches. With ``valid`` ``(B, H, W)``: only the patches mostly
        with data are scored, and within them only the pixels with data (in the error and in the per-patch
        mean and std of ``norm_pix_loss``), so what fills the pixels without data never reaches the loss.
        ``valid`` ``(B, C, H, W)`` says it per band (a replayed image of another sensor lacks some bands)."""
        target = self.patchify(images).float()
        if valid is None:
            weights = torch.ones_like(target)
        else:
            per_band = valid if valid.dim() == 4 else valid[:, None].expand_as(images)
            weights = self.patchify(per_band.to(target.dtype)).float()
        count = weights.sum(dim=-1, keepdim=True).clamp(min=1)
        if self.norm_pix_loss:
            mean = (target * weights).sum(dim=-1, keepdim=True) / count
            var = ((target - mean).pow(2) * weights).sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred.float() - target).pow(2) * weights).sum(dim=-1) / count.squeeze(-1)
        scored = mask if valid is None else mask * self.scored_patches(valid)
        return (per_patch * scored).sum() / scored.sum().clamp(min=1)

    def forward(
        self, images: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        ids_shuffle: torch.Tensor | None = None, valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, pred, mask)``; ``noise`` ``(B, L)`` fixes the masks when given, or
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
        _, mean, std = self.patch_statistics(images)
        if self.norm_pix_loss:
            pred = pred * std + mean
        visible = (1 - mask).unsqueeze(-1)
        patches = self.patchify(images)
        return Reconstruction(
            masked=self.unpatchify(patches * visible),
            reconstruction=self.unpatchify(pred),
            pasted=self.unpatchify(patches * visible + pred * (1 - visible)),
            mask=mask,
        )
