"""Export weights for timm, Hugging Face or the official MAE code, with lineage; describe checkpoints.

Lineage is a list of stages, oldest first: where the weights came from (file and
sha256), and for each cspt stage its data folders, image count, epochs and config. It
travels in a JSON sidecar beside every export and in safetensors metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from cspt.atomic import atomic_torch_save, atomic_write
from cspt.data.pixels import PixelContract
from cspt.errors import CsptError
from cspt.models.distill import DISTILL_PREFIX
from cspt.models.mae import DECODER_PREFIXES
from cspt.models.vit import ArchConfig, resolve_arch
from cspt.weights.descriptions import ModelDescription
from cspt.weights.formats import mae_to_hugging_face
from cspt.weights.load import Checkpoint, checkpoint_file, description_of, load_checkpoint, sidecar_of

EXPORT_TARGETS = ("timm", "hf", "mae")


def sha256_of(path: str | Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lineage_of(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """The recorded lineage of a weights file, or one "source" stage naming it (and its sha256)."""
    path = checkpoint_file(Path(path))
    lineage = description_of(path).get("lineage")
    if lineage:
        return lineage
    stage = {"stage": "source", "path": str(path), "format": fmt}
    stage["sha256"] = sha256_of(path) if path.is_file() else None
    return [stage]


def portable(value: Any) -> Any:
    """``value`` with every absolute path in it (at any depth) made machine-independent: relative to the working
    directory when inside it, ``~/...`` when inside the home directory, else as it is."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    if not (isinstance(value, str) and value.startswith("/")):
        return value
    path = Path(value)
    for base, shown in ((Path.cwd(), None), (Path.home(), Path("~"))):
        if path.is_relative_to(base) and base != Path("/"):
            relative = path.relative_to(base)
            return str(shown / relative if shown else relative)
    return value


def write_weights(state: dict[str, torch.Tensor], target: Path, info: dict[str, Any] | ModelDescription) -> Path:
    """Weights (plain timm ViT keys, no MAE decoder) as safetensors with their description (``info``) in metadata
    and a sidecar; the lineage keeps no machine's absolute paths (:func:`portable`)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()
               if not k.startswith((*DECODER_PREFIXES, DISTILL_PREFIX))}
    info = info.to_dict() if isinstance(info, ModelDescription) else info
    info = {**info, "lineage": portable(info.get("lineage", []))}
    atomic_write(target, lambda tmp: save_file(weights, str(tmp), metadata={"cspt": json.dumps(info)}))
    write_sidecar(target, info)
    return target


def write_sidecar(weights: Path, info: dict[str, Any] | ModelDescription) -> None:
    """The JSON description beside a weights file, where :func:`description_of` finds it."""
    info = info.to_dict() if isinstance(info, ModelDescription) else info
    atomic_write(sidecar_of(weights), lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))


def export_checkpoint(source: str | Path, to: str, output: str | Path, trust: bool = False) -> Path:
    """Export any loadable checkpoint (or run folder) ``to`` timm, hf or mae at ``output``."""
    if to not in EXPORT_TARGETS:
        raise CsptError(f"{source}: unknown export format '{to}'; choose one of {', '.join(EXPORT_TARGETS)} (an "
                        "encoder) or onnx, exported-program (a fine-tuned model)")
    checkpoint = load_checkpoint(source, trust)
    arch = resolve_arch({}, None, checkpoint.arch)
    described = description_of(checkpoint.path)
    info = {"architecture": arch.to_dict(), "format": to, "lineage": lineage_of(checkpoint.path, checkpoint.format)}
    if arch.band_groups:
        info["group_masking"] = checkpoint.group_masking
    if isinstance(described.get("pixels"), dict) or isinstance(described.get("mean"), list):
        info["pixels"] = PixelContract.from_description(described, arch.in_chans, checkpoint.path).to_dict()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if to == "timm":
        return write_weights(checkpoint.state_dict, output, info)
    if to == "mae":
        atomic_torch_save({"model": checkpoint.state_dict}, output)
        write_sidecar(output, info)
        return output
    return export_hugging_face(checkpoint, arch, output, info)


def export_hugging_face(checkpoint: Checkpoint, arch: ArchConfig, folder: Path, info: dict[str, Any]) -> Path:
    """A ``save_pretrained`` folder that ``ViTMAEForPreTraining.from_pretrained`` loads."""
    try:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining
    except ImportError:
        raise CsptError("export --to hf needs transformers: pip install 'cspt[hf]'") from None
    if not checkpoint.has_decoder:
        raise CsptError(f"{checkpoint.path}: has no MAE decoder, which ViTMAEForPreTraining needs; "
                        "use --to timm for the encoder")
    if arch.band_groups:
        raise CsptError(f"{checkpoint.path}: has spectral band groups, which ViTMAEForPreTraining cannot hold; "
                        "use --to timm (cspt reads the groups from its description)")
    config = ViTMAEConfig(
        hidden_size=arch.embed_dim, num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
        intermediate_size=int(arch.embed_dim * arch.mlp_ratio), image_size=arch.img_size,
        patch_size=arch.patch_size, num_channels=arch.in_chans, qkv_bias=True, layer_norm_eps=1e-6,
        decoder_hidden_size=arch.decoder_dim, decoder_num_hidden_layers=arch.decoder_depth,
        decoder_num_attention_heads=arch.decoder_num_heads,
        decoder_intermediate_size=int(arch.decoder_dim * arch.mlp_ratio), mask_ratio=0.75, norm_pix_loss=True,
    )
    model = ViTMAEForPreTraining(config)
    transformers5 = "vit.layers.0.attention.q_proj.weight" in model.state_dict()
    model.load_state_dict(mae_to_hugging_face(checkpoint.state_dict, transformers5), strict=True)
    model.save_pretrained(folder)
    write_sidecar(folder / "model.safetensors", info)
    return folder


def checkpoint_info(source: str | Path, trust: bool = False) -> dict[str, Any]:
    """Format, architecture, decoder and lineage of a checkpoint, for ``cspt info``."""
    checkpoint = load_checkpoint(source, trust)
    arch = checkpoint.arch
    described = checkpoint.described
    recorded = isinstance(described.get("pixels"), dict) or isinstance(described.get("mean"), list)
    return {
        "file": str(checkpoint.path),
        "format": checkpoint.format,
        "tensors": len(checkpoint.state_dict),
        "parameters": sum(v.numel() for v in checkpoint.state_dict.values()),
        "architecture": arch,
        "decoder": checkpoint.has_decoder,
        "pixels": PixelContract.from_description(described, None, checkpoint.path).to_dict() if recorded else None,
        "terms": described.get("terms"),
        "lineage": lineage_of(checkpoint.path, checkpoint.format),
    }
