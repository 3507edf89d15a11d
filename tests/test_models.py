"""The MAE model: official parameter names, masking, loss, reconstruction, sin-cos positions."""

from __future__ import annotations

import pytest
import torch

from cspt.errors import CsptError
from cspt.models import ArchConfig, MaskedAutoencoderViT
from cspt.models.vit import VIT_PRESETS, build_encoder, resolve_arch, sincos_pos_embed
from cspt.weights.load import load_checkpoint
from tests.conftest import TINY_ARCH

OFFICIAL_TOP_LEVEL = {"cls_token", "pos_embed", "patch_embed", "blocks", "norm", "mask_token", "decoder_embed",
                      "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred"}


def test_parameter_names_follow_the_official_mae_layout():
    model = MaskedAutoencoderViT(TINY_ARCH)
    assert {k.split(".")[0] for k in model.state_dict()} == OFFICIAL_TOP_LEVEL
    assert "patch_embed.proj.weight" in model.state_dict()
    assert "decoder_blocks.0.attn.qkv.weight" in model.state_dict()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


@pytest.mark.parametrize("bands,patch,size", [(1, 4, 16), (4, 8, 32), (13, 16, 48)])
def test_any_band_count_patch_and_size(bands, patch, size):
    arch = ArchConfig(embed_dim=32, depth=1, num_heads=2, patch_size=patch, img_size=size, in_chans=bands,
                      decoder_dim=16, decoder_depth=1, decoder_num_heads=1)
    model = MaskedAutoencoderViT(arch)
    images = torch.randn(2, bands, size, size)
    loss, pred, mask = model(images)
    assert pred.shape == (2, (size // patch) ** 2, patch * patch * bands)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(model.unpatchify(model.patchify(images)), images)
    length = (size // patch) ** 2
    assert mask.sum(1).eq(length - int(length * 0.25)).all()


def test_masking_follows_noise_and_keeps_the_ratio():
    model = MaskedAutoencoderViT(TINY_ARCH, mask_ratio=0.75)
    noise = torch.rand(3, 16)
    _, _, mask = model(torch.randn(3, 3, 32, 32), noise=noise)
    assert mask.sum(1).tolist() == [12, 12, 12]
    # the 4 lowest-noise patches stay visible
    visible = noise.argsort(1)[:, :4]
    assert mask.gather(1, visible).sum() == 0


def test_the_loader_s_masking_order_gives_the_model_s_own_masks_and_loss_even_with_tied_noise():
    from cspt.models.mae import masking_order

    model = MaskedAutoencoderViT(TINY_ARCH, mask_ratio=0.75)
    images = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, 16)
    noise[1] = 0.5  # every patch tied: the stable sort keeps patch order, on every device
    noise[2, ::2] = noise[2, 1::2]  # pairs tied
    from_noise = model(images, noise=noise)
    from_order = model(images, ids_shuffle=masking_order(noise))
    assert torch.equal(from_noise[0], from_order[0]) and torch.equal(from_noise[2], from_order[2])
    assert from_noise[2][1].tolist() == [0.0] * 4 + [1.0] * 12  # ties: the first four patches stay visible


def test_loss_is_mse_on_masked_normalised_patches():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(TINY_ARCH, norm_pix_loss=True)
    images = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(images, noise=torch.rand(2, 16))
    target = model.patchify(images)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_pixels_without_data_never_reach_the_mae_loss():
    """A patch mostly with data is scored on its valid pixels only: whatever fills the others (the contract's 0,
    or anything else) changes neither the error nor the patch's norm_pix statistics; mostly-invalid patches are
    not scored."""
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(TINY_ARCH, norm_pix_loss=True).eval()
    images = torch.randn(2, 3, 32, 32)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, :5] = False  # the first patch column is 5/8 invalid: not scored
    valid[:, :3, 8:] = False  # the first patch row (right of it) is 3/8 invalid: scored on its valid pixels
    _, pred, mask = model(images, noise=torch.rand(2, 16))
    losses = []
    for fill in (0.0, 100.0, -7.0):  # the target's pixels without data, for one prediction
        filled = images.clone()
        filled[:, :, ~valid[0]] = fill
        losses.append(model.forward_loss(filled, pred, mask, valid))
    assert torch.allclose(losses[0], losses[1], atol=1e-5) and torch.allclose(losses[0], losses[2], atol=1e-5)
    assert not torch.allclose(losses[0], model.forward_loss(images, pred, mask))  # they are really left out


def test_reconstruct_undoes_norm_pix_with_each_patch_statistics():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(TINY_ARCH, norm_pix_loss=True).eval()
    images = torch.randn(2, 3, 32, 32) * 3 + 1
    noise = torch.rand(2, 16)
    rec = model.reconstruct(images, noise=noise)
    _, pred, mask = model(images, noise=noise)
    patches = model.patchify(images)
    expected = pred * (patches.var(-1, keepdim=True) + 1e-6).sqrt() + patches.mean(-1, keepdim=True)
    assert torch.allclose(model.patchify(rec.reconstruction), expected, atol=1e-5)
    visible = (1 - mask).bool()
    assert torch.equal(model.patchify(rec.pasted)[visible], patches[visible])
    assert torch.equal(model.patchify(rec.masked)[~visible], torch.zeros_like(patches[~visible]))


def test_sincos_matches_the_natural_checkpoint(natural_mae):
    state = load_checkpoint(natural_mae).state_dict
    assert torch.allclose(sincos_pos_embed(192, 8, 8), state["pos_embed"], atol=1e-6)
    assert torch.allclose(sincos_pos_embed(128, 8, 8), state["decoder_pos_embed"], atol=1e-6)


def test_sincos_non_square_grid_encodes_rows_then_columns():
    embed = sincos_pos_embed(8, 2, 3, cls_token=False)[0]
    # first half depends on the row only, second half on the column only (row-major patches)
    assert torch.equal(embed[0, :4], embed[1, :4]) and not torch.equal(embed[0, :4], embed[3, :4])
    assert torch.equal(embed[0, 4:], embed[3, 4:]) and not torch.equal(embed[0, 4:], embed[1, 4:])
    swapped = sincos_pos_embed(8, 2, 3, cls_token=False, rows_first=False)[0]
    assert torch.equal(swapped[:, :4], embed[:, 4:]) and torch.equal(swapped[:, 4:], embed[:, :4])


def test_natural_checkpoint_architecture_is_read_from_shapes(natural_mae):
    arch = resolve_arch({}, None, load_checkpoint(natural_mae).arch)
    assert arch == ArchConfig(embed_dim=192, depth=8, num_heads=3, patch_size=8, img_size=64, in_chans=3,
                              decoder_dim=128, decoder_depth=1, decoder_num_heads=4)


def test_resolve_arch_precedence():
    inferred = {"embed_dim": 192, "depth": 8, "patch_size": 8, "img_size": 64}
    arch = resolve_arch({"img_size": 96}, None, inferred)
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.img_size) == (192, 8, 3, 96)
    base = resolve_arch({}, "vit_base", inferred)
    assert (base.embed_dim, base.depth, base.num_heads) == (768, 12, 12)
    assert resolve_arch({}).decoder_dim == 512 and resolve_arch({}).decoder_depth == 8
    assert set(VIT_PRESETS) == {"vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge"}
    with pytest.raises(CsptError, match="unknown model"):
        resolve_arch({}, "vit_gigantic")
    with pytest.raises(CsptError, match="not divisible by patch size"):
        ArchConfig(img_size=100, patch_size=16)


