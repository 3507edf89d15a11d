"""Band metadata, sensor presets, band names in --bands, growing an RGB patch embedding to any bands, SAR in dB."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from timm.models._manipulate import adapt_input_conv

from cspt.config import PretrainConfig, build_config
from cspt.data.bands import NATURAL_RGB, SENSORS, Band, display_order, file_bands, select
from cspt.data.pixels import PixelContract, to_decibels
from cspt.data.rand_augment import pixel_rand_augment, unchanged
from cspt.errors import CsptError
from cspt.models.mae import MaskedAutoencoderViT
from cspt.models.vit import ArchConfig
from cspt.plots import reconstruction_grid
from cspt.tasks.pretrain import PretrainTask, resolve_config
from cspt.weights.band_adapt import adapt_filters, matched_scale, plan_bands
from cspt.weights.load import load_checkpoint
from tests.conftest import TINY_ARCH, write_geotiff

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PACKAGED_MAE = "cspt:mae-tiny-tinyimagenet"  # a real natural-image MAE (patch 8, 64 px, RGB)


def described_geotiff(path: Path, pixels: np.ndarray, descriptions: list[str] | None = None,
                      imagery: list[float] | None = None) -> Path:
    write_geotiff(path, pixels)
    with rasterio.open(path, "r+") as dst:
        for band in range(pixels.shape[0]):
            if descriptions:
                dst.set_band_description(band + 1, descriptions[band])
            if imagery:
                dst.update_tags(band + 1, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=str(imagery[band]))
    return path


def test_band_metadata_comes_from_descriptions_tags_or_presets_and_nothing_is_guessed(tmp_path):
    pixels = np.ones((4, 16, 16), np.uint16)
    named = described_geotiff(tmp_path / "s2.tif", pixels, ["B04", "B03", "B02", "B08"])
    assert [(b.name, b.wavelength, b.gsd) for b in file_bands(named)] == [
        ("B04", 0.665, 10), ("B03", 0.560, 10), ("B02", 0.490, 10), ("B08", 0.842, 10)]
    # Earth Engine's "B4 B3 B2" is Landsat 5's or Landsat 8's names too: not known unless --sensor says
    shared = described_geotiff(tmp_path / "ee.tif", pixels[:3], ["B4", "B3", "B2"])
    assert [(b.name, b.kind) for b in file_bands(shared)] == [("B4", "unknown"), ("B3", "unknown"), ("B2", "unknown")]
    tagged = described_geotiff(tmp_path / "tagged.tif", pixels, imagery=[0.49, 0.56, 0.665, 0.842])
    assert [b.wavelength for b in file_bands(tagged)] == [0.49, 0.56, 0.665, 0.842]
    envi = write_geotiff(tmp_path / "envi.tif", pixels[:2])
    with rasterio.open(envi, "r+") as dst:
        dst.update_tags(1, wavelength="0.49 Micrometers")
        dst.update_tags(2, wavelength="842")  # nanometres, as ENVI headers often give them
    assert [b.wavelength for b in file_bands(envi)] == [0.49, 0.842]
    plain = write_geotiff(tmp_path / "plain.tif", pixels)
    assert [b.kind for b in file_bands(plain)] == ["unknown"] * 4
    assert file_bands(plain, "worldview3-4band") == SENSORS["worldview3-4band"]
    photo = write_geotiff(tmp_path / "photo.tif", np.ones((3, 8, 8), np.uint8))  # an RGB photo, or IRRG: not known
    assert [b.kind for b in file_bands(photo)] == ["unknown"] * 3
    with pytest.raises(CsptError, match=re.escape(str(plain)) + r": has 4 band\(s\), --sensor sentinel2-l2a has 12"):
        file_bands(plain, "sentinel2-l2a")
    with pytest.raises(CsptError, match="--sensor sentinel3: unknown sensor; known: .*landsat8"):
        file_bands(plain, "sentinel3")


def test_bands_are_selected_by_name_or_number_and_a_wrong_one_is_named_with_the_file():
    bands = SENSORS["sentinel2-l2a"]
    path = Path("scene.tif")
    assert select(["B04", "b03", "2", 8], bands, path) == [4, 3, 2, 8]
    with pytest.raises(CsptError, match=r"scene.tif: has no band named 'B10' \(its bands: B01 B02"):
        select(["B10"], bands, path)
    with pytest.raises(CsptError, match=r"scene.tif: band 13 is out of range: the file has 12 band\(s\)"):
        select(["13"], bands, path)


def test_names_in_bands_become_numbers_and_the_model_records_what_each_band_is(tmp_path):
    pixels = (np.arange(12 * 16 * 16, dtype=np.uint16).reshape(12, 16, 16) % 3000) + 1
    write_geotiff(tmp_path / "data" / "a.tif", pixels)
    config = build_config(PretrainConfig, overrides={
        "data": [str(tmp_path / "data")], "output": str(tmp_path / "run"), "sensor": "sentinel2-l2a",
        "bands": ["B04", "B03", "B02", "B08"], **TINY_ARCH.to_dict(), "in_chans": None})
    resolved = resolve_config(config)
    assert resolved.bands == ["4", "3", "2", "8"] and resolved.in_chans == 4
    assert resolved.band_names == ["B04", "B03", "B02", "B08"] and resolved.wavelengths == [0.665, 0.56, 0.49, 0.842]
    contract = PretrainTask(resolved).contract
    assert contract.bands == (4, 3, 2, 8) and [b.name for b in contract.spectral] == resolved.band_names
    assert PixelContract.from_dict(contract.to_dict()) == contract
    assert "B04 0.665 um 10 m" in contract.describe()


def four_band_scene(tmp_path: Path, nir: float) -> Path:
    """Blue, green, red from a seeded texture, near-infrared constant: a WorldView 4-band layout."""
    rng = np.random.default_rng(0)
    rgb = (rng.random((3, 8, 8)) * 255).repeat(8, 1).repeat(8, 2).astype(np.float32)
    pixels = np.concatenate([rgb[::-1] / 255, np.full((1, 64, 64), nir, np.float32)])  # file order B, G, R, N
    return write_geotiff(tmp_path / "data" / "scene.tif", pixels.astype(np.float32))


def adapted_model(tmp_path: Path, band_init: str, nir_mean: float = 0.0) -> tuple[MaskedAutoencoderViT, object]:
    config = build_config(PretrainConfig, overrides={
        "data": [str(tmp_path / "data")], "output": str(tmp_path / band_init), "init": PACKAGED_MAE,
        "sensor": "worldview3-4band", "scale": "dtype", "band_init": band_init,
        "mean": [IMAGENET_MEAN[2], IMAGENET_MEAN[1], IMAGENET_MEAN[0], nir_mean],
        "std": [IMAGENET_STD[2], IMAGENET_STD[1], IMAGENET_STD[0], 1.0]})
    init = load_checkpoint(PACKAGED_MAE)
    task = PretrainTask(resolve_config(config, init), init)
    return task.build_model(load_init=True), task.contract


def test_wavelength_adaptation_with_the_new_band_zeroed_gives_the_rgb_models_tokens(tmp_path):
    scene = four_band_scene(tmp_path, nir=0.0)
    model, contract = adapted_model(tmp_path, "wavelength")
    source = {k: v.float() for k, v in load_checkpoint(PACKAGED_MAE).state_dict.items()}
    four = contract.normalise(contract.read(scene))[None]  # blue, green, red, near-infrared (normalised 0)
    assert torch.all(four[:, 3] == 0)
    rgb = four[:, [2, 1, 0]]  # the RGB model's order
    expected = F.conv2d(rgb, source["patch_embed.proj.weight"], source["patch_embed.proj.bias"], stride=8)
    assert torch.allclose(model.patch_embed.proj(four), expected, atol=1e-5)
    # red, green and blue keep their filters exactly; near-infrared starts from red (the nearest)
    weight = model.patch_embed.proj.weight.detach()
    assert torch.allclose(weight[:, :3], source["patch_embed.proj.weight"][:, [2, 1, 0]], atol=1e-6)
    assert torch.equal(weight[:, 3], weight[:, 2])


def test_wavelength_adaptation_scales_filters_to_the_data_and_the_methods_differ_as_documented(tmp_path):
    four_band_scene(tmp_path, nir=0.8)  # a bright near-infrared band (vegetation), not zero after normalising
    source = load_checkpoint(PACKAGED_MAE).state_dict["patch_embed.proj.weight"].float()
    wavelength, _ = adapted_model(tmp_path, "wavelength", nir_mean=0.3)
    scaled = wavelength.patch_embed.proj.weight.detach()
    ratio = scaled[:, 0] / source[:, 2]
    assert 0.5 < float(ratio.mean()) < 1.0 and torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-4)
    cyclic, _ = adapted_model(tmp_path, "cyclic")
    timm_rule = adapt_input_conv(4, source.clone(), base_chans=3)  # timm's own function is the oracle
    assert torch.allclose(cyclic.patch_embed.proj.weight.detach(), timm_rule, atol=1e-6)
    random, _ = adapted_model(tmp_path, "random")
    assert torch.equal(random.patch_embed.proj.weight.detach()[:, :3], source[:, [2, 1, 0]])
    assert not torch.allclose(random.patch_embed.proj.weight.detach()[:, 3], source[:, 2])


def test_bands_between_rgb_filters_are_interpolated_and_sar_starts_from_the_mean():
    weight = torch.randn(8, 3, 4, 4)  # red, green, blue
    target = (Band("blue", 0.48), Band("green", 0.56), Band("yellow", 0.5925), Band("red", 0.665),
              Band("VV", 55465.0), Band("coastal", 0.427), Band("swir", 1.61))
    plan = plan_bands(NATURAL_RGB, target, "wavelength", 3, len(target))
    grown = adapt_filters(weight, plan, torch.zeros(8, len(target), 4, 4))
    assert torch.equal(grown[:, [0, 1, 3]], weight[:, [2, 1, 0]])  # each RGB filter kept on its band
    assert torch.allclose(grown[:, 2], 0.5 * weight[:, 0] + 0.5 * weight[:, 1])  # halfway from green to red
    assert torch.allclose(grown[:, 4], weight.mean(1))
    assert torch.equal(grown[:, 5], weight[:, 2]) and torch.equal(grown[:, 6], weight[:, 0])  # nearest beyond


def test_unknown_wavelengths_fall_back_to_the_cyclic_rule():
    plan = plan_bands(NATURAL_RGB, (Band("1"), Band("2")), "wavelength", 3, 2)
    assert plan.method == "cyclic"
    assert torch.allclose(adapt_filters(w := torch.randn(4, 3, 2, 2), plan, torch.zeros(4, 2, 2, 2)),
                          adapt_input_conv(2, w.clone(), base_chans=3))


def test_sar_values_become_decibels_floored_at_minus_50_and_complex_pixels_their_amplitude(tmp_path):
    assert to_decibels(np.array([10.0, 0.0, np.nan]), "amplitude").tolist()[:2] == [20.0, -50.0]
    assert to_decibels(np.array([100.0, -1.0]), "intensity").tolist() == [20.0, -50.0]
    for dtype in ("complex64", "complex_int16"):  # Sentinel-1 SLC is complex int16 (GDAL's CInt16)
        path = tmp_path / f"slc_{dtype}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype=dtype) as dst:
            dst.write((np.ones((1, 8, 8)) * (6 + 8j)).astype(np.complex64))
        contract = PixelContract((0.5,), (0.25,), decibels="amplitude")
        unit, valid = contract.read_unit(path)
        assert valid.all() and np.allclose(unit, 20.0)  # |6 + 8j| = 10: 20 dB
        plain, _ = PixelContract((0.5,), (0.25,)).read_unit(path)
        assert np.allclose(plain, 10.0) and contract.may_lack_data(path)  # complex floats may hold NaN


def test_pictures_choose_true_or_false_colour_from_the_bands_and_draw_every_band():
    s2 = SENSORS["sentinel2-l2a"]
    assert display_order(s2, 12) == ([3, 2, 1], "true colour")
    assert display_order((s2[7], s2[3], s2[2]), 3)[0] == [0, 1, 2]
    assert display_order((s2[2], s2[3], s2[7]), 3) == ([2, 1, 0], "false colour (near-infrared, red, green)")
    assert display_order(SENSORS["sentinel1-grd"], 2) == ([0, 0, 0], "grey")
    model = MaskedAutoencoderViT(ArchConfig(**{**TINY_ARCH.to_dict(), "in_chans": 5}))
    contract = PixelContract((0.5,) * 5, (0.25,) * 5, spectral=s2[1:6])
    grid = reconstruction_grid(model, torch.randn(2, 5, 32, 32), contract)
    assert grid.height == (2 + 5) * 32 + 6 * 2  # two images in colour, then the first one band by band


def test_sar_augmentation_has_no_colour_op():
    for colour in (True, False):
        ops = {op.name: op.aug_fn for op in pixel_rand_augment("rand-m9-n15", (0.5,) * 2, 32, colour).ops}
        assert (ops["Color"] is unchanged) is not colour and ops["Contrast"] is not unchanged
    assert PixelContract((0.5,), (0.25,), decibels="amplitude").is_sar
    assert PixelContract((0.5,) * 2, (0.25,) * 2, spectral=SENSORS["sentinel1-grd"]).is_sar
    assert not PixelContract((0.5,) * 3, (0.25,) * 3, spectral=NATURAL_RGB).is_sar


def test_what_init_recorded_is_kept_only_where_it_still_holds(tmp_path):
    """Recorded band names only for the same bands, recorded decibels only for radar bands, recorded bands not
    over --sensor (review cases)."""
    from cspt.tasks.common import resolved_encoder_fields
    from cspt.weights.load import Checkpoint

    scene = write_geotiff(tmp_path / "data" / "s2.tif", (np.arange(12 * 16 * 16).reshape(12, 16, 16) % 900 + 1)
                          .astype(np.uint16))
    s2 = SENSORS["sentinel2-l2a"]
    recorded = PixelContract((0.5,) * 3, (0.25,) * 3, bands=(4, 3, 2), spectral=(s2[3], s2[2], s2[1]),
                             decibels="intensity")
    encoder = MaskedAutoencoderViT(ArchConfig(**TINY_ARCH.to_dict())).encoder_state_dict()
    init = Checkpoint(tmp_path / "encoder.safetensors", "cspt", encoder, described={"pixels": recorded.to_dict()})
    base = build_config(PretrainConfig, overrides={"data": [str(tmp_path / "data")], "output": str(tmp_path / "r")})
    kept = resolved_encoder_fields(base, init, lambda: [scene])  # the same bands: their names; optical: no dB
    assert kept["bands"] == ["4", "3", "2"] and kept["band_names"] == ["B04", "B03", "B02"]
    assert "decibels" not in kept
    undescribed = dataclasses.replace(init, described={"pixels": recorded.replace(spectral=None).to_dict()})
    assert resolved_encoder_fields(base, undescribed, lambda: [scene])["decibels"] == "intensity"
    other = resolved_encoder_fields(dataclasses.replace(base, bands=["8", "4", "3"]), init, lambda: [scene])
    assert "band_names" not in other  # the file says nothing of bands 8, 4, 3; B04 B03 B02 would be wrong
    optical = resolved_encoder_fields(dataclasses.replace(base, sensor="sentinel2-l2a", in_chans=12,
                                                          mean=None, std=None), init, lambda: [scene])
    assert "bands" not in optical and optical["in_chans"] == 12 and "decibels" not in optical
    assert optical["band_names"] == [b.name for b in s2]


def test_decibels_take_every_read_path_and_a_measured_scaling(tmp_path):
    from PIL import Image

    from cspt.data.scaling import resolve_scaling

    chip = tmp_path / "chip.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 250 + 1).astype(np.uint8)).save(chip)
    contract = PixelContract((0.5,), (0.25,), decibels="amplitude")
    fast = contract.read_resized_crop(chip, (0, 0, 64, 64), 32)
    assert torch.allclose(fast.image, contract.read(chip).resized([32, 32]).image)
    assert float(fast.image.min()) > 0  # 20 log10(1..250): 0 to 48 dB, not 1/255 to 250/255
    scaling = resolve_scaling("auto", contract, lambda: [chip])
    assert scaling is not None and scaling.low[0] > 1  # 8-bit data in dB are measured, not put on the dtype scale


def test_an_old_run_whose_config_has_band_numbers_resumes(tmp_path):
    from cspt.engine.run_dir import check_same_run

    config = build_config(PretrainConfig, overrides={"data": ["d"], "output": str(tmp_path), "bands": ["4", "3"],
                                                     "band_names": ["B04", "B03"]})
    saved = {"data": ["d"], "output": str(tmp_path), "bands": [4, 3]}  # as older releases wrote it
    check_same_run(saved, config, tmp_path)
    with pytest.raises(CsptError, match=r"bands: \['4', '2'\] -> \['4', '3'\]"):
        check_same_run({**saved, "bands": [4, 2]}, config, tmp_path)


def test_crops_without_spread_leave_the_embedding_unscaled():
    plan = plan_bands(NATURAL_RGB, SENSORS["worldview3-4band"], "wavelength", 3, 4)
    weight = torch.randn(8, 3, 4, 4)
    assert matched_scale(weight, adapt_filters(weight, plan, torch.zeros(8, 4, 4, 4)), plan,
                         torch.zeros(2, 4, 8, 8)) == 1.0


def test_a_replay_pool_of_another_sensor_feeds_the_bands_it_has_and_the_others_leave_the_loss(tmp_path):
    from PIL import Image

    from cspt.data.bands import band_feed
    from cspt.data.unlabelled import ReplayMix

    feed = band_feed(SENSORS["worldview3-4band"], NATURAL_RGB)  # blue, green, red, nir1 from red, green, blue
    assert feed.read == (3, 2, 1) and feed.feeds == (0, 1, 2, None)
    eight = band_feed(SENSORS["worldview3"], NATURAL_RGB)  # a photo's red feeds red, not also yellow or red-edge
    assert eight.read == (3, 2, 1) and eight.feeds == (None, 0, 1, None, 2, None, None, None)
    four_band_scene(tmp_path, nir=0.5)
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "grey.png")  # first, and grey: left out
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((64, 64, 3)) * 255).astype(np.uint8)).save(
            tmp_path / f"photo{i}.png")
    config = resolve_config(build_config(PretrainConfig, overrides={
        "data": [str(tmp_path / "data")], "output": str(tmp_path / "run"), "sensor": "worldview3-4band",
        "replay": [str(tmp_path / "grey.png")] + [str(tmp_path / f"photo{i}.png") for i in range(3)],
        "replay_sensor": "rgb", "replay_fraction": 0.5, **TINY_ARCH.to_dict(), "in_chans": None}))
    task = PretrainTask(config)
    mix, _ = task.train_data()
    assert isinstance(mix, ReplayMix) and mix.feeds == (0, 1, 2, None)
    assert [e.path.name for e in mix.source.entries] == ["photo0.png", "photo1.png", "photo2.png"]
    photo = mix.fed(mix.source[(0, 0)])["image"]  # each band normalised as the model band it feeds
    raw = mix.source.contract.read(tmp_path / "photo0.png")
    assert mix.source.contract.bands == (3, 2, 1) and mix.source.contract.mean == task.contract.mean[:3]
    assert photo.shape[0] == 4 and raw.image.shape[0] == 3
    samples = [mix[(0, seed)] for seed in range(16)]
    replayed = [s for s in samples if s["replayed"]]
    assert replayed and len(replayed) < len(samples)
    for sample in samples:
        assert sample["valid"].shape == (4, 32, 32)
        assert sample["valid"][3].any() != bool(sample["replayed"])  # a photo has no near-infrared
    assert all(torch.all(s["image"][3] == 0) for s in replayed)
    model = task.build_model(load_init=False)
    images = torch.stack([s["image"] for s in replayed])
    valid = torch.stack([s["valid"] for s in replayed])
    _, pred, mask = model(images)
    other = images.clone()
    other[:, 3] = 5.0  # what a band without data holds does not reach the loss
    assert torch.equal(model.forward_loss(images, pred, mask, valid), model.forward_loss(other, pred, mask, valid))
    assert not torch.equal(model.forward_loss(images, pred, mask, valid[:, 0]),
                           model.forward_loss(other, pred, mask, valid[:, 0]))


def test_a_replay_pool_whose_bands_cannot_be_mapped_is_refused_in_one_line(tmp_path):
    from PIL import Image

    from cspt.tasks.pretrain import replay_band_map

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    sar = PixelContract((0.5,) * 2, (0.25,) * 2, spectral=SENSORS["sentinel1-grd"])
    with pytest.raises(CsptError, match=r"--replay: no band of .*photo.png \(red 0.64 um, .*\) lies within 0.1 um of "
                                        r"the model's \(VV 55465 um 10 m"):
        replay_band_map(sar, [photo], "rgb")
    undescribed = PixelContract((0.5,) * 4, (0.25,) * 4)
    with pytest.raises(CsptError, match=r"--replay: .*photo.png has 3 band\(s\), the model 4 whose bands are not"):
        replay_band_map(undescribed, [photo], None)
