"""Read ViT/MAE checkpoints safely, infer their architecture, and load them with a report.

Formats recognised here: the official MAE layout (``{"model": state_dict}``, with or
without the decoder), bare timm/MAE state dicts, ``.safetensors`` files, Hugging Face
ViT-MAE (files or ``save_pretrained`` folders), OpenMMLab checkpoints, and cspt runs
(training states, run folders, ``encoder.safetensors``). Position embeddings are recomputed (fixed sin-cos) or resampled
(learned) for another input size, and RGB patch embeddings are adapted to other band
counts.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors
from timm.layers import resample_abs_pos_embed
from torch import nn

from cspt.data.bands import Band, config_band_groups
from cspt.errors import CsptError
from cspt.models.mae import DECODER_PREFIXES
from cspt.models.vit import VIT_PRESETS, sincos_pos_embed
from cspt.weights.band_adapt import BandPlan, adapt_filters, adapt_prediction, plan_bands
from cspt.weights.formats import hugging_face_to_mae, is_hugging_face, is_openmmlab, openmmlab_to_mae
from cspt.weights.graphs import graph_description, is_graph_file
from cspt.weights.hub import hub_weights, is_hub_name
from cspt.weights.packaged import is_packaged_name, packaged_file

POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")
HF_SIDECAR = "lineage.json"
#: what shapes cannot tell, read from a config stored with the weights: cspt/MAE name -> sources' names
DECLARED_HEADS = {"num_heads": ("num_heads", "num_attention_heads"),
                  "decoder_num_heads": ("decoder_num_heads", "decoder_num_attention_heads")}
#: config keys that name a model ("mae_vit_huge_patch14" in the official MAE's args, timm's "architecture")
MODEL_NAME_KEYS = ("model", "architecture", "arch", "model_name")
MODEL_SIZE = re.compile(r"(?:^|_)vit_(tiny|small|base|large|huge)(?:_|$)")
#: the decoder heads of the official MAE models (``mae_vit_{base,large,huge}_*``)
MAE_DECODER_HEADS = 16


def read_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """The object stored in a checkpoint file, loaded without running arbitrary code.

    ``argparse.Namespace`` (pickled under ``args`` by the official MAE and CSPT training
    scripts) is allowed; anything else that needs unpickling code requires ``trust``.
    """
    path = Path(path)
    if not path.exists():
        raise CsptError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CsptError(f"{path}: empty file, not a checkpoint")
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CsptError(f"{path}: not a readable safetensors file ({err})") from None
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic != b"PK" and not magic.startswith(b"\x80"):
        raise CsptError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise CsptError(
                f"{path}: the checkpoint pickles Python objects{what} that need unsafe loading; "
                "if you trust its source, pass --trust-checkpoint"
            ) from None
        raise CsptError(f"{path}: not a PyTorch checkpoint ({_first_line(err)})") from None
    except Exception as err:  # torch.load raises many types for files that are not checkpoints
        message = _first_line(err)
        if magic == b"PK" or isinstance(err, EOFError):  # starts like a checkpoint, cannot be read
            raise CsptError(f"{path}: truncated or damaged checkpoint ({message})") from None
        raise CsptError(f"{path}: not a PyTorch checkpoint ({message})") from None


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


@dataclass
class Checkpoint:
    """A state dict in MAE/timm names, with what it was detected as."""

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    declared: dict[str, Any] = field(default_factory=dict)  #: config values stored with the weights
    described: dict[str, Any] = field(default_factory=dict)  #: the JSON description beside the weights

    @property
    def arch(self) -> dict[str, Any]:
        """Architecture from shapes, with the attention heads a stored config declares."""
        arch = infer_arch(self.state_dict)
        heads, _ = declared_heads(self.declared)
        for name, value in heads.items():
            if name != "decoder_num_heads" or "decoder_dim" in arch:
                arch[name] = value
        if "group_embed" in self.state_dict:
            arch["band_groups"] = self.band_groups(arch["in_chans"])
        return arch

    @property
    def group_masking(self) -> str:
        """How a band-grouped MAE masked its groups in training, as its stored config or its description says
        (else independent)."""
        return str(self.declared.get("group_masking") or self.described.get("group_masking") or "independent")

    def band_groups(self, in_chans: int) -> list[list[int]]:
        """The spectral band groups (0-based bands) of an encoder with group tokens, as its description or its
        stored config records them; a one-line error when neither does."""
        recorded = (self.described.get("architecture") or {}).get("band_groups")
        if recorded:
            return recorded
        groups = config_band_groups(self.declared, in_chans)
        if groups:
            return [list(group) for group in groups]
        raise CsptError(f"{self.path}: has band-group tokens (group_embed) but no record of which bands form the "
                        "groups (its description or config)")

    @property
    def heads_note(self) -> str:
        """Where the encoder's attention heads come from, for the load report."""
        heads, source = declared_heads(self.declared)
        if "num_heads" in heads:
            return f"{heads['num_heads']} attention heads, from the checkpoint's {source}"
        width = self.state_dict["patch_embed.proj.weight"].shape[0]
        return (f"{max(1, width // 64)} attention heads guessed as width/64 (no config in the checkpoint "
                "names them; set --num-heads if that is wrong)")

    @property
    def normalisation(self) -> tuple[list[float], list[float]] | None:
        """The per-band mean/std the weights were trained with, when their description, a config stored with
        them (a top-level ``mean``/``std``, timm's ``pretrained_cfg``) or a Hugging Face
        ``preprocessor_config.json`` beside them records them."""
        pixels = self.described.get("pixels") if isinstance(self.described.get("pixels"), dict) else {}
        candidates = [pixels, self.described, self.declared, self.declared.get("pretrained_cfg") or {},
                      preprocessor_config(self.path)]
        for source in candidates:
            mean = source.get("mean", source.get("image_mean"))
            std = source.get("std", source.get("image_std"))
            if isinstance(mean, list) and isinstance(std, list) and mean and len(mean) == len(std):
                return [float(v) for v in mean], [float(v) for v in std]
        return None

    @property
    def has_decoder(self) -> bool:
        return any(k.startswith("decoder_") for k in self.state_dict)