def test_encoder_weights_load_into_a_plain_timm_vit():
    model = MaskedAutoencoderViT(TINY_ARCH)
    encoder = build_encoder(TINY_ARCH)
    assert not encoder.load_state_dict(model.encoder_state_dict(), strict=True).missing_keys
    images = torch.randn(2, 3, 32, 32)
    tokens, _, _ = model.forward_encoder(images, mask_ratio=0.0, noise=torch.arange(16.0).expand(2, 16))
    assert torch.allclose(encoder.forward_features(images), tokens, atol=1e-5)


def test_optimised_paths_keep_the_loss_of_the_plain_path():
    """Visible-only patch embedding, SDPA attention and fused AdamW against the reference path, 3 steps in fp32."""
    from cspt.engine.optim import adamw, param_groups_weight_decay

    torch.manual_seed(0)
    fast = MaskedAutoencoderViT(TINY_ARCH)
    plain = MaskedAutoencoderViT(TINY_ARCH)
    plain.load_state_dict(fast.state_dict())
    plain.embed_visible_only = False
    for module in plain.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    images, noise = torch.randn(8, 3, 32, 32), torch.rand(8, 16)
    optimizers = [adamw(param_groups_weight_decay(m, 0.05), (0.9, 0.95), fused=f) for m, f in
                  ((fast, True), (plain, False))]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = 1e-3
    history = []
    for step in range(3):
        losses = []
        for model in (fast, plain):
            loss, _, _ = model(images, noise=noise)
            loss.backward()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-5, (step, losses)
        if step == 0:  # gradients too (after a step Adam's m/sqrt(v) blows up rounding noise on zero gradients)
            for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
                if a.grad is not None:
                    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        history.append(losses[0])
    assert history[-1] < history[0] - 0.01  # the optimizer steps did move the model


def test_visible_only_embedding_refuses_other_image_sizes():
    with pytest.raises(CsptError, match=r"input images are \(40, 40\), the model expects 32 x 32"):
        MaskedAutoencoderViT(TINY_ARCH)(torch.randn(1, 3, 40, 40))
