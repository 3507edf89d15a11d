"""Sources by name (``hf:ORG/NAME``, ``timm:NAME``) from a local Hugging Face cache the test builds; offline."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import timm
import transformers
from safetensors.torch import save_file

from cspt.errors import CsptError
from cspt.models import ArchConfig, MaskedAutoencoderViT
from cspt.models.vit import build_encoder
from cspt.weights.load import load_checkpoint, load_into_model
from tests.conftest import run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_snapshot(cache: Path, repo: str) -> Path:
    """The folder a hub download of ``repo`` lands in (``refs/main`` pointing at one snapshot)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub with a tiny HF ViT-MAE (``hf:test/vit-mae-tiny``) and a tiny timm ViT
    (``timm:vit_small_patch8_32.test``: width 384 with 6 heads, where width/64 also gives 6)."""
    cache = tmp_path / "hub"
    config = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
        patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=128, norm_pix_loss=True, layer_norm_eps=1e-6)
    transformers.ViTMAEForPreTraining(config).save_pretrained(cached_snapshot(cache, "test/vit-mae-tiny"))
    vit = timm.create_model("vit_small_patch16_224", patch_size=8, img_size=32, depth=1, num_classes=0)
    snapshot = cached_snapshot(cache, "timm/vit_small_patch8_32.test")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "num_classes": 0}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hf_name_loads_from_the_cache_with_the_report_of_its_file(hub_cache: Path):
    by_name = load_checkpoint("hf:test/vit-mae-tiny")
    file = hub_cache / "models--test--vit-mae-tiny" / "snapshots" / COMMIT / "model.safetensors"
    by_file = load_checkpoint(file)
    assert by_name.path == by_file.path and by_name.format == "Hugging Face ViT-MAE"
    assert by_name.arch["num_heads"] == 4 and by_name.arch["decoder_num_heads"] == 4  # from config.json
    arch = ArchConfig.from_dict(by_name.arch)
    assert str(load_into_model(MaskedAutoencoderViT(arch), by_name)) == \
        str(load_into_model(MaskedAutoencoderViT(arch), by_file))
    assert "all keys matched" in str(load_into_model(MaskedAutoencoderViT(arch), by_name))


def test_timm_name_loads_the_encoder_with_heads_from_its_architecture(hub_cache: Path):
    checkpoint = load_checkpoint("timm:vit_small_patch8_32.test")
    assert checkpoint.arch["num_heads"] == 6 and checkpoint.arch["embed_dim"] == 384
    report = load_into_model(build_encoder(ArchConfig.from_dict({**checkpoint.arch, "decoder_num_heads": 16})),
                             checkpoint)
    assert not report.missing and not report.unexpected
    assert "from the checkpoint's architecture 'vit_small_patch16_224'" in str(report)


@pytest.mark.slow
def test_pretraining_starts_from_a_hub_name(hub_cache: Path, rsscn7_list, tmp_path: Path):
    result = run_cli("pretrain", "--init", "hf:test/vit-mae-tiny", "--data", str(rsscn7_list(8)), "--epochs", "1",
                     "--batch-size", "8", "--output", str(tmp_path / "run"), "--num-workers", "0", "--device", "cpu",
                     "--vis-every", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(Hugging Face ViT-MAE): all keys matched" in result.stderr
    lineage = json.loads((tmp_path / "run" / "encoder.json").read_text())["lineage"]
    assert lineage[0]["path"].endswith("model.safetensors") and len(lineage[0]["sha256"]) == 64


@pytest.mark.slow
def test_without_network_a_missing_model_names_the_cache_folder(tmp_path: Path):
    empty = tmp_path / "empty"
    result = run_cli("info", "hf:facebook/vit-mae-base", env={"HF_HUB_CACHE": str(empty), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"fill {empty / 'models--facebook--vit-mae-base'}" in result.stderr
    with pytest.raises(CsptError, match="no repository after 'timm:'"):
        load_checkpoint("timm:")
