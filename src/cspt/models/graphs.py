"""Fine-tuned models as graphs with tensor inputs and outputs, for export (ONNX, ``torch.export``).

A classifier (class logits) is a graph already. A segmenter's graph gives per-pixel class
probabilities (:class:`SegmenterProbabilities`): what GIS tools threshold and take the arg-max of
(QGIS Deepness's ``Segmentor``); their logarithm differs from the logits by a constant per pixel. A
torchvision detector takes a list of images and answers with a list of dicts; :class:`DetectorRows`
makes it one image in, one tensor out, in the row layout of YOLOv5 detectors that GIS tools read
(QGIS Deepness's ``YOLO_v5_or_v7_default``): one row per detection, ``cx, cy, w, h, score`` and a
score per class (the detection's score for its class, 0 for the others). The detector's own
post-processing (RPN and class-wise NMS, its score threshold and detection cap) runs inside the graph,
so the rows are its final detections.
"""

from __future__ import annotations

import torch
from torch import nn

#: what a detector graph's output rows hold, column by column
DETECTION_ROW = "cx cy w h score class_scores..."


class DetectorRows(nn.Module):
    """A torchvision detector for one ``(1, C, H, W)`` image on its 0-1 scale -> ``(1, N, 5 + classes)`` rows."""

    def __init__(self, detector: nn.Module, num_classes: int):
        super().__init__()
        self.detector = detector
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        found = self.detector([images[0]])[0]
        boxes, scores = found["boxes"], found["scores"]
        centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        labels = found["labels"] - 1  # torchvision's 0 is the background
        class_scores = torch.nn.functional.one_hot(labels, self.num_classes).to(scores) * scores[:, None]
        return torch.cat([centre, size, scores[:, None], class_scores], dim=1)[None]


class SegmenterProbabilities(nn.Module):
    """A segmenter whose output is the softmax of its logits over the classes."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter(images).softmax(1)
