"""timm's RandAugment on float tensors: the recipe's policy, without an 8-bit round trip.

timm parses the policy (``rand-m9-mstd0.5-inc1``), picks the ops and draws their
magnitudes, exactly as in its PIL pipeline; only the pixel operations are replaced by
float versions of the same operations. A 16-bit or float image keeps its depth (PIL
would quantise it to 256 levels), and no Pillow release can change what an op does
(Pillow 13 refuses the 0-bit posterize that timm's strongest ``PosterizeIncreasing``
asks for, which cleared the image in every earlier release: it still does here).

Images are ``(C, H, W)`` float tensors on the 0-1 scale; geometric ops fill with the
dataset mean, as timm's ``img_mean`` does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from cspt.errors import CsptError

#: PIL resampling filters (timm draws one per geometric op) -> ``grid_sample`` modes
_GRID_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
#: levels per unit of the 8-bit scale the op arguments are given on
_LEVELS = 255.0


def _grid_mode(resample: object) -> str:
    """The interpolation of one geometric op: timm gives a filter, or a tuple to draw one from."""
    if isinstance(resample, (list, tuple)):
        resample = random.choice(resample)
    return _GRID_MODES.get(int(resample), "bilinear")


def affine(image: torch.Tensor, matrix: Sequence[float], fill: Sequence[float], resample: object) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE, matrix)`` on a float image.

    ``matrix`` ``(a, b, c, d, e, f)`` maps an output pixel position ``(x, y)`` to the
    input position ``(a x + b y + c, d x + e y + f)`` (pixel corners at integers, as in
    PIL); outside the input, ``fill``.
    """
    _, height, width = image.shape
    a, b, c, d, e, f = matrix
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    grid = torch.stack([(a * xs + b * ys + c) * 2 / width - 1, (d * xs + e * ys + f) * 2 / height - 1], dim=-1)
    ones = torch.ones_like(image[:1])
    warped = F.grid_sample(torch.cat([image, ones])[None], grid[None], mode=_grid_mode(resample),
                           padding_mode="zeros", align_corners=False)[0]
    inside = warped[-1:].clamp(0, 1)
    background = torch.tensor(list(fill), dtype=image.dtype).view(-1, 1, 1)
    return (warped[:-1] * inside + background * (1 - inside)).clamp(0, 1)


def shear_x(image: torch.Tensor, factor: float, fillcolor: Sequence[float], resample: object) -> torch.Tensor:
    return affine(image, (1, factor, 0, 0, 1, 0), fillcolor, resample)


def shear_y(image: torch.Tensor, factor: float, fillcolor: Sequence[float], resample: object) -> torch.Tensor:
    return affine(image, (1, 0, 0, factor, 1, 0), fillcolor, resample)


def translate_x(image: torch.Tensor, pixels: float, fillcolor: Sequence[float], resample: object) -> torch.Tensor:
    return affine(image, (1, 0, pixels, 0, 1, 0), fillcolor, resample)


def translate_y(image: torch.Tensor, pixels: float, fillcolor: Sequence[float], resample: object) -> torch.Tensor:
    return affine(image, (1, 0, 0, 0, 1, pixels), fillcolor, resample)


def translate_x_rel(image: torch.Tensor, pct: float, fillcolor: Sequence[float], resample: object) -> torch.Tensor:
    return translate_x(image, pct * image.shape[-1], fillcolor, resample)


def translate_y_rel(image: torch.Tensor, pct: float, fillcolor: Sequence[float], resample: object) -> torch.Tensor:
    return translate_y(image, pct * image.shape[-2], fillcolor, resample)


def rotate(image: torch.Tensor, degrees: float, fillcolor: Sequence[float], resample: object) -> torch.Tensor:
    """Counter-clockwise about the centre, as ``PIL.Image.rotate``."""
    _, height, width = image.shape
    angle = -math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = width / 2, height / 2
    return affine(image, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy), fillcolor,
                  resample)


def auto_contrast(image: torch.Tensor, **_: object) -> torch.Tensor:
    """Stretch each band from its minimum to its maximum (bands of one value are left alone)."""
    low = image.amin(dim=(1, 2), keepdim=True)
    high = image.amax(dim=(1, 2), keepdim=True)
    span = high - low
    return torch.where(span > 0, (image - low) / span.clamp_min(1e-12), image)


