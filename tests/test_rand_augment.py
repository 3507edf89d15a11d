"""RandAugment on Pixels: every timm op at every magnitude, 8-bit and 16-bit, and the depth it keeps."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from timm.data.auto_augment import _RANDOM_INTERPOLATION, LEVEL_TO_ARG, NAME_TO_OP

from cspt.data.classification import LabelledImages, LabelledSet
from cspt.data.pixels import PixelContract, Pixels
from cspt.data.rand_augment import PIXEL_OPS, pixel_rand_augment, posterize

MEAN = [0.485, 0.456, 0.406]
#: every magnitude step timm's level functions can tell apart (posterize and solarize cut at tenths)
MAGNITUDES = [m / 10 for m in range(0, 101)]
#: ops whose very purpose is fewer levels
QUANTISING = {"Posterize", "PosterizeIncreasing", "PosterizeOriginal"}
#: ops that resample (timm draws bilinear or bicubic for each)
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}


def sixteen_bit_image(size: int = 48) -> torch.Tensor:
    """A smooth random 12-bit RGB scene (thousands of levels) on the 0-1 scale of its uint16 file."""
    coarse = torch.from_numpy(np.random.default_rng(1).uniform(0, 4095, (1, 3, 6, 6)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return fine[0].round().clamp(0, 4095) / 65535 * 16  # the 12 bits stretched over 0-1


def eight_bit_image(size: int = 48) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (3, size, size)).astype(np.float32) / 255)


def whole(image: torch.Tensor) -> Pixels:
    return Pixels(image, torch.ones(image.shape[-2:], dtype=torch.bool))


def level_args(name: str, magnitude: float, negate: bool, translate_const: int = 21) -> tuple:
    """timm's arguments for ``name`` at ``magnitude``, with its random sign forced either way (``translate_const``:
    timm's translation in pixels at full magnitude, 0.45 x the image side by its recipe)."""
    level_fn = LEVEL_TO_ARG[name]
    if level_fn is None:
        return ()
    state = random.getstate()
    random.seed(0)
    original = random.random
    random.random = (lambda: 1.0) if negate else (lambda: 0.0)
    try:
        return level_fn(magnitude, {"translate_const": translate_const, "img_mean": (124, 116, 104)})
    finally:
        random.random = original
        random.setstate(state)


def test_every_timm_op_has_a_pixel_version():
    assert set(NAME_TO_OP) == set(PIXEL_OPS)


@pytest.mark.parametrize("name", sorted(PIXEL_OPS))
def test_every_op_at_every_magnitude_and_sign_keeps_range_and_depth(name: str):
    images = {"8-bit": eight_bit_image(), "16-bit": sixteen_bit_image()}
    assert images["16-bit"].unique().numel() >= 3000
    filters = _RANDOM_INTERPOLATION if name in GEOMETRIC else _RANDOM_INTERPOLATION[:1]
    for magnitude in MAGNITUDES:
        for negate in (False, True):
            args = level_args(name, magnitude, negate)
            for resample in filters:
                for depth, image in images.items():
                    out = PIXEL_OPS[name](whole(image), *args, fillcolor=MEAN, resample=resample).image
                    where = f"{name}{args} m={magnitude} {depth} filter {resample}"
                    assert out.shape == image.shape and out.dtype == torch.float32, where
                    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, where
                    if depth == "16-bit" and name not in QUANTISING:
                        assert out.unique().numel() >= 1000, f"{where}: {out.unique().numel()} levels"


def test_posterize_keeps_the_top_bits_of_eight_bit_levels_and_at_least_two_levels():
    levels = torch.arange(256, dtype=torch.float32).view(1, 16, 16) / 255
    for bits in range(0, 9):
        kept = max(1, bits)  # 0 bits (timm's strongest PosterizeIncreasing) would blank the image
        expected = (torch.arange(256) & ~(2 ** (8 - kept) - 1) & 255).float().view(1, 16, 16) / 255
        assert (posterize(whole(levels), bits).image - expected).abs().max() <= 1 / 255, bits
    assert all(band.unique().numel() == 2 for band in posterize(whole(sixteen_bit_image()), 0).image)
    dim = whole(eight_bit_image() * 0.2)  # a dark crop: the top bit of a fixed 0-1 scale would blank it
    assert all(band.unique().numel() == 2 for band in posterize(dim, 1).image)


def test_ops_match_pil_on_eight_bit_images_where_pil_is_exact():
    """Ops without resampling or rounding agree with timm's PIL versions on 8-bit input."""
    image = eight_bit_image(32)
    pil = Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
    for name, args in [("Invert", ()), ("Solarize", (128,)), ("SolarizeAdd", (60,)), ("Posterize", (3,)),
                       ("AutoContrast", ())]:
        expected = torch.from_numpy(np.array(NAME_TO_OP[name](pil, *args))).permute(2, 0, 1).float() / 255
        ours = PIXEL_OPS[name](whole(image), *args, fillcolor=MEAN, resample=2).image
        assert (ours - expected).abs().max() <= 1.5 / 255, name


def test_geometric_and_colour_ops_follow_pil_conventions():
    """Direction, centre and fill of the warps, and the colour blends, as timm's PIL ops (pixels at the
    warped edges differ: PIL picks inside or outside where this blends with the fill)."""
    image = sixteen_bit_image(64)
    pil = Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
    fill = (124, 116, 104)
    for name, args in [("Rotate", (25,)), ("ShearX", (0.3,)), ("ShearY", (-0.2,)), ("TranslateXRel", (0.3,)),
                       ("TranslateYRel", (-0.2,)), ("Color", (0.3,)), ("Contrast", (1.6,)),
                       ("Sharpness", (1.9,)), ("Brightness", (1.4,)), ("GaussianBlur", (1.5,))]:
        warped = NAME_TO_OP[name](pil, *args, fillcolor=fill, resample=Image.Resampling.BILINEAR)
        expected = torch.from_numpy(np.array(warped)).permute(2, 0, 1).float() / 255
        ours = PIXEL_OPS[name](whole(image), *args, fillcolor=[f / 255 for f in fill],
                               resample=Image.Resampling.BILINEAR).image
        assert (ours - expected).abs().mean() < 1.5 / 255, name


def test_a_sixteen_bit_training_sample_keeps_its_levels_through_the_default_recipe(tmp_path):
    """The default policy on 16-bit files: samples keep thousands of levels (uint8 would keep at most 256)."""
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, (sixteen_bit_image(96).numpy() * 65535).round().astype(np.uint16), photometric="rgb")
    contract = PixelContract(tuple(MEAN), (0.2,) * 3)
    assert contract.read(path).image.unique().numel() > 3000
    data = LabelledImages(LabelledSet([path] * 4, [0, 1, 0, 1], ["a", "b"]), contract, 48, train=True,
                          min_scale=0.5, rand_augment="rand-m9-mstd0.5-inc1")
    levels = [data[(0, seed)]["image"].unique().numel() for seed in range(24)]
    assert sorted(levels)[len(levels) // 2] >= 1000, levels


def test_the_pillow_13_crash_case_runs_through_the_whole_policy():
    """Magnitude 10 ``PosterizeIncreasing`` (0 bits) made Pillow 13 raise in about one sample in 750."""
    transform = pixel_rand_augment("rand-m10-n3-mstd0-inc1", MEAN, 32)
    image = whole(eight_bit_image(32))
    random.seed(0)
    np.random.seed(0)
    for _ in range(300):
        out = transform(image)
        assert torch.isfinite(out.image).all() and out.image.unique().numel() > 1
