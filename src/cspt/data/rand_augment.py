"""timm's RandAugment on :class:`~cspt.data.pixels.Pixels`: the recipe's policy, for any band count and type.

timm parses the policy (``rand-m9-mstd0.5-inc1``), picks the ops and draws their
magnitudes, exactly as in its PIL pipeline; only the pixel operations are replaced by
versions that work on the model's 0-1 scale in float, for any number of bands, and carry
the valid mask:

- geometric ops (rotate, shear, translate) move the mask with the pixels; what they
  uncover is invalid (and at the band mean, the value timm fills with);
- photometric ops measure what they need (range, histogram, mean grey) on valid pixels
  only and never change the mask; colour ops blend with the band mean where there is
  no RGB (RGB keeps the ITU-R 601 luminance weights PIL uses);
- every op clips to the range of its input widened to [0, 1]: on 8-bit data that is
  PIL's clipping, on scaled 16-bit or float data the tails beyond [0, 1] survive;
- posterize quantises each band's valid range into ``2**bits`` levels, at least two (on 8-bit
  data spanning 0-255 that is PIL's "keep the top bits"; PIL before 13 cleared the image at
  timm's strongest ``PosterizeIncreasing``, 0 bits, and Pillow 13 refuses it; on a dim or
  scaled float crop the top bits of a fixed 0-1 scale would leave one level).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from cspt.data.pixels import Pixels
from cspt.errors import CsptError

#: PIL resampling filters (timm draws one per geometric op) -> ``grid_sample`` modes
_GRID_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
#: levels per unit of the 8-bit scale the op arguments are given on
_LEVELS = 255.0
#: ITU-R 601-2 luma weights (PIL's ``convert("L")``)
_LUMA = (0.299, 0.587, 0.114)


def _grid_mode(resample: object) -> str:
    """The interpolation of one geometric op: timm gives a filter, or a tuple to draw one from."""
    if isinstance(resample, (list, tuple)):
        resample = random.choice(resample)
    return _GRID_MODES.get(int(resample), "bilinear")


def clipped(image: torch.Tensor, reference: Pixels) -> torch.Tensor:
    """``image`` clipped to the valid range of ``reference`` widened to [0, 1]."""
    values = reference.image[:, reference.valid] if bool(reference.valid.any()) else reference.image.flatten(1)
    low = torch.minimum(values.amin(dim=1), torch.zeros(())).view(-1, 1, 1)
    high = torch.maximum(values.amax(dim=1), torch.ones(())).view(-1, 1, 1)
    return torch.maximum(torch.minimum(image, high), low)


def grey(image: torch.Tensor) -> torch.Tensor:
    """``(1, H, W)`` luminance of RGB, the band mean otherwise."""
    if image.shape[0] == 3:
        return sum(w * band for w, band in zip(_LUMA, image))[None]
    return image.mean(0, keepdim=True)


def blend(image: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ``ImageEnhance`` rule: ``other + factor * (image - other)``."""
    return other + factor * (image - other)


def affine(pixels: Pixels, matrix: Sequence[float], fill: Sequence[float], resample: object) -> Pixels:
    """PIL's ``Image.transform(AFFINE, matrix)``: pixels and mask warped; outside the input, invalid at ``fill``.

    ``matrix`` ``(a, b, c, d, e, f)`` maps an output pixel position ``(x, y)`` to the
    input position ``(a x + b y + c, d x + e y + f)`` (pixel corners at integers, as in PIL).
    """
    image = pixels.image
    _, height, width = image.shape
    a, b, c, d, e, f = matrix
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    grid = torch.stack([(a * xs + b * ys + c) * 2 / width - 1, (d * xs + e * ys + f) * 2 / height - 1], dim=-1)
    warped = F.grid_sample(image[None], grid[None], mode=_grid_mode(resample), padding_mode="border",
                           align_corners=False)[0]
    valid = F.grid_sample(pixels.valid[None, None].float(), grid[None], mode="nearest", padding_mode="zeros",
                          align_corners=False)[0, 0] > 0.5
    background = torch.tensor(list(fill), dtype=image.dtype).view(-1, 1, 1)
    return Pixels(torch.where(valid, clipped(warped, pixels), background), valid)


def shear_x(pixels: Pixels, factor: float, fillcolor: Sequence[float], resample: object) -> Pixels:
    """Shear along x: output pixel ``(x, y)`` shows input pixel ``(x + factor y, y)``."""
    return affine(pixels, (1, factor, 0, 0, 1, 0), fillcolor, resample)


