"""Object detection: ViT feature pyramid + FPN + torchvision's Faster R-CNN.

The plain ViT gives four maps (:mod:`cspt.models.pyramid`); an FPN brings them to one
width and adds a max-pooled fifth level; torchvision's RPN and RoI heads do the rest.
The input size is fixed (the ViT's position grid): tiles are padded to it, never resized.
Under bf16 autocast the RPN's and the box head's last layers still answer in fp32: torchvision
decodes boxes in the dtype of the deltas, and bf16 rounds a 100 px coordinate to half a pixel.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cspt.models.pyramid import ViTFeaturePyramid
from cspt.models.vit import ArchConfig, build_encoder

#: anchor side per FPN level (strides 4..64 for patch 16): smaller than torchvision's 32..512
SMALL_OBJECT_ANCHORS = (16, 32, 64, 128, 256)
BOX_FEATURES = 1024  #: width of an RoI's feature vector out of either box head (torchvision's)


def in_fp32(layer: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``layer(features)`` in fp32 whatever the autocast around it."""
    with torch.autocast(features.device.type, enabled=False):
        return layer(features.float())


class FP32RPNHead(RPNHead):
    """torchvision's RPN head (same weights) whose objectness logits and box deltas are fp32."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        hidden = [self.conv(feature) for feature in x]
        return [in_fp32(self.cls_logits, h) for h in hidden], [in_fp32(self.bbox_pred, h) for h in hidden]


class FP32Predictor(FastRCNNPredictor):
    """torchvision's box predictor (same weights) whose class scores and box deltas are fp32."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return in_fp32(super().forward, x)


class PyramidFPN(nn.Module):
    """ViT pyramid -> FPN (+ max-pooled top level): the ``backbone`` torchvision detectors expect."""

    def __init__(self, pyramid: ViTFeaturePyramid, out_channels: int = 256):
        super().__init__()
        self.pyramid = pyramid
        self.fpn = FeaturePyramidNetwork(pyramid.channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.pyramid(images))))


def build_detector(arch: ArchConfig, num_classes: int, mean: Sequence[float], std: Sequence[float], *,
                   style: str = "cspt", taps: Sequence[int] | None = None, fpn_channels: int = 256,
                   anchor_sizes: Sequence[int] = SMALL_OBJECT_ANCHORS, detections_per_image: int = 300,
                   score_threshold: float = 0.05, roi_samples: int = 512, drop_path: float = 0.0,
                   nms_iou: float = 0.5, box_head: str = "mlp", rpn_proposals: int | None = None) -> FasterRCNN:
    """Faster R-CNN on a ViT for ``num_classes`` object classes (background is added).

    Inputs are lists of ``(C, img_size, img_size)`` images on the 0-1 scale; the model
    normalises them with ``mean``/``std``. ``nms_iou`` is the class-wise NMS threshold of
    its detections (0.5 in torchvision; lower it for objects that never overlap, e.g. tree crowns).
    ``box_head``: ``mlp`` (torchvision's two fully connected layers) or ``conv`` (ViTDet's
    4conv1fc: four 3x3 conv-BN-ReLU layers on the 7x7 RoI features, then one 1024-wide layer).
    ``rpn_proposals``: the RPN's proposals per image kept before NMS (per level) and after it, in
    training and inference alike; None keeps torchvision's 2000 in training and 1000 in inference.
    """
    proposals = {} if rpn_proposals is None else {
        f"rpn_{when}_nms_top_n_{mode}": rpn_proposals for when in ("pre", "post") for mode in ("train", "test")}
    pyramid = ViTFeaturePyramid(build_encoder(arch, learn_pos_embed=True, drop_path_rate=drop_path), style, taps)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(PyramidFPN(pyramid, fpn_channels),
                      rpn_head=FP32RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
                      box_predictor=FP32Predictor(BOX_FEATURES, num_classes + 1),
                      min_size=arch.img_size, max_size=arch.img_size, image_mean=list(mean), image_std=list(std),
                      fixed_size=(arch.img_size, arch.img_size), size_divisible=arch.patch_size,
                      rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
                      box_detections_per_img=detections_per_image, box_score_thresh=score_threshold,
                      box_batch_size_per_image=roi_samples, box_nms_thresh=nms_iou,
                      box_head=(conv_box_head if box_head == "conv" else mlp_box_head)(fpn_channels), **proposals)


def mlp_box_head(channels: int) -> TwoMLPHead:
    """torchvision's RoI box head: two fully connected layers on the 7x7 RoI features."""
    return TwoMLPHead(channels * 7 * 7, BOX_FEATURES)


def conv_box_head(channels: int) -> FastRCNNConvFCHead:
    """ViTDet's RoI box head: 4 x (3x3 conv, BatchNorm, ReLU) at ``channels``, then a 1024-wide layer."""
    return FastRCNNConvFCHead((channels, 7, 7), [channels] * 4, [BOX_FEATURES], norm_layer=nn.BatchNorm2d)


def detector_encoder(model: FasterRCNN) -> nn.Module:
    """The ViT inside a detector built by :func:`build_detector`."""
    return model.backbone.pyramid.encoder
