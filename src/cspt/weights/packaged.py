"""Weights that travel with cspt: the natural-image tiny MAE the demo and the tiny recipes start from.

``cspt:mae-tiny-tinyimagenet`` names it wherever a checkpoint is taken (``--init``, ``--distill-from``,
``cspt info``). It is the MAE in ``../shared/weights`` (a ViT with patch 8, width 192, depth 8 and a
one-block decoder, trained on Tiny-ImageNet at 64 px), stored in half precision but its fixed
position embeddings (7.4 MiB instead of 14.8); ``benchmarks/packaged_source.py`` made it and
measures what half precision changes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cspt.errors import CsptError

PREFIX = "cspt:"
PACKAGED = {
    "name": "cspt:mae-tiny-tinyimagenet",
    "file": "mae_vit_tiny_p8_64_tinyimagenet.safetensors",
    "terms": ("trained on Tiny-ImageNet images, whose terms allow non-commercial research and education only; "
              "use these weights (and what you train from them) on those terms, or start from your own source"),
}


def is_packaged_name(value: object) -> bool:
    """Whether ``value`` names weights that ship with cspt (``cspt:NAME``)."""
    return isinstance(value, (str, Path)) and str(value).startswith(PREFIX)


def packaged_path(name: str = PACKAGED["name"]) -> Path:
    """Where packaged weights ``name`` live in this installation (present or not)."""
    if name != PACKAGED["name"]:
        raise CsptError(f"{name}: no such packaged weights (cspt ships {PACKAGED['name']})")
    return Path(str(resources.files("cspt") / "weights" / PACKAGED["file"]))


def packaged_file(name: str = PACKAGED["name"]) -> Path:
    """The file of packaged weights ``name``; a one-line error when it is not one or is missing."""
    path = packaged_path(name)
    if not path.is_file():
        raise CsptError(f"{name}: the packaged file {path} is missing from this installation of cspt; reinstall "
                        "it, or pass --init (or $CSPT_SOURCE_CHECKPOINT) another source")
    return path
