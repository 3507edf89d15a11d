"""What a fine-tuned model's JSON sidecar says, as typed, versioned dataclasses built with keyword arguments.

``classifier.json``, ``segmenter.json`` and ``detector.json`` (beside their ``.safetensors``) hold
how to rebuild the model, how its inputs are made (the pixel contract), what it was selected on
and where its weights came from. :func:`description_from_dict` reads them back, older releases'
files included (their pixel keys become a contract).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cspt.data.pixels import PixelContract
from cspt.errors import CsptError
from cspt.models.vit import ArchConfig

#: the layout of :meth:`ModelDescription.to_dict`
DESCRIPTION_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ModelDescription:
    """What every fine-tuned model's sidecar says."""

    task: ClassVar[str] = ""
    architecture: dict[str, Any]  #: the ViT encoder (:class:`~cspt.models.vit.ArchConfig` fields)
    pixels: dict[str, Any]  #: how a file becomes its input (:class:`~cspt.data.pixels.PixelContract`)
    selected: str = ""  #: which weights were kept, and why
    lineage: list[dict[str, Any]] = field(default_factory=list)  #: where the weights came from, oldest first
    version: int = DESCRIPTION_VERSION

    @property
    def arch(self) -> ArchConfig:
        return ArchConfig.from_dict(self.architecture)

    @property
    def contract(self) -> PixelContract:
        return PixelContract.from_dict(self.pixels)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, **dataclasses.asdict(self)}

    def replace(self, **changes: Any) -> ModelDescription:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class ClassifierDescription(ModelDescription):
    """The sidecar of a fine-tuned classifier: its classes, pooling and evaluation crop."""

    task: ClassVar[str] = "classify"
    classes: list[str]
    global_pool: str = "avg"
    eval_crop_ratio: float = 0.875
    format: str = "timm"  #: the weights load into timm unchanged


@dataclass(frozen=True, kw_only=True)
class SegmenterDescription(ModelDescription):
    """The sidecar of a fine-tuned segmenter: palette, pyramid and heads, and its sliding window."""

    task: ClassVar[str] = "segment"
    palette: dict[str, Any]  #: :class:`~cspt.data.segmentation.Palette` as a dict
    ignore_index: int = 255
    pyramid: str = "cspt"
    taps: list[int]
    channels: int
    aux_channels: int
    crop_size: int  #: the network's input and sliding window, in pixels
    stride: int
    resize: float = 1.0
    format: str = "cspt segmenter"


@dataclass(frozen=True, kw_only=True)
class DetectorDescription(ModelDescription):
    """The sidecar of a fine-tuned detector: classes, pyramid and Faster R-CNN settings, tiling, validation set."""

    task: ClassVar[str] = "detect"
    classes: list[str]
    pyramid: str = "cspt"
    taps: list[int]
    fpn_channels: int
    anchor_sizes: list[int]
    rpn_proposals: int | None = None
    roi_samples: int = 512
    box_head: str = "mlp"
    detections_per_image: int = 300
    score_threshold: float = 0.05
    tile_size: int
    tile_overlap: int
    nms_iou: float = 0.5
    val: str | None = None  #: the validation annotations (``cspt evaluate detect`` reuses them)
    val_images: str | None = None
    format: str = "auto"  #: the annotations' format
    class_field: str = "class"
    operating_point: dict[str, Any] | None = None  #: the score threshold with the best F1 on training tiles
    format_of_weights: str = "cspt detector"


DESCRIPTIONS: dict[str, type[ModelDescription]] = {
    cls.task: cls for cls in (ClassifierDescription, SegmenterDescription, DetectorDescription)}


def description_from_dict(values: dict[str, Any], source: object = "model description") -> ModelDescription:
    """The description a sidecar holds (its ``task`` picks the class); a one-line error naming ``source``."""
    cls = DESCRIPTIONS.get(values.get("task", ""))
    if cls is None:
        raise CsptError(f"{source}: not a cspt model description (task {values.get('task')!r})")
    if values.get("version", DESCRIPTION_VERSION) > DESCRIPTION_VERSION:
        raise CsptError(f"{source}: description version {values['version']} is newer than this cspt reads "
                        f"({DESCRIPTION_VERSION}); upgrade cspt")
    known = {f.name for f in dataclasses.fields(cls)}
    kept = {k: v for k, v in values.items() if k in known}
    in_chans = values.get("architecture", {}).get("in_chans")
    kept["pixels"] = PixelContract.from_description(values, in_chans, source).to_dict()
    try:
        return cls(**kept)
    except TypeError as err:
        raise CsptError(f"{source}: incomplete {cls.task} description ({err})") from None
