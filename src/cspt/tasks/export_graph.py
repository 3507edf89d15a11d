"""``cspt export RUN --to onnx|exported-program``: a fine-tuned classifier, segmenter or detector as one file
that holds everything needed to use it.

Inputs are what the PyTorch model takes: windows of the model's tile size (fixed: the ViT's position
grid), read and normalised by the run's pixel contract (a detector: on the 0-1 scale; it normalises
inside). The batch size is free for classifiers and segmenters; a detector graph takes one window (its
number of detections varies per window, and GIS tools feed detectors one tile at a time). Outputs:
class logits, per-pixel class probabilities, or the detector's final detections as rows
(:data:`~cspt.models.graphs.DETECTION_ROW`).

Classifiers and segmenters go through ``torch.export`` (the ONNX file by its ONNX translator). A detector's
ONNX goes through the TorchScript-based exporter that torchvision supports for its detectors:
torchvision's detection post-processing (proposal and class-wise NMS, RoI assignment) has sizes that
depend on the data, which ``torch.export`` cannot capture, so a detector has no ``exported-program``.

The metadata holds the model's description (:mod:`cspt.weights.graphs`) and the keys of the QGIS
Deepness plugin (``model_type``, ``class_names``, ``tile_size``, ``tiles_overlap``, ``resolution``,
``standardization_mean``/``std``, ``seg_thresh``, ``det_type``, ``det_conf``, ``det_iou_thresh``), so
the same file opens in QGIS. Deepness reads 8-bit pixels divided by 255: a model whose contract scales
otherwise is said to be read differently there.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cspt.atomic import atomic_write
from cspt.errors import CsptError
from cspt.models.graphs import DETECTION_ROW, DetectorRows, SegmenterProbabilities
from cspt.tasks.classify import CLASSIFIER, load_classifier
from cspt.tasks.common import DescribedModel
from cspt.tasks.detect import DETECTOR, load_detector, operating_threshold
from cspt.tasks.segment import SEGMENTER, load_segmenter
from cspt.weights.export import portable
from cspt.weights.graphs import DESCRIPTION_KEY, PROGRAM_DESCRIPTION, OnnxModel, is_graph_file
from cspt.weights.load import description_of

log = logging.getLogger("cspt")

GRAPH_TARGETS = ("onnx", "exported-program")
#: the weights file and loader of each fine-tuned task
FINE_TUNED = {"classify": (CLASSIFIER, load_classifier), "segment": (SEGMENTER, load_segmenter),
              "detect": (DETECTOR, load_detector)}
#: Deepness's name for each task's model type (it has none for scene classifiers)
DEEPNESS_TYPES = {"segment": "Segmentor", "detect": "Detector"}
ONNX_OPSET = 18
DETECTOR_OPSET = 17  #: the TorchScript-based exporter's, for detectors
#: the largest difference between the exported graph's outputs and PyTorch's accepted at export (fp32; a detector's
#: rows, in pixels, 100 times this)
CHECK_TOLERANCE = 1e-3


def fine_tuned_model(source: str | Path) -> DescribedModel:
    """The fine-tuned model of a run directory or weights file; a one-line error for anything else."""
    path = Path(source)
    if path.is_dir():
        task = next((task for task, (name, _) in FINE_TUNED.items() if (path / name).is_file()), None)
        if task is None:
            has_encoder = (path / "encoder.safetensors").is_file() or (path / "checkpoints").is_dir()
            raise CsptError(f"{path}: {'a pretraining run: it has no head' if has_encoder else 'no fine-tuned model'}"
                            f" to export as a graph (classifier, segmenter or detector .safetensors); export an "
                            f"encoder with --to timm, hf or mae")
    elif not path.is_file():
        raise CsptError(f"{path}: no such run directory or model file")
    else:
        task = description_of(path).get("task")
        if task not in FINE_TUNED:
            raise CsptError(f"{path}: not a fine-tuned cspt classifier, segmenter or detector (no head to export); "
                            "export an encoder with --to timm, hf or mae")
    return FINE_TUNED[task][1](path)


def tile_size(described: DescribedModel) -> int:
    """The side of the windows the model takes."""
    info = described.info
    return {"classify": info.arch.img_size, "segment": getattr(info, "crop_size", 0),
            "detect": getattr(info, "tile_size", 0)}[info.task]


def graph_of(described: DescribedModel) -> nn.Module:
    """The module to export: a classifier itself, a segmenter with probabilities out
    (:class:`~cspt.models.graphs.SegmenterProbabilities`), a detector as :class:`~cspt.models.graphs.DetectorRows`."""
    model, task = described.model.eval(), described.info.task
    if task == "detect":
        return DetectorRows(model, len(described.info.classes)).eval()
    return SegmenterProbabilities(model).eval() if task == "segment" else model


def output_name(task: str) -> str:
    """What a classifier's or segmenter's graph gives."""
    return "probabilities" if task == "segment" else "logits"


def example_input(described: DescribedModel, batch: int, seed: int = 0) -> torch.Tensor:
    """A batch of inputs as the model sees them: normalised noise, or 0-1 noise for a detector."""
    generator = torch.Generator().manual_seed(seed)
    size, bands = tile_size(described), described.info.arch.in_chans
    shape = (batch, bands, size, size)
    return torch.rand(shape, generator=generator) if described.info.task == "detect" else \
        torch.randn(shape, generator=generator)


def deepness_metadata(described: DescribedModel, gsd: float | None) -> dict[str, str]:
    """The Deepness plugin's metadata keys (each value JSON, as it reads them)."""
    info, contract = described.info, described.info.contract
    size = tile_size(described)
    classes = info.palette["classes"] if info.task == "segment" else info.classes
    keys: dict[str, Any] = {"class_names": {str(index): name for index, name in enumerate(classes)},
                            "tile_size": size, "tiles_size": size}
    if info.task in DEEPNESS_TYPES:
        keys["model_type"] = DEEPNESS_TYPES[info.task]
    if gsd:  # centimetres per pixel of what the network sees (a segmenter resizes its windows by ``resize``)
        keys["resolution"] = gsd * 100 / (info.resize if info.task == "segment" else 1.0)
    if info.task == "segment":
        keys.update(tiles_overlap=round(100 * (info.crop_size - info.stride) / info.crop_size),
                    standardization_mean=list(contract.mean), standardization_std=list(contract.std),
                    seg_thresh=0.0)  # no probability floor: Deepness takes the arg-max, as cspt's class maps
    if info.task == "detect":
        keys.update(tiles_overlap=round(100 * info.tile_overlap / info.tile_size), det_type="YOLO_v5_or_v7_default",
                    det_conf=operating_threshold(info), det_iou_thresh=info.nms_iou, det_remove_overlap=True)
    return {key: json.dumps(value) for key, value in keys.items()}