def preprocessor_config(path: Path) -> dict[str, Any]:
    """A Hugging Face ``preprocessor_config.json`` beside a weights file (its ``image_mean``/``image_std``)."""
    found = path.parent / "preprocessor_config.json"
    if not found.is_file():
        return {}
    try:
        values = json.loads(found.read_text())
    except json.JSONDecodeError:
        raise CsptError(f"{found}: damaged JSON") from None
    return values if isinstance(values, dict) else {}


def declared_heads(declared: dict[str, Any]) -> tuple[dict[str, int], str]:
    """Attention heads a stored config gives, explicitly or through a model name, and which key said so."""
    heads = {}
    for name, sources in DECLARED_HEADS.items():
        key = next((s for s in sources if isinstance(declared.get(s), int)), None)
        if key:
            heads[name] = declared[key]
    if "num_heads" in heads:
        return heads, "config (" + ", ".join(heads) + ")"
    for key in MODEL_NAME_KEYS:
        found = MODEL_SIZE.search(str(declared.get(key, "")))
        if found:
            heads["num_heads"] = VIT_PRESETS[f"vit_{found.group(1)}"]["num_heads"]
            if str(declared[key]).startswith("mae_"):
                heads.setdefault("decoder_num_heads", MAE_DECODER_HEADS)
            return heads, f"{key} {declared[key]!r}"
    return heads, ""


