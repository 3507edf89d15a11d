"""JPEG decoding on the training device: loaders hand over bytes and crop boxes, the device does the rest.

At thousands of images a second, decoding and resizing JPEGs is what CPU loaders cannot
keep up with. With ``--decode-on device`` a loader only reads the file and draws the
sample's crop box, flip and mask noise from the sample's seed, exactly as the CPU path
draws them; :func:`decode_batch` then decodes the batch's JPEGs in one call of
``torchvision.io.decode_jpeg`` (nvJPEG on a CUDA device) and crops, resizes (bicubic,
antialiased), flips and normalises them there. Samples that are not plain JPEG files
(PNG, TIFF, tiles of large scenes) arrive decoded, as before.

The boxes, flips and noise are bit-exact to the CPU path; the pixels differ by the
resampler (PIL's reduced JPEG decode and 8-bit bicubic against a float bicubic of the
full decode), by about 1% of the range on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from cspt.data.images import WindowBox

JPEG_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class EncodedCrop:
    """A JPEG's bytes and the box to cut from it (pixels of the full image)."""

    data: torch.Tensor  #: uint8 bytes of the file
    box: WindowBox
    source: str  #: the file, for messages


def is_plain_jpeg(name: str) -> bool:
    """A JPEG file or shard member, by its name (the loader has checked the header)."""
    return name.lower().endswith(JPEG_SUFFIXES)


def decode_batch(samples: Sequence[EncodedCrop | torch.Tensor], flips: Sequence[bool], size: int,
                 mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """Normalised ``(N, 3, size, size)`` crops on ``device``, and the messages of JPEGs it could not decode.

    ``samples`` are encoded crops or already decoded, cropped, unflipped 0-1 pixels. A JPEG
    that does not decode is replaced by the batch's previous good sample and reported.
    """
    encoded = [i for i, s in enumerate(samples) if isinstance(s, EncodedCrop)]
    pixels: list[torch.Tensor | None] = [None if i in encoded else s.to(device, non_blocking=True)
                                         for i, s in enumerate(samples)]
    failed = []
    if encoded:
        data = [samples[i].data for i in encoded]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batched call: decode one at a time
            decoded = []
            for i in encoded:
                try:
                    decoded.append(decode_jpeg(samples[i].data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as err:
                    decoded.append(None)
                    failed.append(f"{samples[i].source}: cannot decode JPEG ({str(err).splitlines()[0]})")
        for i, image in zip(encoded, decoded, strict=True):
            if image is not None:
                top, left, height, width = samples[i].box
                pixels[i] = TF.resized_crop(image.float() / 255, top, left, height, width, [size, size],
                                            interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    good = [p for p in pixels if p is not None]
    if not good:
        raise RuntimeError("no JPEG of the batch decodes: " + "; ".join(failed))
    last = good[0]
    for i, p in enumerate(pixels):
        pixels[i] = last = p if p is not None else last
    images = torch.stack([p.flip(-1) if flip else p for p, flip in zip(pixels, flips, strict=True)])
    return (images - mean.to(device)) / std.to(device), failed
