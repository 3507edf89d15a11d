"""Photometric distortion of training images (the image alone; boxes, masks and the valid mask are unchanged).

Works on :class:`~cspt.data.pixels.Pixels` on the model's 0-1 scale, for any band count
and any data type, with the same clipping rule as RandAugment
(:func:`~cspt.data.rand_augment.clipped`). Hue exists for RGB only; other band counts
get brightness, contrast and saturation (a blend with the band mean). SAR (radar bands) gets
no colour changes (saturation, hue): its bands are polarisations, not colours.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from cspt.data.pixels import Pixels
from cspt.data.rand_augment import brightness, clipped, color, contrast


def shift_hue(pixels: Pixels, hue: float) -> Pixels:
    """RGB hue rotated by ``hue`` (a fraction of the circle); values beyond [0, 1] keep their excess."""
    if pixels.image.shape[0] != 3:
        return pixels
    inside = pixels.image.clamp(0, 1)
    shifted = TF.adjust_hue(inside, hue) + (pixels.image - inside)
    return Pixels(clipped(shifted, pixels), pixels.valid)


def photometric_distortion(pixels: Pixels, generator: torch.Generator, colour: bool = True) -> Pixels:
    """Random brightness, contrast, saturation and hue changes (each applied half of the time; ``colour``
    False: no saturation or hue, the draws unchanged)."""

    def draw(low: float, high: float) -> float | None:
        if torch.rand(1, generator=generator) < 0.5:
            return None
        return low + (high - low) * float(torch.rand(1, generator=generator))

    factor_b, factor_c, factor_s, hue = draw(0.875, 1.125), draw(0.5, 1.5), draw(0.5, 1.5), draw(-0.05, 0.05)
    if factor_b is not None:
        pixels = brightness(pixels, factor_b)
    if factor_c is not None:
        pixels = contrast(pixels, factor_c)
    if factor_s is not None and colour:
        pixels = color(pixels, factor_s)
    if hue is not None and colour:
        pixels = shift_hue(pixels, hue)
    return pixels