def checkpoint_file(path: Path) -> Path:
    """The weights file behind ``path``: itself, the one inside a run or Hugging Face folder, that of a
    hub name (``hf:ORG/NAME``, ``timm:NAME``: fetched into the Hugging Face cache once) or of weights
    that ship with cspt (``cspt:NAME``)."""
    if is_packaged_name(path):
        return packaged_file(str(path))
    if is_hub_name(path):
        return hub_weights(str(path))
    if not path.is_dir():
        return path
    for name in ("checkpoints/last.pt", "encoder.safetensors", "model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise CsptError(f"{path}: folder holds no checkpoint (checkpoints/last.pt, encoder.safetensors, "
                    "model.safetensors or pytorch_model.bin)")


def load_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Read ``path`` (a file, a cspt run folder or a Hugging Face folder) and find the ViT in it."""
    path = checkpoint_file(Path(path))
    obj = read_checkpoint(path, trust)
    if not isinstance(obj, dict):
        raise CsptError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if obj.get("format") == "cspt-train-state":
        fmt, state = "cspt training state", obj["model"]
    elif isinstance(obj.get("model"), dict):
        fmt, state = "official MAE layout", obj["model"]
    elif isinstance(obj.get("state_dict"), dict):
        fmt, state = "OpenMMLab checkpoint", obj["state_dict"]
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        fmt, state = ("safetensors" if path.suffix == ".safetensors" else "timm/MAE state dict"), obj
    else:
        raise CsptError(f"{path}: no state dict found (top-level keys: {', '.join(list(obj)[:8])})")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    try:
        if is_hugging_face(state):
            fmt, state = "Hugging Face ViT-MAE", hugging_face_to_mae(state)
        elif is_openmmlab(state):
            fmt, state = "OpenMMLab (backbone/neck)", openmmlab_to_mae(state)
    except ValueError as err:
        raise CsptError(f"{path}: cannot convert the {fmt} keys ({err})") from None
    if "patch_embed.proj.weight" not in state or not any(k.startswith("blocks.") for k in state):
        sample = ", ".join(list(state)[:4]) or "none"
        raise CsptError(f"{path}: not a ViT checkpoint (no patch_embed/blocks keys; keys look like {sample})")
    described = description_of(path)
    return Checkpoint(path, fmt, state, declared_config(path, obj, described), described)


def declared_config(path: Path, obj: dict, described: dict[str, Any]) -> dict[str, Any]:
    """A config stored with the weights: in the file (a dict, or the official MAE's ``args``
    namespace), its JSON sidecar, or an HF/timm ``config.json``."""
    args = obj.get("args")
    for candidate in (obj.get("config"), vars(args) if isinstance(args, argparse.Namespace) else args,
                      described.get("architecture")):
        if isinstance(candidate, dict):
            return candidate
    hf_config = path.parent / "config.json"
    if path.name in ("model.safetensors", "pytorch_model.bin") and hf_config.is_file():
        try:
            return json.loads(hf_config.read_text())
        except json.JSONDecodeError:
            raise CsptError(f"{hf_config}: damaged JSON") from None
    return {}


def sidecar_of(path: Path) -> Path:
    """Where the JSON description of a weights file lives (``encoder.safetensors`` -> ``encoder.json``)."""
    if path.parent.name == "checkpoints":  # a run's training states: the run's encoder.json
        return path.parent.parent / "encoder.json"
    if path.name in ("model.safetensors", "pytorch_model.bin"):
        return path.parent / HF_SIDECAR
    return path.with_suffix(".json")


def description_of(path: str | Path) -> dict[str, Any]:
    """The sidecar (or safetensors metadata) of a weights file, or what an exported graph holds; ``{}`` when it
    has none."""
    path = Path(path)
    if not path.is_file():
        return {}
    if is_graph_file(path):  # an exported graph holds its description inside
        return graph_description(path)
    sidecar = sidecar_of(path)
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            raise CsptError(f"{sidecar}: damaged JSON sidecar") from None
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as handle:
                meta = (handle.metadata() or {}).get("cspt")
            return json.loads(meta) if meta else {}
        except (SafetensorError, OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            raise CsptError(f"{path}: not a readable safetensors file ({err})") from None
    return {}


def infer_arch(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture fields readable from tensor shapes (heads: width/64, decoder width/32)."""
    proj = state["patch_embed.proj.weight"]
    embed_dim, in_chans, patch_size = proj.shape[0], proj.shape[1], proj.shape[2]
    arch: dict[str, Any] = {
        "embed_dim": embed_dim,
        "in_chans": in_chans,
        "patch_size": patch_size,
        "depth": _count_blocks(state, "blocks."),
        "num_heads": max(1, embed_dim // 64),
    }
    if "blocks.0.mlp.fc1.weight" in state:
        arch["mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    if "pos_embed" in state:
        grid = _grid_side(state["pos_embed"])
        if grid:
            arch["img_size"] = grid * patch_size
    if "decoder_embed.weight" in state:
        decoder_dim = state["decoder_embed.weight"].shape[0]
        arch["decoder_dim"] = decoder_dim
        arch["decoder_depth"] = _count_blocks(state, "decoder_blocks.")
        arch["decoder_num_heads"] = max(1, decoder_dim // 32)
    return arch


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _grid_side(pos_embed: torch.Tensor) -> int | None:
    """Patches per side of a square position embedding with a cls slot."""
    tokens = pos_embed.shape[1] - 1
    side = int(round(tokens**0.5))
    return side if side * side == tokens else None


@dataclass
class LoadReport:
    """What a checkpoint load did, for the user to read."""

    source: str
    format: str
    loaded: int = 0
    total: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    decoder: str = "none in the model"
    adapted: list[str] = field(default_factory=list)
    heads: str = ""  #: where the checkpoint's attention heads were read from (shapes cannot tell)
    band_plan: BandPlan | None = None  #: how the patch embedding was grown to the model's bands

    def lines(self) -> list[str]:
        matched = "all keys matched" if not self.missing and not self.unexpected else "partial load"
        out = [f"loaded {self.loaded}/{self.total} tensors from {self.source} ({self.format}): {matched}",
               f"decoder: {self.decoder}"]
        out += [f"architecture: {self.heads}"] if self.heads else []
        out += [f"adapted: {note}" for note in self.adapted]
        if self.missing:
            out.append(f"missing (initialised): {_short_list(self.missing)}")
        if self.unexpected:
            out.append(f"unexpected (ignored): {_short_list(self.unexpected)}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _short_list(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_into_model(model: nn.Module, checkpoint: Checkpoint, source_bands: Sequence[Band] | None = None,
                    target_bands: Sequence[Band] | None = None, band_init: str = "cyclic") -> LoadReport:
    """Load ``checkpoint`` into ``model``, adapting positions and bands; return the report.

    The patch embedding grows from the checkpoint's ``source_bands`` to the model's ``target_bands`` by
    ``band_init`` (:mod:`cspt.weights.band_adapt`; ``cyclic`` where either is not known). Shapes that cannot
    be adapted raise a one-line error naming the file.
    """
    own = model.state_dict()
    model_has_decoder = any(k.startswith(DECODER_PREFIXES) for k in own)
    state = {k: v for k, v in checkpoint.state_dict.items()
             if model_has_decoder or not k.startswith(DECODER_PREFIXES)}  # an unused decoder is no mismatch
    report = LoadReport(str(checkpoint.path), checkpoint.format, heads=checkpoint.heads_note)
    for key in POS_EMBED_KEYS:
        if key in state and key in own and state[key].shape != own[key].shape:
            state[key] = _adapt_pos_embed(state[key], own[key], key, report)
    proj = "patch_embed.proj.weight"
    if proj in state and proj in own:
        plan = plan_bands(source_bands, target_bands, band_init, state[proj].shape[1], own[proj].shape[1])
        if state[proj].shape[1] != own[proj].shape[1] or (target_bands and not plan.identity):
            _adapt_bands(state, own, plan, report, plan.describe(source_bands, target_bands))
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise CsptError(f"{checkpoint.path}: does not fit the model: {_short_list(wrong, 3)}")
    result = model.load_state_dict(state, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)
    report.total = len(own)
    report.loaded = len(own) - len(report.missing)
    if model_has_decoder:
        missing_decoder = [k for k in report.missing if k.startswith(DECODER_PREFIXES)]
        if not checkpoint.has_decoder:
            report.decoder = "not in the checkpoint: initialised from scratch"
        elif missing_decoder:
            report.decoder = f"partly loaded ({len(missing_decoder)} decoder tensors initialised)"
        else:
            report.decoder = "loaded from the checkpoint"
    elif checkpoint.has_decoder:
        report.decoder = "in the checkpoint, not used by this model"
    return report


def _adapt_bands(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], plan: BandPlan,
                 report: LoadReport, how: str) -> None:
    """The patch embedding (and an MAE's pixel prediction) of ``state`` grown to ``own``'s bands by ``plan``."""
    proj = "patch_embed.proj.weight"
    before, after = state[proj].shape[1], own[proj].shape[1]
    state[proj] = adapt_filters(state[proj], plan, own[proj])
    report.adapted.append(f"patch embedding from {before} to {after} bands, {how}")
    report.band_plan = plan
    if "decoder_pred.weight" in state and "decoder_pred.weight" in own:
        state["decoder_pred.weight"], state["decoder_pred.bias"] = adapt_prediction(
            state["decoder_pred.weight"], state["decoder_pred.bias"], plan, own["decoder_pred.weight"],
            own["decoder_pred.bias"])
        report.adapted.append(f"decoder_pred from {before} to {after} bands")


def _adapt_pos_embed(source: torch.Tensor, target: torch.Tensor, key: str, report: LoadReport) -> torch.Tensor:
    old_grid, new_grid = _grid_side(source), _grid_side(target)
    if old_grid is None or new_grid is None:
        raise CsptError(f"{report.source}: {key} has {source.shape[1]} tokens, not a square grid")
    for rows_first in (True, False):
        fixed = sincos_pos_embed(source.shape[-1], old_grid, old_grid, rows_first=rows_first)
        if torch.allclose(source.float(), fixed, atol=1e-4):
            report.adapted.append(f"{key}: fixed sin-cos recomputed for a {new_grid}x{new_grid} grid "
                                  f"(was {old_grid}x{old_grid})")
            return sincos_pos_embed(source.shape[-1], new_grid, new_grid, rows_first=rows_first)
    report.adapted.append(f"{key}: resampled bicubically from {old_grid}x{old_grid} to {new_grid}x{new_grid}")
    return resample_abs_pos_embed(source.float(), [new_grid, new_grid], num_prefix_tokens=1)
