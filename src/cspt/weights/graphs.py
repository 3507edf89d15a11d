"""Exported model graphs (``.onnx``, ``.pt2``): what their metadata says, and running them as the models they
came from.

``cspt export --to onnx`` and ``--to exported-program`` (:mod:`cspt.tasks.export_graph`) write the
model's whole description (task, classes, palette, pixel contract, tiling) into the file: the ONNX
``metadata_props`` key ``cspt``, or the ``cspt.json`` extra file of a ``torch.export`` archive. So the file
alone is enough to predict: :class:`OnnxModel` runs one through onnxruntime, called exactly as the PyTorch
model (a batch of windows in, logits out; a detector: a list of windows in, torchvision's list of
``boxes``/``scores``/``labels`` out; see :class:`OnnxModel`), so every ``cspt predict`` and ``cspt evaluate``
runs it unchanged.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cspt.errors import CsptError

#: the metadata key (ONNX) and extra file (``torch.export``) holding the model's description
DESCRIPTION_KEY = "cspt"
PROGRAM_DESCRIPTION = "cspt.json"
#: where a segmenter's probabilities are floored before their logarithm (fp32 softmax underflows to 0)
SMALLEST_PROBABILITY = 1e-30
#: the suffix of each graph format
GRAPH_SUFFIXES = {".onnx": "onnx", ".pt2": "exported-program"}


def is_graph_file(path: str | Path) -> bool:
    """Whether ``path`` names an exported graph (by its suffix)."""
    return Path(path).suffix.lower() in GRAPH_SUFFIXES


def onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file; a one-line error when it is not ONNX."""
    try:
        import onnx
    except ImportError:
        raise CsptError(f"{path}: reading ONNX models needs onnx: pip install 'cspt[onnx]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError, onnx others
        raise CsptError(f"{path}: not a readable ONNX file ({str(err).splitlines()[0] if str(err) else err})") \
            from None
    return {prop.key: prop.value for prop in model.metadata_props}


def graph_description(path: Path) -> dict[str, Any]:
    """The cspt description inside an exported graph, ``{}`` when it holds none."""
    if path.suffix.lower() == ".onnx":
        text = onnx_metadata(path).get(DESCRIPTION_KEY)
    else:  # read from the zip as a file: torch.export.load would unpickle, which runs the file's code
        try:
            with zipfile.ZipFile(path) as archive:
                member = next((name for name in archive.namelist() if name.endswith(f"/extra/{PROGRAM_DESCRIPTION}")),
                              None)
                text = archive.read(member).decode() if member else ""
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as err:
            raise CsptError(f"{path}: not a readable torch.export archive ({err})") from None
    return parsed_description(text, path)


def parsed_description(text: str | None, path: Path) -> dict[str, Any]:
    """A graph's description from its JSON text (``{}`` when it has none); a one-line error when damaged."""
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise CsptError(f"{path}: damaged cspt description in its metadata") from None


def graph_info(path: str | Path) -> dict[str, Any]:
    """What ``cspt info`` says of an exported graph: its format, task, classes, pixel contract, window, what
    the graph takes and gives (ONNX), and lineage."""
    path = Path(path)
    if not path.is_file():
        raise CsptError(f"{path}: no such file")
    onnx_file = GRAPH_SUFFIXES[path.suffix.lower()] == "onnx"
    metadata = onnx_metadata(path) if onnx_file else {}
    described = parsed_description(metadata.get(DESCRIPTION_KEY), path) if onnx_file else graph_description(path)
    if not described:
        raise CsptError(f"{path}: holds no cspt description (not exported by cspt export)")
    classes = described.get("classes") or described.get("palette", {}).get("classes")
    graph = json.loads(metadata.get("cspt_graph", "{}"))
    return {"file": str(path), "format": GRAPH_SUFFIXES[path.suffix.lower()], "task": described.get("task"),
            "classes": classes, "pixels": described.get("pixels"), "graph": graph,
            "lineage": described.get("lineage", [])}


class OnnxModel:
    """An exported cspt model run by onnxruntime on the CPU, called as the PyTorch model it came from.

    ``task`` ``classify``: ``model(images)`` with a ``(B, C, H, W)`` tensor gives the logits. ``segment``: the
    logarithm of the graph's probabilities (at least ``log(1e-30)``): the logits less a constant per pixel, so
    the same arg-max and, blended across windows, the same probabilities. ``detect``: ``model(images)`` with a
    list of ``(C, H, W)`` tensors gives one dict per image with ``boxes`` (x1, y1, x2, y2), ``scores`` and
    1-based ``labels``, as torchvision's detectors answer.
    """

    def __init__(self, path: Path, task: str):
        try:
            import onnxruntime
        except ImportError:
            raise CsptError(f"{path}: running ONNX models needs onnxruntime: pip install 'cspt[onnx]'") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CsptError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from None
        self.path, self.task = path, task
        self.input = self.session.get_inputs()[0]

    def to(self, device: torch.device | str) -> OnnxModel:
        """Itself: onnxruntime runs on the CPU, and inputs are brought there."""
        return self

    def eval(self) -> OnnxModel:
        """Itself: a graph is always in inference mode."""
        return self

    def run(self, images: torch.Tensor) -> np.ndarray:
        """The graph's output for a batch of inputs."""
        expected = self.input.shape[1]
        if isinstance(expected, int) and images.shape[1] != expected:
            raise CsptError(f"{self.path}: takes {expected} bands, got {images.shape[1]}")
        return self.session.run(None, {self.input.name: images.detach().float().cpu().numpy()})[0]

    def __call__(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[dict[str, torch.Tensor]]:
        if self.task == "segment":
            return torch.from_numpy(self.run(images)).clamp_(min=SMALLEST_PROBABILITY).log_()
        if self.task != "detect":
            return torch.from_numpy(self.run(images))
        return [detections_of_rows(self.run(image[None])[0]) for image in images]


def detections_of_rows(rows: np.ndarray) -> dict[str, torch.Tensor]:
    """A detector graph's ``(N, 5 + classes)`` rows (:data:`~cspt.models.graphs.DETECTION_ROW`) as torchvision's
    detection dict (x1, y1, x2, y2 boxes; 1-based labels)."""
    rows = torch.from_numpy(rows)
    centre, half = rows[:, :2], rows[:, 2:4] / 2
    return {"boxes": torch.cat([centre - half, centre + half], dim=1), "scores": rows[:, 4],
            "labels": rows[:, 5:].argmax(1) + 1}