def equalize(image: torch.Tensor, **_: object) -> torch.Tensor:
    """Histogram equalisation per band at the image's own depth: each value becomes the share of
    pixels below it, over the pixels below the band's maximum (PIL's rule on 256 bins)."""
    bands = []
    for band in image:
        flat = band.reshape(-1).contiguous()
        ordered = flat.sort().values
        below = torch.searchsorted(ordered, flat).float()
        spread = flat.numel() - int((ordered == ordered[-1]).sum())
        bands.append(band if spread == 0 else (below / spread).clamp(max=1.0).view_as(band))
    return torch.stack(bands)


def invert(image: torch.Tensor, **_: object) -> torch.Tensor:
    return 1.0 - image


def posterize(image: torch.Tensor, bits: int, **_: object) -> torch.Tensor:
    """Keep the top ``bits`` bits of each 8-bit level (0 bits: black, as PIL before 13 and TensorFlow)."""
    if bits >= 8:
        return image
    step = 2.0 ** (8 - max(0, bits))
    return torch.floor(image * _LEVELS / step) * step / _LEVELS


def solarize(image: torch.Tensor, thresh: float, **_: object) -> torch.Tensor:
    """Invert the values at or above ``thresh`` (given on the 0-256 scale)."""
    return torch.where(image * _LEVELS >= thresh, 1.0 - image, image)


def solarize_add(image: torch.Tensor, add: float, thresh: float = 128, **_: object) -> torch.Tensor:
    """Brighten the values below ``thresh`` by ``add`` (both on the 8-bit scale)."""
    return torch.where(image * _LEVELS < thresh, (image + add / _LEVELS).clamp(max=1.0), image)


def color(image: torch.Tensor, factor: float, **_: object) -> torch.Tensor:
    return TF.adjust_saturation(image, factor)


def contrast(image: torch.Tensor, factor: float, **_: object) -> torch.Tensor:
    return TF.adjust_contrast(image, factor)


def brightness(image: torch.Tensor, factor: float, **_: object) -> torch.Tensor:
    return TF.adjust_brightness(image, factor)


def sharpness(image: torch.Tensor, factor: float, **_: object) -> torch.Tensor:
    return TF.adjust_sharpness(image, factor)


def desaturate(image: torch.Tensor, factor: float, **_: object) -> torch.Tensor:
    return color(image, min(1.0, max(0.0, 1.0 - factor)))


def gaussian_blur(image: torch.Tensor, factor: float, **_: object) -> torch.Tensor:
    """PIL's ``GaussianBlur(radius)``: ``radius`` is the standard deviation."""
    sigma = max(float(factor), 1e-3)
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma]).clamp(0, 1)


def gaussian_blur_rand(image: torch.Tensor, factor: float, **_: object) -> torch.Tensor:
    return gaussian_blur(image, random.uniform(0.1, 2.0 * factor))


#: timm op name -> the float version of its PIL function (same arguments)
FLOAT_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "PosterizeIncreasing": posterize,
    "PosterizeOriginal": posterize,
    "Solarize": solarize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "ColorIncreasing": color,
    "Contrast": contrast,
    "ContrastIncreasing": contrast,
    "Brightness": brightness,
    "BrightnessIncreasing": brightness,
    "Sharpness": sharpness,
    "SharpnessIncreasing": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "TranslateXRel": translate_x_rel,
    "TranslateYRel": translate_y_rel,
    "Desaturate": desaturate,
    "GaussianBlur": gaussian_blur,
    "GaussianBlurRand": gaussian_blur_rand,
}


def float_rand_augment(policy: str, mean: Sequence[float], img_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's RandAugment for ``policy`` (e.g. ``rand-m9-mstd0.5-inc1``), applied to float tensors.

    The op choice, probabilities, magnitude noise and argument signs are timm's draws from
    the global ``random``/``numpy`` RNGs (seed them per sample); fill is ``mean``.
    """
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    try:
        transform = rand_augment_transform(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as err:
        raise CsptError(f"--rand-augment {policy!r} is not a timm RandAugment policy ({err})") from None
    for op in transform.ops:
        if op.name not in FLOAT_OPS:
            raise CsptError(f"--rand-augment {policy!r}: timm op {op.name} has no float version in cspt")
        op.aug_fn = FLOAT_OPS[op.name]
        op.kwargs = {**op.kwargs, "fillcolor": tuple(float(m) for m in mean)}
    return transform
