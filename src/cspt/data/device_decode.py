"""JPEG decoding on the training device: loaders hand over bytes and crop boxes, the device does the rest.

At thousands of images a second, decoding and resizing JPEGs is what CPU loaders cannot
keep up with. With ``--decode-on device`` a loader only reads the file and draws the
sample's crop box, flip and mask noise from the sample's seed, exactly as the CPU path
draws them; :func:`decode_batch` then decodes the batch's JPEGs in one call of TorchCodec's
``decode_jpeg`` (nvJPEG on a CUDA device; torchvision's image decoders are deprecated in its
favour) and crops, resizes (bicubic, antialiased), scales by the pixel contract, flips and
normalises them there. Samples that are not plain JPEG files (PNG, TIFF, tiles of large
scenes) arrive decoded through the contract, with their valid masks.

The boxes, flips and noise are bit-exact to the CPU path; the pixels differ by the
resampler (PIL's reduced JPEG decode and 8-bit bicubic against a float bicubic of the
full decode), by about 1% of the range on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchcodec.decoders import decode_jpeg
from torchvision.transforms import InterpolationMode

from cspt.data.images import WindowBox
from cspt.data.pixels import PixelContract

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


def decode_batch(samples: Sequence[EncodedCrop | torch.Tensor], valid: Sequence[torch.Tensor | None],
                 flips: Sequence[bool], size: int, contract: PixelContract,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Normalised ``(N, bands, size, size)`` crops on ``device``, their valid masks ``(N, size, size)``, and
    the messages of JPEGs it could not decode.

    ``samples`` are encoded crops or already decoded, cropped, unflipped pixels on the model's 0-1
    scale (with their ``valid`` masks). JPEGs are scaled by the contract like any other read; one
    that does not decode is replaced by the batch's previous good sample and reported.
    """
    encoded = [i for i, s in enumerate(samples) if isinstance(s, EncodedCrop)]
    pixels: list[torch.Tensor | None] = [None if i in encoded else s.to(device, non_blocking=True)
                                         for i, s in enumerate(samples)]
    masks: list[torch.Tensor | None] = [None if i in encoded else v.to(device, non_blocking=True)
                                        for i, v in enumerate(valid)]
    failed = []
    if encoded:
        data = [samples[i].data for i in encoded]
        try:
            decoded = decode_jpeg(data, mode="RGB", device=device)
        except RuntimeError:  # one bad file fails the batched call: decode one at a time
            decoded = []
            for i in encoded:
                try:
                    decoded.append(decode_jpeg(samples[i].data, mode="RGB", device=device))
                except RuntimeError as err:
                    decoded.append(None)
                    failed.append(f"{samples[i].source}: cannot decode JPEG ({str(err).splitlines()[0]})")
        low, high = (torch.tensor(contract.low or [0.0] * 3, device=device).view(-1, 1, 1),
                     torch.tensor(contract.high or [1.0] * 3, device=device).view(-1, 1, 1))
        for i, image in zip(encoded, decoded, strict=True):
            if image is not None:
                top, left, height, width = samples[i].box
                unit = TF.resized_crop(image.float() / 255, top, left, height, width, [size, size],
                                       interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
                pixels[i] = (unit - low) / (high - low).clamp_min(1e-12)
                masks[i] = torch.ones(size, size, dtype=torch.bool, device=device)
    good = [i for i, p in enumerate(pixels) if p is not None]
    if not good:
        raise RuntimeError("no JPEG of the batch decodes: " + "; ".join(failed))
    last = good[0]
    for i in range(len(pixels)):
        last = i if pixels[i] is not None else last
        pixels[i], masks[i] = pixels[last], masks[last]
    images = torch.stack([p.flip(-1) if flip else p for p, flip in zip(pixels, flips, strict=True)])
    valid_masks = torch.stack([m.flip(-1) if flip else m for m, flip in zip(masks, flips, strict=True)])
    mean, std = contract.mean_tensor.to(device), contract.std_tensor.to(device)
    return (images - mean) / std * valid_masks[:, None], valid_masks, failed
