"""Reading checkpoints safely, loading them with a report, adapting positions and bands."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision

from cspt.errors import CsptError
from cspt.models import ArchConfig, MaskedAutoencoderViT
from cspt.models.vit import build_encoder
from cspt.weights.load import load_checkpoint, load_into_model
from tests.conftest import TINY_ARCH


def test_natural_checkpoint_loads_every_key_with_decoder(natural_mae):
    arch = ArchConfig(embed_dim=192, depth=8, num_heads=3, patch_size=8, img_size=64, decoder_dim=128,
                      decoder_depth=1, decoder_num_heads=4)
    model = MaskedAutoencoderViT(arch)
    report = load_into_model(model, load_checkpoint(natural_mae))
    assert report.format == "official MAE layout"
    assert report.loaded == report.total == len(model.state_dict())
    assert not report.missing and not report.unexpected
    assert report.decoder == "loaded from the checkpoint"
    assert "all keys matched" in str(report)


def test_encoder_only_checkpoint_initialises_and_announces_the_decoder(tmp_path):
    source = MaskedAutoencoderViT(TINY_ARCH)
    path = tmp_path / "encoder_only.pth"
    torch.save({"model": source.encoder_state_dict(), "args": argparse.Namespace(lr=1e-3)}, path)
    report = load_into_model(MaskedAutoencoderViT(TINY_ARCH), load_checkpoint(path))
    assert report.decoder == "not in the checkpoint: initialised from scratch"
    assert report.missing and all(k.startswith(("decoder_", "mask_token")) for k in report.missing)


class TrainingMetadata:
    """A class a training script might pickle into its checkpoints."""


def test_pickled_objects_other_than_namespace_need_trust(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": MaskedAutoencoderViT(TINY_ARCH).state_dict(), "meta": TrainingMetadata()}, path)
    with pytest.raises(CsptError, match="--trust-checkpoint") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert load_checkpoint(path, trust=True).format == "official MAE layout"


@pytest.mark.parametrize("kind,message", [
    ("text", "not a PyTorch checkpoint"),
    ("empty", "empty file"),
    ("truncated", "truncated or damaged"),
    ("truncated_early", "truncated or damaged"),
    ("resnet", "not a ViT checkpoint"),
    ("missing", "checkpoint not found"),
])
def test_bad_checkpoints_give_one_line_errors_naming_the_file(tmp_path, kind, message):
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.touch()
    elif kind == "truncated":
        torch.save({"model": MaskedAutoencoderViT(TINY_ARCH).state_dict()}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated_early":
        torch.save({"model": MaskedAutoencoderViT(TINY_ARCH).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "resnet":
        torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CsptError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_position_embeddings_recomputed_for_a_larger_input(natural_mae):
    arch = ArchConfig(embed_dim=192, depth=8, num_heads=3, patch_size=8, img_size=96, decoder_dim=128,
                      decoder_depth=1, decoder_num_heads=4)
    model = MaskedAutoencoderViT(arch)
    report = load_into_model(model, load_checkpoint(natural_mae))
    assert any("pos_embed: fixed sin-cos recomputed for a 12x12 grid (was 8x8)" in a for a in report.adapted)
    assert not report.missing and model.pos_embed.shape == (1, 145, 192)
    loss, _, _ = model(torch.randn(1, 3, 96, 96))
    assert torch.isfinite(loss)


def test_learned_position_embeddings_are_resampled(tmp_path):
    state = MaskedAutoencoderViT(TINY_ARCH).state_dict()
    state["pos_embed"] = torch.randn_like(state["pos_embed"])
    path = tmp_path / "learned.pth"
    torch.save(state, path)
    bigger = MaskedAutoencoderViT(ArchConfig(**{**TINY_ARCH.to_dict(), "img_size": 48}))
    report = load_into_model(bigger, load_checkpoint(path))
    assert any("resampled bicubically from 4x4 to 6x6" in a for a in report.adapted)


def test_three_band_checkpoint_into_four_band_model(tmp_path):
    source = MaskedAutoencoderViT(TINY_ARCH)
    path = tmp_path / "rgb.pth"
    torch.save({"model": source.state_dict()}, path)
    target = MaskedAutoencoderViT(ArchConfig(**{**TINY_ARCH.to_dict(), "in_chans": 4}))
    report = load_into_model(target, load_checkpoint(path))
    assert any(a.startswith("patch embedding from 3 to 4 bands, cyclic") for a in report.adapted)
    # without band metadata, RGB filters cycle over the 4 bands (R, G, B, R), scaled by 3/4 (timm's rule)
    old, new = source.patch_embed.proj.weight, target.patch_embed.proj.weight
    assert torch.allclose(new, old[:, [0, 1, 2, 0]] * 0.75, atol=1e-6)
    assert "decoder_pred from 3 to 4 bands" in report.adapted
    # the pixel prediction of band 4 starts as band 1's (patchify's order: pixels, then bands)
    pred_old = source.decoder_pred.weight.reshape(-1, 3, source.decoder_pred.weight.shape[-1])
    pred_new = target.decoder_pred.weight.reshape(-1, 4, pred_old.shape[-1])
    assert torch.equal(pred_new, pred_old[:, [0, 1, 2, 0]])


def test_checkpoint_of_another_width_is_refused(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save({"model": MaskedAutoencoderViT(ArchConfig(**{**TINY_ARCH.to_dict(), "embed_dim": 96,
                                                           "num_heads": 3})).state_dict()}, path)
    with pytest.raises(CsptError, match="does not fit the model"):
        load_into_model(MaskedAutoencoderViT(TINY_ARCH), load_checkpoint(path))


def test_official_vit_huge_layout_reads_its_heads_from_args_model(tmp_path):
    """``mae_pretrain_vit_huge.pth``: width 1280 with 16 heads (80 per head), which width/64 would call 20."""
    arch = ArchConfig(embed_dim=1280, depth=1, num_heads=16, patch_size=14, img_size=28, decoder_dim=512,
                      decoder_depth=1, decoder_num_heads=16)
    source = MaskedAutoencoderViT(arch).half()  # a one-block stand-in of the official file, in its layout
    path = tmp_path / "mae_pretrain_vit_huge.pth"
    torch.save({"model": source.encoder_state_dict(),
                "args": argparse.Namespace(model="mae_vit_huge_patch14", input_size=224, norm_pix_loss=True)}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.arch["num_heads"] == 16 and checkpoint.arch["embed_dim"] == 1280
    model = build_encoder(ArchConfig.from_dict({**checkpoint.arch, "decoder_num_heads": 16}))
    assert model.blocks[0].attn.num_heads == 16
    report = load_into_model(model, checkpoint)
    assert "16 attention heads, from the checkpoint's model 'mae_vit_huge_patch14'" in str(report)
    assert not report.missing and not report.unexpected


def test_heads_a_checkpoint_cannot_tell_are_reported_as_a_guess(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(MaskedAutoencoderViT(TINY_ARCH).encoder_state_dict(), path)
    report = load_into_model(MaskedAutoencoderViT(TINY_ARCH), load_checkpoint(path))
    assert "1 attention heads guessed as width/64" in str(report) and "--num-heads" in str(report)
