"""Spectral band groups (SatMAE): group tokens, their masking, their loss, and grouped encoders downstream."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from cspt.config import ClassifyConfig, PretrainConfig, build_config
from cspt.data.bands import SENSORS, Band, group_bands, group_labels
from cspt.data.pixels import PixelContract
from cspt.errors import CsptError
from cspt.models.band_groups import GroupedVisionTransformer
from cspt.models.classifier import pooled_features
from cspt.models.mae import MaskedAutoencoderViT
from cspt.models.pyramid import ViTFeaturePyramid
from cspt.models.vit import ArchConfig, build_encoder
from cspt.plots import group_order, reconstruction_grid
from cspt.tasks.classify import finetune_classify
from cspt.tasks.classify import resolve_config as resolve_classify
from cspt.tasks.common import arch_of, load_init_weights, same_bands, shape_source
from cspt.tasks.pretrain import PretrainTask, pretrain, resolve_config
from cspt.weights.load import load_checkpoint
from tests.conftest import TINY_ARCH, run_cli, write_geotiff

FOUR = dataclasses.replace(TINY_ARCH, in_chans=4)
GROUPED = dataclasses.replace(FOUR, band_groups=((0, 1, 2), (3,)))
PACKAGED_MAE = "cspt:mae-tiny-tinyimagenet"


def twin(arch: ArchConfig, groups, masking: str = "independent") -> tuple[MaskedAutoencoderViT, MaskedAutoencoderViT]:
    """An ungrouped MAE and a grouped one with the same weights (group encodings zero)."""
    torch.manual_seed(0)
    plain = MaskedAutoencoderViT(arch)
    grouped = MaskedAutoencoderViT(dataclasses.replace(arch, band_groups=groups), group_masking=masking)
    missing = grouped.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["decoder_group_embed", "group_embed"]
    for embed in (grouped.group_embed, grouped.decoder_group_embed):
        embed.data.zero_()
    return plain.eval(), grouped.eval()


def test_one_group_of_every_band_is_the_ungrouped_model():
    plain, grouped = twin(FOUR, [[0, 1, 2, 3]])
    images, noise = torch.randn(3, 4, 32, 32), torch.rand(3, 16)
    valid = torch.rand(3, 4, 32, 32) > 0.2  # per-band validity too
    for kwargs in ({}, {"valid": valid}):
        loss, pred, mask = plain(images, noise=noise, **kwargs)
        loss_g, pred_g, mask_g = grouped(images, noise=noise, **kwargs)
        assert torch.allclose(loss, loss_g, atol=1e-6) and torch.allclose(pred, pred_g, atol=1e-5)
        assert torch.equal(mask, mask_g)
    encoder = build_encoder(FOUR)
    encoder.load_state_dict(plain.encoder_state_dict())
    one = build_encoder(dataclasses.replace(FOUR, band_groups=((0, 1, 2, 3),)))
    one.load_state_dict({**plain.encoder_state_dict(), "group_embed": torch.zeros(1, 1, 64)})
    assert isinstance(one, GroupedVisionTransformer) and type(encoder) is VisionTransformer
    assert torch.allclose(encoder.forward_features(images), one.forward_features(images), atol=1e-5)
    maps = encoder.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
    maps_g = one.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, maps_g))


def test_each_group_is_embedded_from_its_own_bands_only():
    _, grouped = twin(FOUR, [[0, 1, 2], [3]])
    images = torch.randn(2, 4, 32, 32)
    weight, bias = grouped.patch_embed.proj.weight, grouped.patch_embed.proj.bias
    tokens = grouped.patch_embed(images)  # (B, 2 x 16, D), group by group
    rgb = F.conv2d(images[:, :3], weight[:, :3], bias, stride=8).flatten(2).transpose(1, 2)
    nir = F.conv2d(images[:, 3:], weight[:, 3:], bias, stride=8).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, torch.cat([rgb, nir], 1), atol=1e-5)
    changed = images.clone()
    changed[:, 3] += 5  # near-infrared changes: the RGB group's tokens do not
    assert torch.allclose(grouped.patch_embed(changed)[:, :16], tokens[:, :16])
    # the MAE's visible-only embedding gives the same tokens as embedding everything and then dropping
    noise = torch.rand(2, grouped.mask_noise_length)
    full = MaskedAutoencoderViT(grouped.arch).eval()
    full.load_state_dict(grouped.state_dict())
    full.embed_visible_only = False
    assert torch.allclose(grouped(images, noise=noise)[0], full(images, noise=noise)[0], atol=1e-5)


@pytest.mark.parametrize("masking", ["independent", "shared"])
def test_groups_are_masked_alike_or_each_on_its_own_and_keep_the_same_number(masking):
    _, grouped = twin(FOUR, [[0, 1], [2], [3]], masking)
    assert grouped.mask_noise_length == (48 if masking == "independent" else 16)
    for seed in range(20):  # every draw: each group keeps exactly a quarter of its 16 patches
        noise = torch.rand(4, grouped.mask_noise_length, generator=torch.Generator().manual_seed(seed))
        _, _, mask = grouped(torch.randn(4, 4, 32, 32), noise=noise)
        per_group = mask.reshape(4, 3, 16)
        assert torch.all(per_group.sum(-1) == 12)
        same = all(torch.equal(per_group[:, 0], per_group[:, g]) for g in (1, 2))
        assert same if masking == "shared" else not same


def naive_group_loss(images, pred, mask, groups, patch):
    """The grouped norm-pix loss written out token by token."""
    total, count = 0.0, 0
    side = images.shape[-1] // patch
    for b in range(images.shape[0]):
        for g, group in enumerate(groups):
            for loc in range(side * side):
                if not mask[b, g * side * side + loc]:
                    continue
                r, c = divmod(loc, side)
                truth = images[b, group, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].permute(1, 2, 0)
                truth = truth.reshape(-1)
                guess = pred[b, loc].reshape(patch * patch, -1)[:, list(group)].reshape(-1)
                target = (truth - truth.mean()) / (truth.var() + 1e-6).sqrt()
                total += float(((guess - target) ** 2).mean())
                count += 1
    return total / count


def test_the_loss_normalises_and_scores_each_group_token_on_its_own():
    groups = [[0, 2], [1], [3]]
    _, grouped = twin(FOUR, groups)
    images = torch.randn(2, 4, 32, 32) * torch.tensor([1.0, 5.0, 0.1, 2.0])[:, None, None]
    with torch.no_grad():
        loss, pred, mask = grouped(images, noise=torch.rand(2, grouped.mask_noise_length))
    assert loss.item() == pytest.approx(naive_group_loss(images, pred, mask, groups, 8), rel=1e-4)
    # reconstruct undoes each group token's own normalisation and pastes each group's visible tokens back
    result = grouped.reconstruct(images, noise=torch.rand(2, grouped.mask_noise_length,
                                                          generator=torch.Generator().manual_seed(1)))
    visible = 1 - grouped.per_value(result.mask)
    patches = grouped.patchify(images)
    assert torch.allclose(grouped.patchify(result.pasted) * visible, patches * visible, atol=1e-5)
    assert torch.allclose(grouped.patchify(result.masked), patches * visible, atol=1e-6)


def test_band_groups_by_name_or_number_and_mistakes_in_one_line():
    names = ["blue", "green", "red", "nir1"]
    assert group_bands(["blue,green,red", "nir1"], [1, 2, 3, 4], names) == ((0, 1, 2), (3,))
    assert group_bands(["3,2", "4"], [4, 3, 2], None) == ((1, 2), (0,))  # numbers as in --bands: file bands
    # bands named after their position ("1", "2"... when nothing names them): a number is still a file band
    assert group_bands(["8,2", "4,3"], [8, 4, 3, 2], ["1", "2", "3", "4"]) == ((0, 3), (1, 2))
    assert group_labels(((0, 3), (1, 2)), [8, 4, 3, 2], ["1", "2", "3", "4"]) == ["8,2", "4,3"]
    for groups, message in ((["blue,green", "nir1"], "left out: red"), (["blue,green,red,nir1", "red"],
                                                                          "given twice: red"),
                            (["blue,green,red", "swir"], "no band 'swir'")):
        with pytest.raises(CsptError, match=message) as error:
            group_bands(groups, [1, 2, 3, 4], names)
        assert "\n" not in str(error.value)


def write_four_band_pool(folder: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(100, 2000, size=(4, 64, 64)).astype(np.uint16)
        pixels[3] = pixels[0] // 2 + 600  # near-infrared follows blue: something to learn across groups
        write_geotiff(folder / f"tile{i}.tif", pixels)
    return folder


def test_a_grouped_run_pretrains_from_the_rgb_mae_resumes_and_fine_tunes_with_its_groups(tmp_path):
    pool = write_four_band_pool(tmp_path / "pool")
    config = build_config(PretrainConfig, overrides={
        "data": [str(pool)], "output": str(tmp_path / "run"), "init": PACKAGED_MAE, "sensor": "worldview3-4band",
        "band_groups": ["blue,green,red", "nir1"], "group_masking": "shared", "epochs": 1, "batch_size": 4,
        "samples_per_epoch": 8,
        "num_workers": 0, "device": "cpu", "vis_every": 0})
    init = load_checkpoint(PACKAGED_MAE)
    resolved = resolve_config(config, init)
    model = PretrainTask(resolved, init).build_model(load_init=True)
    assert model.arch.band_groups == ((0, 1, 2), (3,))
    # the RGB group keeps the natural filters (its tokens are the RGB model's), near-infrared starts from red's
    source = init.state_dict["patch_embed.proj.weight"].float()
    weight = model.patch_embed.proj.weight.detach()
    assert torch.allclose(weight[:, :3], source[:, [2, 1, 0]], atol=1e-6)
    run = Path(pretrain(resolved))
    checkpoint = load_checkpoint(run)
    assert checkpoint.arch["band_groups"] == [[0, 1, 2], [3]]
    assert load_checkpoint(run / "encoder.safetensors").arch["band_groups"] == [[0, 1, 2], [3]]
    exported = run_cli("export", str(run), "--to", "mae", "--output", str(tmp_path / "mae.pth"))
    assert exported.returncode == 0, exported.stderr
    for source in (run, run / "encoder.safetensors", tmp_path / "mae.pth"):  # how it masked travels with it
        assert load_checkpoint(source).group_masking == "shared"
    resumed = run_cli("pretrain", "--resume", str(run), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    # fine-tuning from the grouped encoder inherits its groups, named by band
    data = tmp_path / "scenes"
    for label in ("a", "b"):
        write_four_band_pool(data / label, 3)
    classify = build_config(ClassifyConfig, overrides={
        "data": str(data), "init": str(run / "encoder.safetensors"), "output": str(tmp_path / "classify"),
        "sensor": "worldview3-4band", "epochs": 1, "batch_size": 2, "num_workers": 0, "device": "cpu",
        "train_fraction": 0.67})
    run_dir = Path(finetune_classify(classify))
    assert (run_dir / "classifier.safetensors").is_file()
    assert "- blue,green,red" in (run_dir / "config.yaml").read_text()
    # the same bands in another order: the recorded groups no longer say which bands they hold, so none
    encoder = load_checkpoint(run / "encoder.safetensors")
    reordered = resolve_classify(dataclasses.replace(classify, bands=["4", "3", "2", "1"]), encoder)
    assert reordered.band_groups is None and reordered.band_names == ["nir1", "red", "green", "blue"]
    # regrouped: the source's group encodings are not carried onto other groups, nor is a grouped source rescaled
    regrouped = resolve_classify(dataclasses.replace(classify, band_groups=["blue", "green,red,nir1"]), encoder)
    model = build_encoder(arch_of(regrouped))
    load_init_weights(model, regrouped, encoder, data_files=lambda: sorted(data.rglob("*.tif")))
    assert torch.equal(model.group_embed, torch.zeros_like(model.group_embed))
    assert torch.equal(model.patch_embed.proj.weight, encoder.state_dict["patch_embed.proj.weight"].float())
    # --shape-from: the model and pixels fine-tuning from the encoder gets (groups, bands, scaling), random weights
    shaped = dataclasses.replace(classify, init=None, shape_from=str(run / "encoder.safetensors"))
    random_start = resolve_classify(shaped, shape_source(shaped))
    assert dataclasses.replace(random_start, init=classify.init, shape_from=None) == resolve_classify(classify, encoder)
    assert random_start.band_groups == ["blue,green,red", "nir1"] and random_start.scale_high is not None
    model = build_encoder(arch_of(random_start))
    load_init_weights(model, random_start, None)
    assert not torch.allclose(model.patch_embed.proj.weight, encoder.state_dict["patch_embed.proj.weight"].float())
    with pytest.raises(CsptError, match="--init takes both"):
        shape_source(dataclasses.replace(shaped, init=classify.init))


def test_recorded_groups_follow_the_bands_not_their_positions():
    def by_position(wavelengths):  # bands nothing names: "1", "2"... with wavelengths given
        return tuple(Band(str(i + 1), w) for i, w in enumerate(wavelengths))

    recorded = PixelContract((0.5,) * 3, (0.25,) * 3, bands=(4, 3, 2), spectral=by_position([0.83, 0.66, 0.56]))
    assert same_bands(recorded, [4, 3, 2], by_position([0.83, 0.66, 0.56]), [4, 3, 2])
    assert not same_bands(recorded, [2, 3, 4], by_position([0.56, 0.66, 0.83]), [2, 3, 4])
    wv = SENSORS["worldview3-4band"]
    named = PixelContract((0.5,) * 4, (0.25,) * 4, spectral=wv)
    assert same_bands(named, [1, 2, 3, 4], wv, [])
    assert same_bands(named, [5, 6, 7, 8], wv, [5, 6, 7, 8])  # the same named bands elsewhere in another file
    assert not same_bands(named, [4, 3, 2, 1], wv[::-1], [4, 3, 2, 1])


def test_grouped_pyramids_average_each_locations_group_tokens():
    encoder = build_encoder(GROUPED)
    encoder.group_embed.data.normal_()
    images = torch.randn(2, 4, 32, 32)
    maps = encoder.forward_intermediates(images, indices=[1], intermediates_only=True)[0]
    tokens = encoder.forward_intermediates(images, indices=[1], intermediates_only=True, output_fmt="NLC")[0]
    assert maps.shape == (2, 64, 4, 4) and tokens.shape == (2, 16, 64)
    raw = {}
    encoder.blocks[1].register_forward_hook(lambda m, i, o: raw.update(out=o))
    encoder.forward_features(images)
    expected = raw["out"][:, 1:].reshape(2, 2, 16, 64).mean(1)
    assert torch.allclose(tokens, expected, atol=1e-6)
    pyramid = ViTFeaturePyramid(build_encoder(GROUPED), taps=[0, 1, 1, 1])
    assert [tuple(m.shape[-2:]) for m in pyramid(images)] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_a_grouped_mae_gives_pooled_features_and_refuses_noise_of_another_masking():
    _, grouped = twin(FOUR, [[0, 1, 2], [3]])
    images = torch.randn(2, 4, 32, 32)
    assert pooled_features(grouped, images).shape == (2, 64)  # --probe-every and cspt gap use it
    encoder = build_encoder(GROUPED)
    encoder.load_state_dict(grouped.encoder_state_dict())
    assert torch.allclose(pooled_features(grouped, images), pooled_features(encoder, images), atol=1e-5)
    with pytest.raises(CsptError, match="mask noise of 16 values"):
        grouped(images, noise=torch.rand(2, 16))  # independent masking takes a block of noise per group


def test_band_groups_refuse_what_they_cannot_do_in_one_line(tmp_path):
    with pytest.raises(CsptError, match="exactly once"):
        dataclasses.replace(FOUR, band_groups=((0, 1), (3,)))
    pool = write_four_band_pool(tmp_path / "pool", 1)
    config = build_config(PretrainConfig, overrides={
        "data": [str(pool)], "output": str(tmp_path / "run"), "sensor": "worldview3-4band", "distill_from":
        PACKAGED_MAE, "band_groups": ["blue,green,red", "nir1"]})
    with pytest.raises(CsptError, match="--distill-from"):
        resolve_config(config)


def test_pictures_of_a_grouped_model_draw_the_first_image_group_by_group():
    wv = SENSORS["worldview3-4band"]  # blue, green, red, nir1
    contract = PixelContract((0.5,) * 4, (0.25,) * 4, spectral=wv)
    assert group_order((0, 1, 2), contract) == [2, 1, 0] and group_order((3,), contract) == [3, 3, 3]
    _, grouped = twin(FOUR, [[0, 1, 2], [3]])
    grid = reconstruction_grid(grouped, torch.randn(2, 4, 32, 32), contract)
    assert grid.height == (2 + 2) * 32 + 3 * 2  # two images in colour, then the first one per group
