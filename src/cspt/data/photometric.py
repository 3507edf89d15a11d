"""Photometric distortion of RGB training images (the image alone; boxes and masks are unchanged)."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF


def photometric_distortion(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue changes (each applied half of the time)."""

    def draw(low: float, high: float) -> float | None:
        if torch.rand(1, generator=generator) < 0.5:
            return None
        return low + (high - low) * float(torch.rand(1, generator=generator))

    brightness, contrast, saturation, hue = draw(0.875, 1.125), draw(0.5, 1.5), draw(0.5, 1.5), draw(-0.05, 0.05)
    if brightness is not None:
        image = TF.adjust_brightness(image, brightness)
    if contrast is not None:
        image = TF.adjust_contrast(image, contrast)
    if saturation is not None:
        image = TF.adjust_saturation(image, saturation)
    if hue is not None:
        image = TF.adjust_hue(image, hue)
    return image.clamp(0, 1)