def shear_y(pixels: Pixels, factor: float, fillcolor: Sequence[float], resample: object) -> Pixels:
    """Shear along y: output pixel ``(x, y)`` shows input pixel ``(x, y + factor x)``."""
    return affine(pixels, (1, 0, 0, factor, 1, 0), fillcolor, resample)


def translate_x(pixels: Pixels, offset: float, fillcolor: Sequence[float], resample: object) -> Pixels:
    """Translate along x: output pixel ``x`` shows input pixel ``x + offset``."""
    return affine(pixels, (1, 0, offset, 0, 1, 0), fillcolor, resample)


def translate_y(pixels: Pixels, offset: float, fillcolor: Sequence[float], resample: object) -> Pixels:
    """Translate along y: output pixel ``y`` shows input pixel ``y + offset``."""
    return affine(pixels, (1, 0, 0, 0, 1, offset), fillcolor, resample)


def translate_x_rel(pixels: Pixels, pct: float, fillcolor: Sequence[float], resample: object) -> Pixels:
    """Translate along x by ``pct`` of the image width."""
    return translate_x(pixels, pct * pixels.image.shape[-1], fillcolor, resample)


def translate_y_rel(pixels: Pixels, pct: float, fillcolor: Sequence[float], resample: object) -> Pixels:
    """Translate along y by ``pct`` of the image height."""
    return translate_y(pixels, pct * pixels.image.shape[-2], fillcolor, resample)


def rotate(pixels: Pixels, degrees: float, fillcolor: Sequence[float], resample: object) -> Pixels:
    """Counter-clockwise about the centre, as ``PIL.Image.rotate``."""
    _, height, width = pixels.image.shape
    angle = -math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = width / 2, height / 2
    return affine(pixels, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy), fillcolor,
                  resample)


def _photometric(pixels: Pixels, image: torch.Tensor) -> Pixels:
    """A photometric op's result: clipped, the mask unchanged."""
    return Pixels(clipped(image, pixels), pixels.valid)


def _valid_values(pixels: Pixels) -> torch.Tensor:
    """``(bands, N)``: the valid pixels (all of them when none is valid)."""
    return pixels.image[:, pixels.valid] if bool(pixels.valid.any()) else pixels.image.flatten(1)


def auto_contrast(pixels: Pixels, **_: object) -> Pixels:
    """Stretch each band from its valid minimum to its valid maximum onto 0-1 (flat bands are left alone)."""
    values = _valid_values(pixels)
    low, high = values.amin(1).view(-1, 1, 1), values.amax(1).view(-1, 1, 1)
    span = high - low
    return Pixels(torch.where(span > 0, (pixels.image - low) / span.clamp_min(1e-12), pixels.image), pixels.valid)


def equalize(pixels: Pixels, **_: object) -> Pixels:
    """Histogram equalisation per band at the image's own depth: each value becomes the share of valid
    pixels below it, over the valid pixels below the band's maximum (PIL's rule on 256 bins)."""
    bands = []
    for band, values in zip(pixels.image, _valid_values(pixels)):
        ordered = values.sort().values
        spread = ordered.numel() - int((ordered == ordered[-1]).sum())
        if spread == 0:
            bands.append(band)
            continue
        below = torch.searchsorted(ordered, band.reshape(-1).contiguous()).float().view_as(band)
        bands.append((below / spread).clamp(max=1.0))
    return Pixels(torch.stack(bands), pixels.valid)


def invert(pixels: Pixels, **_: object) -> Pixels:
    """Each value ``v`` becomes ``1 - v`` (the mask unchanged)."""
    return _photometric(pixels, 1.0 - pixels.image)


def posterize(pixels: Pixels, bits: int, **_: object) -> Pixels:
    """``2**bits`` levels (``bits`` at least one) over each band's valid range, each value at its level's
    lower edge: PIL's "keep the top bits" on 8-bit data that span 0-255."""
    if bits >= 8:
        return pixels
    levels = 2 ** max(1, int(bits))
    values = _valid_values(pixels)
    low, high = values.amin(1).view(-1, 1, 1), values.amax(1).view(-1, 1, 1)
    span = (high - low).clamp_min(1e-12)
    index = torch.floor((pixels.image - low) / span * levels).clamp(0, levels - 1)
    return _photometric(pixels, low + index * span / levels)


