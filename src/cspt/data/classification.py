"""Labelled scene images: ImageFolder and CSV sources, stratified splits, and the datasets.

A source is an ImageFolder directory (one sub-folder per class, searched recursively)
or a CSV of ``path,label`` rows (paths relative to the CSV's folder). Splits are written
as the same CSVs (absolute paths), so a run's ``splits/`` folder is itself a source.
"""

from __future__ import annotations

import csv
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from cspt.data.files import find_images, inside_any
from cspt.data.images import IMAGE_SUFFIXES, ImageReadError
from cspt.data.pixels import PixelContract, Pixels
from cspt.data.rand_augment import pixel_rand_augment
from cspt.data.sampling import load_or_replace, read_random_resized_crop, resize_centre_crop, seeded_rngs
from cspt.errors import CsptError


@dataclass
class LabelledSet:
    """Image paths with class indices into ``classes``."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "LabelledSet":
        return LabelledSet([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.classes)

    def counts(self) -> list[int]:
        return [self.labels.count(c) for c in range(len(self.classes))]


def read_labelled(source: str | Path, classes: list[str] | None = None,
                  exclude: Sequence[str | Path | None] = ()) -> LabelledSet:
    """An ImageFolder directory or a ``path,label`` CSV; ``classes`` fixes the class order.

    ``exclude``: folders that are not data (a run directory inside the dataset).
    """
    source = Path(source)
    if source.is_dir():
        data = read_image_folder(source, classes, exclude)
    elif source.is_file() and source.suffix.lower() == ".csv":
        data = read_label_csv(source, classes)
    elif source.exists():
        raise CsptError(f"{source}: not an ImageFolder directory or a path,label .csv")
    else:
        raise CsptError(f"{source}: no such folder or file")
    if classes is None and len(data.classes) < 2:
        found = ", ".join(data.classes) or "none"
        raise CsptError(f"{source}: found {len(data.classes)} class ({found}); classification needs at least 2")
    return data


def read_image_folder(folder: Path, classes: list[str] | None = None,
                      exclude: Sequence[str | Path | None] = ()) -> LabelledSet:
    """One class per sub-folder (sorted names); images anywhere below it.

    Sub-folders that hold or lie in an ``exclude`` folder (a run's output) are no class.
    """
    skipped = [Path(e).resolve() for e in exclude if e]
    folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and not inside_any(p, skipped) and not any(s.is_relative_to(p.resolve()) for s in skipped))
    if not folders:
        loose = any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
        hint = " (the images sit directly in it: put each class in its own sub-folder)" if loose else ""
        raise CsptError(f"{folder}: no class sub-folders{hint}")
    names = [p.name for p in folders]
    order = classes or names
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise CsptError(f"{folder}: class folder(s) {', '.join(unknown)} not among the model's classes "
                        f"({', '.join(order)})")
    paths, labels = [], []
    for sub in folders:
        files = find_images([sub])
        paths += files
        labels += [order.index(sub.name)] * len(files)
    return LabelledSet(paths, labels, list(order))


def read_label_csv(path: Path, classes: list[str] | None = None) -> LabelledSet:
    """``path,label`` rows (a header row is optional); every named file must exist."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except UnicodeDecodeError:
        raise CsptError(f"{path}: not a text CSV") from None
    start = 1 if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"] else 0
    items = []
    for number, row in enumerate(rows[start:], start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise CsptError(f"{path}:{number}: expected path,label, got {','.join(row)!r}")
        name, label = row[0].strip(), row[1].strip()
        file = Path(name) if Path(name).is_absolute() else path.parent / name
        if not file.is_file():
            raise CsptError(f"{path}:{number}: no such image {name}")
        items.append((file, label))
    if not items:
        raise CsptError(f"{path}: names no images")
    names = sorted({label for _, label in items})
    order = classes or names
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise CsptError(f"{path}: label(s) {', '.join(unknown)} not among the model's classes ({', '.join(order)})")
    return LabelledSet([f for f, _ in items], [order.index(label) for _, label in items], list(order))


def write_label_csv(data: LabelledSet, path: Path) -> None:
    """``path,label`` rows with absolute paths and class names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for file, label in zip(data.paths, data.labels):
            writer.writerow([str(Path(file).resolve()), data.classes[label]])


def stratified_split(data: LabelledSet, fractions: dict[str, float], seed: int,
                     source: str | Path) -> dict[str, LabelledSet]:
    """Split every class by ``fractions`` (e.g. train 0.2, val 0.1); the rest is ``test``.

    Deterministic for a seed; every class lands in every split, and splits never overlap.
    """
    total = sum(fractions.values())
    if not all(0 < f < 1 for f in fractions.values()) or total >= 1:
        raise CsptError(f"split fractions {fractions} must each lie in (0, 1) and leave some images for testing")
    chosen: dict[str, list[int]] = {name: [] for name in [*fractions, "test"]}
    for label, name in enumerate(data.classes):
        members = [i for i, y in enumerate(data.labels) if y == label]
        random.Random(f"{seed}:{name}").shuffle(members)
        start = 0
        for split, fraction in fractions.items():
            count = round(len(members) * fraction)
            if count == 0 or start + count >= len(members):
                raise CsptError(f"{source}: class {name} has {len(members)} images, too few for a "
                                f"{fraction:g} {split} split with images left for testing")
            chosen[split] += members[start:start + count]
            start += count
        chosen["test"] += members[start:]
    return {split: data.subset(sorted(indices)) for split, indices in chosen.items()}


def keep_label_fraction(data: LabelledSet, fraction: float, seed: int) -> LabelledSet:
    """A seeded, per-class ``fraction`` of ``data`` (low-label studies)."""
    if not 0 < fraction <= 1:
        raise CsptError(f"--label-fraction {fraction} must lie in (0, 1]")
    if fraction == 1:
        return data
    kept = []
    for label, name in enumerate(data.classes):
        members = [i for i, y in enumerate(data.labels) if y == label]
        random.Random(f"labels:{seed}:{name}").shuffle(members)
        count = round(len(members) * fraction)
        if count == 0:
            raise CsptError(f"--label-fraction {fraction} leaves class {name} ({len(members)} training images) "
                            "with no labelled image")
        kept += members[:count]
    return data.subset(sorted(kept))


class LabelledImages(Dataset):
    """Classification samples, indexed by ``(index, seed)``, read through a :class:`PixelContract`.

    Training (``train=True``): RandomResizedCrop + horizontal flip + RandAugment (any band
    count, on the model's 0-1 scale) + normalisation + random erasing; an unreadable file is
    replaced by another seeded sample. Evaluation: resize and centre-crop, normalised; an
    unreadable file gives ``image=None`` (counted, never replaced, so metrics stay honest).
    Invalid pixels are 0 after normalisation in both.
    """

    def __init__(self, data: LabelledSet, contract: PixelContract, img_size: int, train: bool,
                 min_scale: float = 0.08, rand_augment: str | None = None, reprob: float = 0.0,
                 crop_ratio: float = 0.875):
        self.data = data
        self.contract = contract
        self.img_size = img_size
        self.train = train
        self.min_scale = min_scale
        self.crop_ratio = crop_ratio
        self.rand_augment = pixel_rand_augment(rand_augment, contract.mean, img_size, not contract.is_sar) \
            if rand_augment and train else None
        self.erase = _random_erasing(reprob) if reprob > 0 and train else None
        #: RandAugment and erasing draw from the global RNGs (seeded per sample): one thread at a time
        self.thread_safe = self.rand_augment is None and self.erase is None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        if not self.train:
            try:
                pixels = resize_centre_crop(self.contract.read(self.data.paths[index]), self.img_size, self.crop_ratio)
            except ImageReadError as err:
                return {"image": None, "label": self.data.labels[index], "index": index, "skipped": [str(err)]}
            return {"image": self.contract.normalise(pixels), "valid": pixels.valid, "label": self.data.labels[index],
                    "index": index, "skipped": []}
        generator = torch.Generator().manual_seed(seed)
        crop = functools.partial(self.random_crop, generator=generator)
        pixels, index, skipped = load_or_replace(crop, index, len(self.data), generator)
        image, valid = self.augment(pixels, generator)
        return {"image": image, "valid": valid, "label": self.data.labels[index], "index": index, "skipped": skipped}

    def random_crop(self, index: int, generator: torch.Generator) -> Pixels:
        return read_random_resized_crop(self.contract, self.data.paths[index], self.img_size, self.min_scale,
                                        generator)

    def augment(self, pixels: Pixels, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip, RandAugment, normalisation and random erasing of a training crop (invalid pixels 0), and the
        crop's valid mask."""
        if torch.rand(1, generator=generator) < 0.5:
            pixels = pixels.flip()
        if self.rand_augment is not None:
            with seeded_rngs(generator):
                pixels = self.rand_augment(pixels)
        image = self.contract.normalise(pixels)
        if self.erase is not None:
            with seeded_rngs(generator):
                image = self.erase(image) * pixels.valid
        return image, pixels.valid


def _random_erasing(probability: float):
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability, mode="pixel", device="cpu")


def collate_labelled(samples: list[dict]) -> dict:
    """Stack the readable samples and their valid masks; keep their dataset indices and the skipped-file
    messages."""
    kept = [s for s in samples if s["image"] is not None]
    return {
        "image": torch.stack([s["image"] for s in kept]) if kept else torch.empty(0),
        "valid": torch.stack([s["valid"] for s in kept]) if kept else torch.empty(0, dtype=torch.bool),
        "label": torch.tensor([s["label"] for s in kept], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in kept], dtype=torch.long),
        "skipped": [msg for s in samples for msg in s["skipped"]],
    }
