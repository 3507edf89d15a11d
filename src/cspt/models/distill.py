"""Teacher-guided MAE (GFM, Mendieta et al., ICCV 2023): reconstruct the masked pixels and, through a
linear projector, match a frozen teacher's features of the whole image.

The teacher is not part of the model (it is never trained, saved or wrapped by DDP): the
caller runs it and hands its tokens to :meth:`TeacherGuidedMAE.forward`. The projector is
trained with the student and lives under ``distill_head.`` (dropped at export).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from cspt.errors import CsptError
from cspt.models.mae import MaskedAutoencoderViT, masking_order
from cspt.models.vit import ArchConfig

#: state-dict prefix of what only distillation trains (the projector)
DISTILL_PREFIX = "distill_"
TARGETS = ("tokens", "pooled")
LOSSES = ("cosine", "smooth_l1")


def feature_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Negative cosine (as 1 - cos) or smooth L1 between projected student and teacher features, averaged over
    the features (``...``, D), or over those with ``weights`` 1 (the patches with data)."""
    predicted, target = predicted.float(), target.float()
    if kind == "cosine":
        per_feature = 1 - F.cosine_similarity(predicted, target, dim=-1)
    else:
        per_feature = F.smooth_l1_loss(predicted, target, reduction="none").mean(-1)
    if weights is None:
        return per_feature.mean()
    return (per_feature * weights).sum() / weights.sum().clamp(min=1)


class TeacherGuidedMAE(MaskedAutoencoderViT):
    """An MAE whose loss adds ``weight`` x a feature loss against teacher tokens.

    ``target``: ``tokens`` compares each visible patch's feature with the teacher's feature
    of the same patch; ``pooled`` compares the mean of the visible tokens with the mean of
    all the teacher's tokens. With a valid mask, patches mostly without data take part in
    neither, as in the reconstruction loss. ``block``: the encoder block whose output is compared (None:
    the last one, after the final norm).
    """

    def __init__(self, arch: ArchConfig, teacher_dim: int, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 target: str = "tokens", block: int | None = None, loss: str = "cosine", weight: float = 1.0):
        super().__init__(arch, mask_ratio, norm_pix_loss)
        if target not in TARGETS or loss not in LOSSES:
            raise CsptError(f"--distill-target must be one of {TARGETS} and --distill-loss one of {LOSSES}")
        if block is not None and not 0 <= block < arch.depth:
            raise CsptError(f"--distill-block {block} must be a block index below the depth {arch.depth}")
        self.distill_head = nn.Linear(arch.embed_dim, teacher_dim)
        self.target, self.block, self.loss_kind, self.weight = target, block, loss, weight
        self.last_parts: dict[str, torch.Tensor] = {}  #: the two losses of the last forward, detached
        self._captured: torch.Tensor | None = None
        if block is not None and block != arch.depth - 1:
            self.blocks[block].register_forward_hook(self._capture)
        else:
            self.block = None

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._captured = output

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
                ids_shuffle: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                teacher_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, pred, mask)`` as the MAE's; with ``teacher_tokens`` ``(B, L, D_teacher)`` the loss is
        reconstruction + ``weight`` x distillation, and :attr:`last_parts` holds the two."""
        if teacher_tokens is None:
            return super().forward(images, mask_ratio, noise, ids_shuffle, valid)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if ids_shuffle is None:
            ids_shuffle = masking_order(noise if noise is not None else
                                        torch.rand(images.shape[0], self.arch.grid_size**2, device=images.device))
        tokens, mask, ids_restore = self.forward_encoder(images, ratio, ids_shuffle=ids_shuffle)
        pred = self.forward_decoder(tokens, ids_restore)
        reconstruction = self.forward_loss(images, pred, mask, valid)
        student = (self._captured if self.block is not None else tokens)[:, self.num_prefix_tokens:]
        self._captured = None
        keep = ids_shuffle[:, :student.shape[1]]
        # patches mostly without data are compared neither as tokens nor inside the pooled means
        # per-band validity (a replay of another sensor): guided only where every band has data, as the teacher
        # may need the bands a replayed image lacks
        with_data = torch.ones(teacher_tokens.shape[:2], device=images.device) if valid is None else \
            self.scored_patches(valid.all(1) if valid.dim() == 4 else valid)
        visible = with_data.gather(1, keep)
        if self.target == "pooled":
            predicted = self.distill_head(masked_mean(student, visible))
            target, weights = masked_mean(teacher_tokens, with_data), (visible.sum(1) > 0).float()
        else:
            predicted = self.distill_head(student)
            target = teacher_tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, teacher_tokens.shape[-1]))
            weights = visible
        distill = feature_loss(predicted, target, self.loss_kind, None if valid is None else weights)
        self.last_parts = {"reconstruction": reconstruction.detach(), "distill": distill.detach()}
        return reconstruction + self.weight * distill, pred, mask


def masked_mean(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mean of ``tokens`` ``(B, L, D)`` over the positions with ``weights`` ``(B, L)`` 1."""
    return (tokens * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)


@torch.no_grad()
def teacher_tokens(teacher: VisionTransformer, images: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """A frozen ViT's patch tokens ``(B, L, D)`` of the whole images at ``block`` (None: the last, normed)."""
    last = len(teacher.blocks) - 1
    index = last if block is None else block
    return teacher.forward_intermediates(images, indices=[index], norm=index == last, output_fmt="NLC",
                                         intermediates_only=True)[0]
