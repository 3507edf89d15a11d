"""SAR speckle filtering (--despeckle): a boxcar mean of the intensity before decibels, on the image's own grid."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cspt.config import PretrainConfig, build_config
from cspt.data.pixels import PixelContract
from cspt.data.speckle import boxcar_mean
from cspt.errors import CsptError
from cspt.models.mae import MaskedAutoencoderViT
from cspt.models.vit import ArchConfig
from tests.conftest import TINY_ARCH

SAR = PixelContract((0.5,), (0.25,), decibels="amplitude", despeckle=3)


def single_look_complex(path: Path, backscatter: np.ndarray, seed: int = 0) -> Path:
    """A complex64 GeoTIFF of ``backscatter`` (intensity, ``(H, W)``; NaN stays NaN) under fully developed
    speckle: circular Gaussian real and imaginary parts, so each pixel's intensity is exponential."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=backscatter.shape) + 1j * rng.normal(size=backscatter.shape)
    values = (np.sqrt(backscatter / 2) * noise).astype(np.complex64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
                       dtype="complex64") as dst:
        dst.write(values[None])
    return path


def neighbourhood_mean(values: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """The mean of each pixel's valid neighbours within the image, one pixel at a time."""
    reach, (height, width) = size // 2, valid.shape
    out = np.zeros(values.shape, dtype=np.float64)
    for row in range(height):
        for col in range(width):
            rows, cols = slice(max(row - reach, 0), row + reach + 1), slice(max(col - reach, 0), col + reach + 1)
            chosen = valid[rows, cols]
            if chosen.any():
                out[row, col] = values[rows, cols][chosen].mean(0)
    return out


@pytest.mark.parametrize("size", [3, 5])
def test_boxcar_mean_is_the_mean_of_the_valid_neighbours_within_the_image(size):
    rng = np.random.default_rng(size)
    values = rng.exponential(size=(7, 9, 2)) * np.array([1.0, 1e4])
    values[0, 0] = np.nan  # a NaN where invalid must not leak into its neighbours
    valid = rng.random((7, 9)) > 0.3
    valid[0, 0] = False
    assert np.allclose(boxcar_mean(values, valid, size), neighbourhood_mean(values, valid, size), rtol=1e-5)
    assert np.isfinite(boxcar_mean(np.full((3, 3, 1), 9e40), np.ones((3, 3), bool), size)).all()  # > float32


def test_a_despeckled_pixel_is_the_same_through_every_window_and_invalid_pixels_stay_invalid(tmp_path):
    backscatter = np.full((12, 12), 0.2)
    backscatter[:, :3] = np.nan  # a NaN border, as SAR scenes have
    path = single_look_complex(tmp_path / "slc.tif", backscatter)
    whole, valid = SAR.read_unit(path)
    assert np.array_equal(valid, np.isfinite(backscatter))
    with rasterio.open(path) as src:
        intensity = np.abs(src.read(1).astype(np.complex128)) ** 2
    expected = 10 * np.log10(neighbourhood_mean(intensity[..., None], valid, 3)[valid])
    assert np.allclose(whole[valid], expected, atol=1e-4) and (whole[~valid] == 0).all()
    assert np.array_equal(SAR.read_unit(path, (-2, -1, 5, 6))[0], whole[:3, :5])  # clipped, as a plain read is
    for top in range(12 - 5 + 1):  # every window position, edges and the border included
        for left in range(12 - 6 + 1):
            unit, window_valid = SAR.read_unit(path, (top, left, 5, 6))
            assert np.array_equal(unit, whole[top:top + 5, left:left + 6]), (top, left)
            assert np.array_equal(window_valid, valid[top:top + 5, left:left + 6])


def test_despeckling_leaves_a_fraction_of_the_speckle_of_constant_backscatter(tmp_path):
    path = single_look_complex(tmp_path / "slc.tif", np.ones((96, 96)), seed=1)
    single, _ = PixelContract((0.5,), (0.25,), decibels="amplitude").read_unit(path)
    filtered, _ = SAR.read_unit(path)
    five, _ = SAR.replace(despeckle=5).read_unit(path)
    assert 5.0 < single.std() < 6.2  # single-look speckle: 5.6 dB
    assert filtered.std() < 0.35 * single.std() and five.std() < 0.7 * filtered.std()
    assert abs(filtered.mean()) < abs(single.mean()) - 1.5  # the single-look log bias (-2.5 dB) mostly gone


def test_despeckle_is_recorded_with_the_model_and_kept_by_a_stage_started_from_it(tmp_path):
    from cspt.tasks.common import resolved_encoder_fields
    from cspt.weights.load import Checkpoint

    assert PixelContract.from_dict(SAR.to_dict()) == SAR and "3x3 boxcar" in SAR.describe()
    assert SAR.to_dict()["version"] == 2 and SAR.replace(despeckle=None).to_dict()["version"] == 1  # old readers
    scene = single_look_complex(tmp_path / "data" / "slc.tif", np.ones((16, 16)))
    recorded = SAR.replace(mean=(0.5,) * 3, std=(0.25,) * 3)
    encoder = MaskedAutoencoderViT(ArchConfig(**TINY_ARCH.to_dict())).encoder_state_dict()
    init = Checkpoint(tmp_path / "encoder.safetensors", "cspt", encoder, described={"pixels": recorded.to_dict()})
    base = build_config(PretrainConfig, overrides={"data": [str(tmp_path / "data")], "output": str(tmp_path / "r")})
    kept = resolved_encoder_fields(base, init, lambda: [scene])
    assert kept["decibels"] == "amplitude" and kept["despeckle"] == 3
    repeated = resolved_encoder_fields(dataclasses.replace(base, decibels="amplitude"), init, lambda: [scene])
    assert repeated["despeckle"] == 3  # a recipe that repeats --decibels keeps the filter too
    told = resolved_encoder_fields(dataclasses.replace(base, despeckle=5), init, lambda: [scene])
    assert "despeckle" not in told  # the flag given wins (its own field)
    assert PixelContract((0.5,), (0.25,), decibels="amplitude", despeckle=1).despeckle is None  # 1: turned off


def test_a_scaling_measured_on_despeckled_data_is_not_reused_for_unfiltered_data(tmp_path):
    from cspt.data.scaling import resolve_scaling

    scene = single_look_complex(tmp_path / "slc.tif", np.ones((16, 16)))
    recorded = SAR.replace(low=(-20.0,), high=(10.0,), scaling="stats")
    assert resolve_scaling("auto", SAR, lambda: [scene], recorded).low == [-20.0]
    unfiltered = SAR.replace(despeckle=None)
    assert resolve_scaling("auto", unfiltered, lambda: [scene], recorded).low != [-20.0]  # measured again


def test_complex_values_read_as_intensity_are_refused_naming_the_file(tmp_path):
    scene = single_look_complex(tmp_path / "slc.tif", np.ones((8, 8)))
    with pytest.raises(CsptError, match=r"slc.tif: complex values are read as their amplitude"):
        PixelContract((0.5,), (0.25,), decibels="intensity").info(scene)


@pytest.mark.parametrize(("size", "decibels", "message"), [(4, "amplitude", "odd"), (0, "amplitude", "odd"),
                                                           (3, None, "give --decibels")])
def test_despeckle_needs_an_odd_size_and_decibels(size, decibels, message):
    with pytest.raises(CsptError, match=message):
        PixelContract((0.5,), (0.25,), decibels=decibels, despeckle=size)


def test_a_despeckled_pretraining_run_records_its_filter_with_the_encoder(tmp_path):
    from cspt.data.scaling import measure_scaling
    from cspt.tasks.pretrain import pretrain

    scene = single_look_complex(tmp_path / "slc" / "scene.tif", np.random.default_rng(2).gamma(2.0, size=(48, 48)))
    config = PretrainConfig(data=[str(scene.parent)], eval_data=[str(scene)], output=str(tmp_path / "run"), epochs=1,
                            samples_per_epoch=4, batch_size=4, in_chans=1, decibels="amplitude", despeckle=3,
                            num_workers=0, device="cpu", vis_every=0,
                            **{k: v for k, v in TINY_ARCH.to_dict().items() if k != "in_chans"})
    run = Path(pretrain(config))
    recorded = PixelContract.from_dict(json.loads((run / "encoder.json").read_text())["pixels"])
    assert recorded.despeckle == 3 and recorded.decibels == "amplitude"
    filtered, unfiltered = (measure_scaling([scene], "stats", c) for c in (SAR, SAR.replace(despeckle=None)))
    assert np.allclose(recorded.low, filtered.low) and not np.allclose(recorded.low, unfiltered.low, atol=1.0)