def solarize(pixels: Pixels, thresh: float, **_: object) -> Pixels:
    """Invert the values at or above ``thresh`` (given on the 0-256 scale)."""
    image = pixels.image
    return _photometric(pixels, torch.where(image * _LEVELS >= thresh, 1.0 - image, image))


def solarize_add(pixels: Pixels, add: float, thresh: float = 128, **_: object) -> Pixels:
    """Brighten the values below ``thresh`` by ``add`` (both on the 8-bit scale)."""
    image = pixels.image
    return _photometric(pixels, torch.where(image * _LEVELS < thresh, image + add / _LEVELS, image))


def color(pixels: Pixels, factor: float, **_: object) -> Pixels:
    """Saturation: blend with the grey image."""
    return _photometric(pixels, blend(pixels.image, grey(pixels.image), factor))


def contrast(pixels: Pixels, factor: float, **_: object) -> Pixels:
    """Blend with the mean grey level of the valid pixels."""
    level = grey(_valid_values(pixels)[:, :, None])[0].mean()
    return _photometric(pixels, blend(pixels.image, level, factor))


def brightness(pixels: Pixels, factor: float, **_: object) -> Pixels:
    """Blend with black."""
    return _photometric(pixels, pixels.image * factor)


def sharpness(pixels: Pixels, factor: float, **_: object) -> Pixels:
    """Blend with PIL's smoothing filter (3x3, centre 5, ring 1; the border pixels kept)."""
    image = pixels.image
    kernel = torch.ones(3, 3, dtype=image.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(image.shape[0], 1, 3, 3)
    smooth = image.clone()
    if min(image.shape[-2:]) > 2:
        smooth[:, 1:-1, 1:-1] = F.conv2d(image[None], kernel, groups=image.shape[0])[0]
    return _photometric(pixels, blend(image, smooth, factor))


def desaturate(pixels: Pixels, factor: float, **_: object) -> Pixels:
    """Saturation lowered by ``factor`` (0: unchanged, 1 or more: grey)."""
    return color(pixels, min(1.0, max(0.0, 1.0 - factor)))


def gaussian_blur(pixels: Pixels, factor: float, **_: object) -> Pixels:
    """PIL's ``GaussianBlur(radius)``: ``radius`` is the standard deviation."""
    sigma = max(float(factor), 1e-3)
    kernel = 2 * math.ceil(3 * sigma) + 1
    size = min(kernel, 2 * (min(pixels.image.shape[-2:]) // 2) - 1)
    if size < 3:
        return pixels
    return _photometric(pixels, TF.gaussian_blur(pixels.image, [size, size], [sigma, sigma]))


def gaussian_blur_rand(pixels: Pixels, factor: float, **_: object) -> Pixels:
    """Gaussian blur of a random standard deviation between 0.1 and ``2 * factor``."""
    return gaussian_blur(pixels, random.uniform(0.1, 2.0 * factor))


#: timm op name -> its version on :class:`Pixels` (same arguments)
PIXEL_OPS: dict[str, Callable[..., Pixels]] = {
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


def unchanged(pixels: Pixels, *args: object, **kwargs: object) -> Pixels:
    """The image as it is (RandAugment's Color for SAR)."""
    return pixels


def pixel_rand_augment(policy: str, mean: Sequence[float], img_size: int,
                       colour: bool = True) -> Callable[[Pixels], Pixels]:
    """timm's RandAugment for ``policy`` (e.g. ``rand-m9-mstd0.5-inc1``), applied to :class:`Pixels`
    (``colour`` False, for SAR: its saturation op, Color, leaves the image unchanged; the draws, and the
    weights of a ``w`` policy, stay as they are).

    The op choice, probabilities, magnitude noise and argument signs are timm's draws from
    the global ``random``/``numpy`` RNGs (seed them per sample); what geometric ops uncover
    is invalid, at ``mean``.
    """
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(min(255, max(0, round(255 * m)))
                                                                          for m in mean[:3])}
    try:
        transform = rand_augment_transform(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as err:
        raise CsptError(f"--rand-augment {policy!r} is not a timm RandAugment policy ({err})") from None
    for op in transform.ops:
        if op.name not in PIXEL_OPS:
            raise CsptError(f"--rand-augment {policy!r}: timm op {op.name} has no version in cspt")
        op.aug_fn = PIXEL_OPS[op.name] if colour or op.name != "Color" else unchanged
        op.kwargs = {**op.kwargs, "fillcolor": tuple(float(m) for m in mean)}
    return transform
