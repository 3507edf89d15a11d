"""Semantic segmentation: ViT feature pyramid + UperNet head (+ an auxiliary FCN head).

UperNet (Xiao et al. 2018), as in the BEiT/CSPT recipes: pyramid pooling on the
coarsest map, a top-down FPN over all four, every level upsampled to the finest and
fused. The auxiliary FCN head reads the third level and only trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cspt.models.pyramid import ViTFeaturePyramid
from cspt.models.vit import ArchConfig, build_encoder


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """A ``kernel`` x ``kernel`` convolution (padded to keep the size, no bias), BatchNorm and ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """Average-pool the map to 1x1, 2x2, 3x3 and 6x6, project, upsample and concatenate with it."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_channels, channels, 1))
                                    for s in scales)
        self.bottleneck = conv_bn_relu(in_channels + len(scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetHead(nn.Module):
    """Pyramid pooling + FPN fusion; class logits at the finest level's resolution."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [lateral(f) for lateral, f in zip(self.lateral, features, strict=False)]
        levels.append(self.ppm(features[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outs = [smooth(level) for smooth, level in zip(self.smooth, levels, strict=False)] + [levels[-1]]
        size = outs[0].shape[-2:]
        return self.classifier(self.fuse(torch.cat([outs[0], *(_resize(o, size) for o in outs[1:])], dim=1)))


class FCNHead(nn.Module):
    """One 3x3 conv-BN-ReLU and a 1x1 classifier: the auxiliary loss head."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x))


class Segmenter(nn.Module):
    """ViT + pyramid + UperNet. ``forward`` gives logits at the input size.

    In training mode with an auxiliary head, ``forward`` returns ``(logits, aux_logits)``.
    """

    def __init__(self, backbone: ViTFeaturePyramid, num_classes: int, channels: int = 768,
                 aux_channels: int | None = 256, aux_level: int = 2):
        super().__init__()
        self.backbone = backbone
        self.decode_head = UperNetHead(backbone.channels, channels, num_classes)
        self.aux_level = aux_level
        self.aux_head = (FCNHead(backbone.channels[aux_level], aux_channels, num_classes)
                         if aux_channels else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        logits = _resize(self.decode_head(features), images.shape[-2:])
        if self.training and self.aux_head is not None:
            return logits, _resize(self.aux_head(features[self.aux_level]), images.shape[-2:])
        return logits


def build_segmenter(arch: ArchConfig, num_classes: int, *, channels: int = 768, aux_channels: int | None = 256,
                    style: str = "cspt", taps: Sequence[int] | None = None, drop_path: float = 0.0) -> Segmenter:
    """The full segmentation model for ``arch`` (input size ``arch.img_size``)."""
    encoder = build_encoder(arch, learn_pos_embed=True, drop_path_rate=drop_path)
    return Segmenter(ViTFeaturePyramid(encoder, style, taps), num_classes, channels, aux_channels)
