"""Unlabelled images for MAE pretraining, with per-sample seeds for exact resumption.

Every sample's randomness (scene window, crop, flip and the MAE mask noise) comes from
a seed the sampler hands over with its index, so a batch is the same whatever the
number of workers or processes, and a resumed run sees exactly the data it would have.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from cspt.data.device_decode import EncodedCrop, is_plain_jpeg
from cspt.data.images import ImageInfo, ImageReadError, WindowBox, image_info, read_bytes
from cspt.data.pixels import PixelContract, Pixels
from cspt.data.sampling import (
    load_or_replace,
    random_box,
    random_resized_crop,
    read_random_resized_crop,
    resize_centre_crop,
)
from cspt.data.shards import is_member, shard_of
from cspt.errors import CsptError

log = logging.getLogger(__name__)

#: a scene window with more than this share of nodata pixels is drawn again (at most ``NODATA_DRAWS`` times;
#: then the most valid of those drawn is kept)
MAX_NODATA_SHARE = 0.5
NODATA_DRAWS = 50

@dataclass(frozen=True)
class Entry:
    """One sample: a whole image, or a random tile of a large scene."""

    path: Path
    info: ImageInfo
    tiled: bool


@dataclass
class ScanResult:
    """The samples :func:`scan_images` found (images, tiles of large scenes) and the files it could not read."""

    entries: list[Entry]
    unreadable: list[str]  #: "path: reason" for files whose header could not be read


def is_tiled(info: ImageInfo, tile_size: int) -> bool:
    """Whether training samples an image by tiles of ``tile_size`` (a scene larger than twice it), not whole."""
    return max(info.height, info.width) > 2 * tile_size


def scan_images(files: Sequence[Path], tile_size: int, threads: int = 8) -> ScanResult:
    """Read every header; scenes larger than twice ``tile_size`` give one entry per tile. None readable: a one-line
    error naming the first unreadable file."""

    def probe(path: Path) -> ImageInfo | str:
        try:
            return image_info(path)
        except ImageReadError as err:
            return str(err)

    with ThreadPoolExecutor(threads) as pool:
        infos = list(pool.map(probe, files))
    entries, unreadable = [], []
    for path, info in zip(files, infos):
        if isinstance(info, str):
            unreadable.append(info)
            continue
        if is_tiled(info, tile_size):
            count = max(1, info.height // tile_size) * max(1, info.width // tile_size)
            entries += [Entry(path, info, True)] * count
        else:
            entries.append(Entry(path, info, False))
    if unreadable and not entries:
        raise CsptError(f"{unreadable[0]} (no readable image among the {len(unreadable)} given)")
    return ScanResult(entries, unreadable)


def file_weights(entries: Sequence[Entry]) -> torch.Tensor:
    """A chance per entry such that every file is drawn alike: ``1 / (files x the file's entries)``."""
    counts: dict[Path, int] = {}
    for entry in entries:
        counts[entry.path] = counts.get(entry.path, 0) + 1
    return torch.tensor([1.0 / (len(counts) * counts[entry.path]) for entry in entries], dtype=torch.float64)


class UnlabelledImages(Dataset):
    """MAE training samples through a :class:`PixelContract`: RandomResizedCrop + horizontal flip, normalised,
    plus mask noise.

    ``dataset[(index, seed)]`` returns ``{"image", "valid", "noise", "skipped", "nodata_windows"}``;
    ``valid`` marks the pixels with data (the MAE loss skips patches mostly without),
    ``skipped`` lists the unreadable files replaced by another (seeded) sample, and
    ``nodata_windows`` counts the scene windows drawn again for being mostly nodata. Its
    randomness comes from the per-sample generator only, so several threads may load
    samples at once. With ``decode_on_device``, JPEG files come as :class:`EncodedCrop` and
    every image unflipped and unnormalised on the model's 0-1 scale, with its ``flip``:
    :func:`collate_for_device` and :func:`~cspt.data.device_decode.decode_batch` finish them
    on the training device.
    """

    thread_safe = True

    def __init__(self, entries: Sequence[Entry], contract: PixelContract, img_size: int, patch_size: int,
                 tile_size: int, min_scale: float = 0.2, decode_on_device: bool = False,
                 samples_per_epoch: int | None = None, sample_by: str = "area", noise_groups: int = 1):
        if not entries:
            raise CsptError("no readable images in the data given")
        self.entries = list(entries)
        #: samples an epoch draws (default: one per entry); see :meth:`entry_of`
        self.length = samples_per_epoch or len(self.entries)
        #: with ``sample_by="files"``, each entry's chance: every file's tiles share one file's (None: area)
        self.weights = file_weights(self.entries) if sample_by == "files" else None
        self.contract = contract
        self.img_size = img_size
        #: mask noise values a sample draws: the patches, once per independently masked band group
        self.noise_length = (img_size // patch_size) ** 2 * noise_groups
        self.tile_size = tile_size
        self.min_scale = min_scale
        self.decode_on_device = (decode_on_device and contract.in_chans == 3 and contract.bands is None
                                 and contract.decibels is None
                                 and contract.nodata is None)  # the device decoder has no valid mask

    def __len__(self) -> int:
        return self.length

    def entry_of(self, index: int, generator: torch.Generator) -> int:
        """The entry sample ``index`` crops: ``index % len(entries)`` when an epoch covers every entry, else a
        draw from the sample's own seeded generator (an epoch shorter than the entries reaches all of them over
        the epochs, not only the first ``samples_per_epoch``); sampled by files, always a draw, each file alike."""
        if self.weights is not None:
            return int(torch.multinomial(self.weights, 1, generator=generator))
        if self.length >= len(self.entries):
            return index % len(self.entries)
        return int(torch.randint(len(self.entries), (1,), generator=generator))

    @property
    def groups(self) -> list[list[int]] | None:
        """The samples of each tar shard, for a shard-at-a-time order (None: no shards, or epochs shorter than
        the entries, whose samples draw their entries at random)."""
        if not any(is_member(e.path) for e in self.entries) or self.length < len(self.entries) or \
                self.weights is not None:
            return None
        by_shard: dict[str, list[int]] = {}
        for index in range(self.length):
            by_shard.setdefault(shard_of(self.entries[index % len(self.entries)].path), []).append(index)
        return list(by_shard.values())

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        generator = torch.Generator().manual_seed(seed)
        index = self.entry_of(index, generator)
        (pixels, redrawn), _, skipped = load_or_replace(lambda i: self.random_crop(self.entries[i], generator),
                                                        index, len(self.entries), generator)
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        noise = torch.rand(self.noise_length, generator=generator)
        sample = {"noise": noise, "skipped": skipped, "nodata_windows": redrawn}
        if isinstance(pixels, EncodedCrop):
            return {**sample, "image": pixels, "flip": flip}
        if self.decode_on_device:
            return {**sample, "image": pixels.image, "valid": pixels.valid, "flip": flip}
        pixels = pixels.flip() if flip else pixels
        return {**sample, "image": self.contract.normalise(pixels), "valid": pixels.valid}

    def random_crop(self, entry: Entry, generator: torch.Generator) -> tuple[Pixels | EncodedCrop, int]:
        """RandomResizedCrop of the image, or of a random tile of a large scene (a JPEG's bytes and
        box when decoding on the device), and the mostly-nodata windows drawn again on the way."""
        if self.decode_on_device and not entry.tiled and is_plain_jpeg(str(entry.path)):
            box = random_box(entry.info.height, entry.info.width, self.min_scale, generator)
            return EncodedCrop(torch.frombuffer(bytearray(read_bytes(entry.path)), dtype=torch.uint8), box,
                               str(entry.path)), 0
        if entry.tiled:
            tile, redrawn = self.load(entry, generator)
            return random_resized_crop(tile, self.img_size, self.min_scale, generator), redrawn
        return read_random_resized_crop(self.contract, entry.path, self.img_size, self.min_scale, generator,
                                        entry.info), 0

    def load(self, entry: Entry, generator: torch.Generator) -> tuple[Pixels, int]:
        """The image, or a random tile of a large scene (mostly valid where possible); and the windows drawn
        again for being mostly nodata."""
        if not entry.tiled:
            return self.contract.read(entry.path), 0
        best = None
        for redrawn in range(NODATA_DRAWS):
            pixels = self.contract.read(entry.path, self.random_window(entry.info, generator))
            share = float(pixels.valid.float().mean())
            if best is None or share > best[0]:
                best = share, pixels
            if share >= 1 - MAX_NODATA_SHARE:
                break
        return best[1], redrawn

    def random_window(self, info: ImageInfo, generator: torch.Generator) -> WindowBox:
        height, width = min(self.tile_size, info.height), min(self.tile_size, info.width)
        top = int(torch.randint(info.height - height + 1, (1,), generator=generator))
        left = int(torch.randint(info.width - width + 1, (1,), generator=generator))
        return top, left, height, width


#: mixed into a sample's seed for the replay draw, so it is independent of the sample's own draws
REPLAY_SALT = 0x5DEECE66D


class ReplayMix(Dataset):
    """Target samples with a seeded ``fraction`` of them replaced by source-domain samples (replay).

    Whether sample ``(index, seed)`` is replayed, and which source image it is, are drawn
    from its seed alone, so a batch is the same on resume and with any number of workers
    or processes; about ``fraction`` of every batch is source data. Each set keeps its
    own normalisation (source images: the model's statistics, without the target's scaling).

    ``feeds`` (a source of other bands): for each model band, the source band that fills it (None: zero,
    masked out). Every sample's ``valid`` is then per band, ``(bands, H, W)``, so the MAE's loss leaves
    the bands a replayed sample lacks out.
    """

    thread_safe = True

    def __init__(self, target: UnlabelledImages, source: UnlabelledImages, fraction: float,
                 feeds: Sequence[int | None] | None = None):
        if not 0.0 < fraction < 1.0:
            raise CsptError(f"--replay-fraction {fraction} must lie strictly between 0 and 1")
        self.target, self.source, self.fraction, self.feeds = target, source, fraction, feeds

    def __len__(self) -> int:
        return len(self.target)

    @property
    def groups(self) -> list[list[int]] | None:
        return self.target.groups

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        draw = torch.Generator().manual_seed(seed ^ REPLAY_SALT)
        if float(torch.rand(1, generator=draw)) < self.fraction:
            chosen = int(torch.randint(len(self.source), (1,), generator=draw))
            return self.fed({**self.source[(chosen, seed)], "replayed": 1})
        sample = {**self.target[(index, seed)], "replayed": 0}
        if self.feeds is not None:
            sample["valid"] = sample["valid"][None].expand(len(self.feeds), -1, -1).clone()
        return sample

    def fed(self, sample: dict) -> dict:
        """A replayed sample on the model's bands (:attr:`feeds`), its validity per band."""
        if self.feeds is None:
            return sample
        image, valid = sample["image"], sample["valid"]
        bands = torch.zeros(len(self.feeds), *image.shape[1:], dtype=image.dtype)
        per_band = torch.zeros(len(self.feeds), *valid.shape, dtype=torch.bool)
        for band, source in enumerate(self.feeds):
            if source is not None:
                bands[band], per_band[band] = image[source], valid
        return {**sample, "image": bands, "valid": per_band}


def collate(samples: list[dict]) -> dict:
    """Stack images and noise; gather the skipped-file messages and the counts of the whole batch."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "valid": torch.stack([s["valid"] for s in samples]),
        "noise": torch.stack([s["noise"] for s in samples]),
        "skipped": [msg for s in samples for msg in s["skipped"]],
        "nodata_windows": sum(s["nodata_windows"] for s in samples),
        "replayed": sum(s.get("replayed", 0) for s in samples),
    }


def collate_for_device(samples: list[dict]) -> dict:
    """Lists of encoded or decoded crops and their flips, for the device to finish; stacked noise."""
    return {
        "image": [s["image"] for s in samples],
        "valid": [s.get("valid") for s in samples],
        "flip": [s["flip"] for s in samples],
        "noise": torch.stack([s["noise"] for s in samples]),
        "skipped": [msg for s in samples for msg in s["skipped"]],
        "nodata_windows": sum(s["nodata_windows"] for s in samples),
        "replayed": sum(s.get("replayed", 0) for s in samples),
    }


def evaluation_images(dataset: UnlabelledImages, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` readable images spread over the dataset's files and tiles (a seeded tile of a large scene),
    resized and centre-cropped: normalised ``(N, bands, H, W)`` and their valid masks ``(N, H, W)``."""
    images, masks, last_error = [], [], None
    entries = dataset.entries
    step = max(1, len(entries) // max(1, count))
    for index in range(0, len(entries), step):
        generator = torch.Generator().manual_seed(index)
        try:
            pixels, _ = dataset.load(entries[index], generator)
        except ImageReadError as err:
            last_error = err
            continue
        pixels = resize_centre_crop(pixels, dataset.img_size)
        images.append(dataset.contract.normalise(pixels))
        masks.append(pixels.valid)
        if len(images) == count:
            break
    if not images:
        raise CsptError(f"no readable image among the {len(range(0, len(entries), step))} tried; last: {last_error}")
    return torch.stack(images), torch.stack(masks)
