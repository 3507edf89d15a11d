"""Round trips between cspt and the official MAE, Hugging Face, OpenMMLab and timm layouts."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import timm
import torch

from cspt.models import ArchConfig, MaskedAutoencoderViT
from cspt.models.vit import resolve_arch
from cspt.weights.export import export_checkpoint
from cspt.weights.load import load_checkpoint, load_into_model
from tests.conftest import run_cli

transformers = pytest.importorskip("transformers")

#: heads at the defaults a bare state dict implies (width/64, decoder width/32)
ARCH = ArchConfig(embed_dim=128, depth=2, num_heads=2, patch_size=8, img_size=32, decoder_dim=64, decoder_depth=1,
                  decoder_num_heads=2)


def loaded(path) -> MaskedAutoencoderViT:
    """A cspt MAE built from the shapes in ``path`` and loaded from it, every key matched."""
    checkpoint = load_checkpoint(path)
    model = MaskedAutoencoderViT(resolve_arch({}, None, checkpoint.arch)).eval()
    report = load_into_model(model, checkpoint)
    assert not report.missing and not report.unexpected, report
    return model


def same_loss(model: MaskedAutoencoderViT, reference_loss: torch.Tensor, images, noise) -> None:
    with torch.no_grad():
        loss, _, _ = model(images, noise=noise)
    assert abs(loss.item() - reference_loss.item()) < 1e-5


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=generator), torch.rand(2, 16, generator=generator)


def test_official_layout_round_trip(tmp_path, batch):
    source = MaskedAutoencoderViT(ARCH).eval()
    path = tmp_path / "mae_full.pth"
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(norm_pix_loss=True), "epoch": 3}, path)
    with torch.no_grad():
        want, _, _ = source(*batch[:1], noise=batch[1])
    model = loaded(path)
    same_loss(model, want, *batch)
    out = export_checkpoint(path, "mae", tmp_path / "again.pth")
    same_loss(loaded(out), want, *batch)


def test_hugging_face_round_trip(tmp_path, batch):
    config = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
        patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=128, norm_pix_loss=True, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    hf = transformers.ViTMAEForPreTraining(config).eval()
    images, noise = batch
    with torch.no_grad():
        want = hf(pixel_values=images, noise=noise).loss
    hf.save_pretrained(tmp_path / "hf")
    model = loaded(tmp_path / "hf")
    assert load_checkpoint(tmp_path / "hf").format == "Hugging Face ViT-MAE"
    same_loss(model, want, images, noise)
    # and back out: the exported folder loads with from_pretrained and computes the same loss
    torch.save({"model": model.state_dict()}, tmp_path / "cspt.pth")
    out = export_checkpoint(tmp_path / "cspt.pth", "hf", tmp_path / "hf_again")
    again = transformers.ViTMAEForPreTraining.from_pretrained(out).eval()
    with torch.no_grad():
        assert abs(again(pixel_values=images, noise=noise).loss.item() - want.item()) < 1e-5
    assert json.loads((out / "lineage.json").read_text())["lineage"][0]["path"].endswith("cspt.pth")


def to_openmmlab(name: str) -> str:
    """MAE names as mmpretrain writes them (``backbone.`` encoder, ``neck.`` decoder)."""
    for old, new in ((".norm1.", ".ln1."), (".norm2.", ".ln2."), (".mlp.fc1.", ".ffn.layers.0.0."),
                     (".mlp.fc2.", ".ffn.layers.1.")):
        name = name.replace(old, new)
    if name.startswith(("decoder_", "mask_token")):
        return "neck." + name.replace("decoder_norm.", "ln1.")
    name = re.sub(r"^blocks\.", "layers.", name)
    name = re.sub(r"^norm\.", "ln1.", name).replace("patch_embed.proj.", "patch_embed.projection.")
    return "backbone." + name


def test_openmmlab_layout_into_cspt(tmp_path, batch):
    source = MaskedAutoencoderViT(ARCH).eval()
    with torch.no_grad():
        want, _, _ = source(batch[0], noise=batch[1])
    path = tmp_path / "mmpretrain_mae.pth"
    state = {to_openmmlab(k): v for k, v in source.state_dict().items()}
    assert "backbone.layers.0.ffn.layers.0.0.weight" in state and "neck.ln1.weight" in state
    torch.save({"meta": {"epoch": 400, "mmengine_version": "0.10"}, "state_dict": state}, path)
    assert load_checkpoint(path).format == "OpenMMLab (backbone/neck)"
    same_loss(loaded(path), want, *batch)


@pytest.mark.slow
def test_timm_export_gives_the_same_features(tmp_path):
    source = MaskedAutoencoderViT(ARCH).eval()
    torch.save({"model": source.state_dict()}, tmp_path / "run.pth")
    out = export_checkpoint(tmp_path / "run.pth", "timm", tmp_path / "encoder.safetensors")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(out)},
                            patch_size=8, img_size=32, embed_dim=128, depth=2, num_heads=2, num_classes=0).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, _, _ = source.forward_encoder(images, 0.0, noise=torch.arange(16.0).expand(2, 16))
        assert torch.allclose(vit.forward_features(images), ours, atol=1e-5)
    sidecar = json.loads((tmp_path / "encoder.json").read_text())
    assert sidecar["architecture"]["embed_dim"] == 128 and sidecar["lineage"][0]["sha256"]
    info = run_cli("info", str(out))
    assert info.returncode == 0 and "decoder: no" in info.stdout and "run.pth" in info.stdout


@pytest.mark.slow
def test_export_errors_are_one_line(tmp_path):
    encoder_only = tmp_path / "enc.pth"
    torch.save(MaskedAutoencoderViT(ARCH).encoder_state_dict(), encoder_only)
    result = run_cli("export", str(encoder_only), "--to", "hf", "--output", str(tmp_path / "hf"))
    assert result.returncode == 2 and "has no MAE decoder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_lineage_keeps_no_machine_s_absolute_paths(tmp_path, monkeypatch):
    from pathlib import Path

    from cspt.weights.export import portable

    monkeypatch.chdir(tmp_path)
    home = Path.home()
    lineage = [{"stage": "source", "path": str(home / ".cache" / "cspt" / "neon" / "x.png"),
                "config": {"data": [str(tmp_path / "data"), "relative/one"], "output": str(tmp_path / "runs" / "a"),
                           "epochs": 3, "init": "/data/elsewhere.pth"}}]
    assert portable(lineage) == [{"stage": "source", "path": "~/.cache/cspt/neon/x.png",
                                  "config": {"data": ["data", "relative/one"], "output": "runs/a", "epochs": 3,
                                             "init": "/data/elsewhere.pth"}}]


def test_model_descriptions_are_typed_versioned_and_read_older_releases_files():
    from cspt.errors import CsptError
    from cspt.weights.descriptions import ClassifierDescription, description_from_dict

    older = {"task": "classify", "architecture": {"in_chans": 3, "img_size": 32}, "classes": ["a", "b"],
             "global_pool": "avg", "mean": [0.4] * 3, "std": [0.2] * 3, "bands": [3, 2, 1], "scale_low": [0.01] * 3,
             "scale_high": [0.05] * 3, "eval_crop_ratio": 0.875, "selected": "last epoch", "lineage": []}
    described = description_from_dict(older, "old/classifier.json")
    assert isinstance(described, ClassifierDescription) and described.contract.bands == (3, 2, 1)
    assert described.contract.low == (0.01,) * 3 and described.classes == ["a", "b"]
    again = description_from_dict(described.to_dict())
    assert again == described and again.to_dict()["version"] == 1
    with pytest.raises(CsptError, match="newer than this cspt reads"):
        description_from_dict({**described.to_dict(), "version": 7}, "new.json")
    with pytest.raises(CsptError, match="incomplete classify description"):
        description_from_dict({"task": "classify", "architecture": {}, "pixels": described.pixels}, "x.json")