def reads_like_deepness(described: DescribedModel) -> bool:
    """Whether Deepness (8-bit pixels / 255, no nodata) feeds the model what cspt's contract does."""
    contract = described.info.contract
    first_bands = contract.bands in (None, tuple(range(1, contract.in_chans + 1)))
    return contract.low is None and contract.nodata is None and contract.decibels is None and first_bands


def export_graph(source: str | Path, to: str, output: str | Path, gsd: float | None = None) -> Path:
    """Export the fine-tuned model of ``source`` ``to`` ONNX or a ``torch.export`` archive at ``output``, with its
    description (and Deepness's keys) inside; checked against PyTorch on the way (logged)."""
    if to not in GRAPH_TARGETS:
        raise CsptError(f"{source}: unknown graph format '{to}'; choose one of {', '.join(GRAPH_TARGETS)}")
    if is_graph_file(source):
        raise CsptError(f"{source}: already an exported graph; export from the run directory it came from")
    described = fine_tuned_model(source)
    task = described.info.task
    if to == "exported-program" and task == "detect":
        raise CsptError(f"{described.path}: a detector cannot be captured by torch.export (torchvision's NMS has "
                        "sizes that depend on the data); export it with --to onnx")
    if gsd is not None and gsd <= 0:
        raise CsptError(f"--gsd {gsd}: the ground sample distance must be positive (metres per pixel)")
    info = described.info.to_dict()
    info["lineage"] = portable([*info.get("lineage", []), {"stage": "export", "format": to, "path": str(
        described.path), "torch": torch.__version__}])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if to == "onnx":
        export_onnx(described, output, info, gsd)
    else:
        export_program(described, output, info)
    if gsd is None and to == "onnx":
        log.info("%s: no --gsd, so no ground sample distance recorded (QGIS Deepness will ask for the resolution)",
                 output)
    if task in DEEPNESS_TYPES and not reads_like_deepness(described):
        log.warning("%s: QGIS Deepness feeds models 8-bit pixels divided by 255, which is not this model's pixel "
                    "contract (%s): use cspt predict --model for it", output, described.info.contract.describe())
    return output


