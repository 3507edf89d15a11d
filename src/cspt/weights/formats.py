"""Key conversions between the MAE/timm names cspt uses and other ViT-MAE layouts.

- Hugging Face ``ViTMAEForPreTraining``: ``vit.embeddings.*``, separate q/k/v projections
  (transformers 5 names ``vit.layers.N.attention.q_proj``; transformers 4 and hub files
  ``vit.encoder.layer.N.attention.attention.query``), ``decoder.*``.
- OpenMMLab (mmpretrain MAE, mmseg/mmdet ViT backbones): ``backbone.layers.N.ln1``,
  ``ffn.layers.0.0``, ``patch_embed.projection``, decoder under ``neck.``.
"""

from __future__ import annotations

import re

import torch

HF_TOP = {
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "vit.layernorm.weight": "norm.weight",
    "vit.layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    **{f"decoder.{m}.{p}": f"{m}.{p}" for m in ("decoder_embed", "decoder_norm", "decoder_pred")
       for p in ("weight", "bias")},
}
#: per-layer module names: transformers 5, transformers 4 -> timm
HF_LAYER_MODULES = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj", "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1", "intermediate.dense": "mlp.fc1",
    "mlp.fc2": "mlp.fc2", "output.dense": "mlp.fc2",
}
HF_QKV = {"attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,
          "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2}
#: layer stacks: transformers 5 in memory; hub files; what transformers 5 ``save_pretrained`` writes
HF_LAYER = re.compile(r"^(vit\.layers|vit\.encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)"
                      r"\.(\d+)\.(.+)\.(weight|bias)$")


def is_hugging_face(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict has Hugging Face ViT-MAE names (``vit.embeddings.*``)."""
    return any(k.startswith("vit.embeddings.") for k in state)


def hugging_face_to_mae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ViT-MAE names to MAE/timm names, fusing q/k/v; unknown keys are kept as they are."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list] = {}
    for key, value in state.items():
        if key in HF_TOP:
            out[HF_TOP[key]] = value
            continue
        match = HF_LAYER.match(key)
        if not match:
            out[key] = value
            continue
        stack, index, module, kind = match.groups()
        prefix = f"{'decoder_blocks' if stack.startswith('decoder') else 'blocks'}.{index}"
        if module in HF_QKV:
            qkv.setdefault(f"{prefix}.attn.qkv.{kind}", [None] * 3)[HF_QKV[module]] = value
        elif module in HF_LAYER_MODULES:
            out[f"{prefix}.{HF_LAYER_MODULES[module]}.{kind}"] = value
        else:
            out[key] = value
    for key, parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"incomplete q/k/v projections for {key}")
        out[key] = torch.cat(parts, dim=0)
    return out


def mae_to_hugging_face(state: dict[str, torch.Tensor], transformers5: bool = True) -> dict[str, torch.Tensor]:
    """MAE/timm names to HF ``ViTMAEForPreTraining`` names (transformers 5 or 4 layout)."""
    top = {v: k for k, v in HF_TOP.items()}
    names = ({"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
              "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"} if transformers5 else
             {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"})
    qkv = (["attention.q_proj", "attention.k_proj", "attention.v_proj"] if transformers5 else
           ["attention.attention.query", "attention.attention.key", "attention.attention.value"])
    layer = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        match = layer.match(key)
        if not match:
            raise ValueError(f"no Hugging Face name for {key}")
        stack, index, module, kind = match.groups()
        prefix = (f"decoder.decoder_layers.{index}" if stack == "decoder_blocks" else
                  f"vit.layers.{index}" if transformers5 else f"vit.encoder.layer.{index}")
        if module == "attn.qkv":
            for name, part in zip(qkv, value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = part.clone()
        else:
            out[f"{prefix}.{names[module]}.{kind}"] = value
    return out


OPENMMLAB_LAYER_RENAMES = [(".ln1.", ".norm1."), (".ln2.", ".norm2."), (".ffn.layers.0.0.", ".mlp.fc1."),
                           (".ffn.layers.1.", ".mlp.fc2.")]


def is_openmmlab(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict has OpenMMLab names (``backbone.*``)."""
    return any(k.startswith("backbone.") for k in state)


def openmmlab_to_mae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``backbone.*`` (encoder) and ``neck.*`` (MAE decoder) to MAE/timm names; other keys kept."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            name = key.removeprefix("backbone.")
            name = re.sub(r"^layers\.(\d+)\.", r"blocks.\1.", name)
            name = re.sub(r"^ln1\.", "norm.", name)
            name = name.replace("patch_embed.projection.", "patch_embed.proj.")
        elif key.startswith("neck."):
            name = key.removeprefix("neck.")
            name = re.sub(r"^ln1\.", "decoder_norm.", name)
        else:
            out[key] = value
            continue
        if name.startswith(("blocks.", "decoder_blocks.")):
            for old, new in OPENMMLAB_LAYER_RENAMES:
                name = name.replace(old, new)
        out[name] = value
    return out