def export_onnx(described: DescribedModel, output: Path, info: dict[str, Any], gsd: float | None) -> None:
    """The ONNX file, its metadata, and the check of its outputs against PyTorch's."""
    import onnx

    task = described.info.task
    graph, detector = graph_of(described), task == "detect"
    example = example_input(described, 1 if detector else 2)

    def write(tmp: Path) -> None:
        with quiet_exporters():
            if detector:
                torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=DETECTOR_OPSET,
                                  input_names=["images"], output_names=["detections"])
            else:
                torch.onnx.export(graph, (example,), str(tmp), dynamo=True, opset_version=ONNX_OPSET,
                                  input_names=["images"], output_names=[output_name(task)], external_data=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
        model = onnx.load(str(tmp))
        graph_info = {"input": "images: (batch, bands, tile, tile) float32, "
                               + ("0-1 scale (the detector normalises)" if detector else "normalised"),
                      "output": DETECTION_ROW if detector else output_name(task), "tile_size": tile_size(described),
                      "batch": 1 if detector else "any", "check": check_onnx(graph, described, tmp, output)}
        metadata = {DESCRIPTION_KEY: json.dumps(info), "cspt_graph": json.dumps(graph_info),
                    **deepness_metadata(described, gsd)}
        del model.metadata_props[:]
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))

    atomic_write(output, write)


@contextmanager
def quiet_exporters() -> Iterator[None]:
    """The exporters' warnings and INFO logs (notes on tracing and on their graph rewrites) kept out of the
    user's log."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():  # the libraries' own (tracing notes on torchvision's and timm's code); not cspt's
        warnings.filterwarnings("ignore", module=r"(torch|torchvision|timm|onnx|onnxscript|onnx_ir)(\.|$)")
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                DeprecationWarning)  # chosen for detectors: see the module doc
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@torch.no_grad()
def check_onnx(graph: nn.Module, described: DescribedModel, path: Path, name: Path) -> dict[str, Any]:
    """The largest difference between the outputs of the exported module ``graph`` and of its ONNX file at
    ``path`` (written for ``name``) on noise (a batch of 3 when the batch is free, so another size than the
    export's; a detector: whole rows, on the first of a few noise windows where it finds something); a one-line
    error above :data:`CHECK_TOLERANCE`."""
    runtime, task = OnnxModel(path, described.info.task), described.info.task
    if task != "detect":
        images = example_input(described, 3, seed=1)
        worst = float((graph(images) - torch.from_numpy(runtime.run(images))).abs().max())
    else:
        worst = None
        for seed in range(1, 5):
            images = example_input(described, 1, seed=seed) * (1.0 if seed % 2 else 0.5)
            ours, theirs = graph(images)[0], torch.from_numpy(runtime.run(images)[0])
            if ours.shape != theirs.shape:
                raise CsptError(f"{name}: the exported detector finds {len(theirs)} objects where PyTorch finds "
                                f"{len(ours)}")
            if len(ours):
                worst = float((ours - theirs).abs().max())
                break
        if worst is None:
            log.warning("%s: the detector finds nothing on noise, so the export could not be compared with PyTorch; "
                        "compare cspt predict with --model and with the run on a scene", name)
            return {"max_abs_difference": None, "on": "noise inputs: nothing detected", "runtime": "onnxruntime"}
    if worst > CHECK_TOLERANCE * (100 if task == "detect" else 1):
        raise CsptError(f"{name}: the exported graph's outputs differ from PyTorch's by {worst:.2g}")
    log.info("%s: onnxruntime and PyTorch outputs agree within %.2g on noise", name, worst)
    return {"max_abs_difference": worst, "on": "noise inputs", "runtime": "onnxruntime"}


def export_program(described: DescribedModel, output: Path, info: dict[str, Any]) -> None:
    """A ``torch.export`` archive (``torch.export.load(path).module()`` runs it) with the description inside."""
    graph = graph_of(described)
    program = torch.export.export(graph, (example_input(described, 2),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    archive = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, and the atomic write's is .tmp
    torch.export.save(program, archive, extra_files={PROGRAM_DESCRIPTION: json.dumps(info)})
    atomic_write(output, lambda tmp: tmp.write_bytes(archive.getvalue()))
