"""Training tiles of large annotated scenes, with box-aware augmentation (torchvision transforms v2).

A scene larger than the tile is cut into overlapping tiles; boxes are clipped to each
tile and remnants showing less than ``min_visible`` of their object are dropped. Tiles
without objects are sub-sampled. Difficult objects are left out of training targets, and so
are objects mostly over pixels without data (evaluation counts those as difficult).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cspt.data.detection import Scene
from cspt.data.photometric import photometric_distortion
from cspt.data.pixels import PixelContract, Pixels, pad_to
from cspt.data.sampling import load_or_replace, seeded_rngs
from cspt.data.windows import window_starts


@dataclass(frozen=True)
class Tile:
    """A training tile: its scene and its top-left corner in scene pixels."""

    scene: int  #: index into the scene list
    top: int
    left: int


def tile_targets(scene: Scene, top: int, left: int, size: int, min_visible: float = 0.5,
                 keep_difficult: bool = False) -> tuple[np.ndarray, list[str]]:
    """Boxes of ``scene`` inside the window, in window coordinates, with their labels."""
    boxes = scene.boxes - np.array([left, top, left, top], dtype=np.float32)
    clipped = boxes.clip(0, size)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (visible >= min_visible * area) & (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
    if not keep_difficult:
        keep &= ~scene.difficult
    return clipped[keep], [label for label, k in zip(scene.labels, keep, strict=True) if k]


def make_tiles(scenes: Sequence[Scene], size: int, overlap: int, min_visible: float = 0.5,
               empty_fraction: float = 0.1, seed: int = 0, contract: PixelContract | None = None) -> list[Tile]:
    """Overlapping tiles of every scene; a seeded ``empty_fraction`` of the object-free ones is kept. With
    ``contract``, tiles without a valid pixel are left out."""
    stride = max(1, size - overlap)
    tiles, empty = [], []
    for index, scene in enumerate(scenes):
        masked = contract is not None and contract.may_lack_data(scene.image)
        for top in window_starts(scene.height, size, stride):
            for left in window_starts(scene.width, size, stride):
                window = (top, left, min(size, scene.height - top), min(size, scene.width - left))
                if masked and not contract.valid(scene.image, window).any():
                    continue
                boxes, _ = tile_targets(scene, top, left, size, min_visible)
                (tiles if len(boxes) else empty).append(Tile(index, top, left))
    if empty and empty_fraction > 0:
        order = torch.randperm(len(empty), generator=torch.Generator().manual_seed(seed)).tolist()
        tiles += [empty[i] for i in sorted(order[:max(1, round(len(empty) * empty_fraction))])]
    return tiles


def read_window(contract: PixelContract, image: Path, height: int, width: int, top: int, left: int,
                size: int) -> Pixels:
    """The ``size`` x ``size`` window of a ``height`` x ``width`` image through ``contract``; past its edge,
    invalid padding."""
    rows, cols = min(size, height - top), min(size, width - left)
    return pad_to(contract.read(image, (top, left, rows, cols)), size, size, contract.mean_tensor)


#: the share of the pixels under an object's box that must hold data for it to be taught and scored
MIN_VALID_SHARE = 0.5


def box_window(box: Sequence[float]) -> tuple[int, int, int, int]:
    """The pixel window ``(top, left, height, width)`` under a box ``(x1, y1, x2, y2)``: one pixel at least."""
    x1, y1, x2, y2 = box
    left, top = int(x1), int(y1)
    return top, left, max(1, math.ceil(y2) - top), max(1, math.ceil(x2) - left)


def mostly_valid(valid: np.ndarray) -> bool:
    """Whether an object's box holds data (``valid``: the mask of its :func:`box_window`): training teaches
    only such objects, and evaluation counts the others as difficult."""
    return float(valid.mean()) >= MIN_VALID_SHARE


class DetectionTiles(Dataset):
    """Training tiles indexed by ``(index, seed)``: image, valid mask and torchvision target.

    The image is on the model's 0-1 scale with invalid pixels at the band mean (the detector
    normalises its inputs itself, so they become 0). Augmentation: horizontal and vertical
    flips, 90-degree turns (aerial images have no "up") and scale jitter, applied to the
    image, its valid mask and its boxes together; with ``photometric``, random
    brightness/contrast/saturation (and hue for RGB).
    """

    def __init__(self, scenes: Sequence[Scene], tiles: Sequence[Tile], classes: Sequence[str], size: int,
                 contract: PixelContract, min_visible: float = 0.5, scale_range: Sequence[float] = (0.8, 1.25),
                 augment: bool = True, photometric: bool = False):
        self.scenes = list(scenes)
        self.tiles = list(tiles)
        self.class_index = {name: i + 1 for i, name in enumerate(classes)}  # 0 is the background
        self.size = size
        self.contract = contract
        self.min_visible = min_visible
        self.transform = v2.Compose([
            v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
            v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
            v2.ScaleJitter((size, size), tuple(scale_range)), v2.RandomCrop(size, pad_if_needed=True),
            v2.SanitizeBoundingBoxes(min_size=2),
        ]) if augment else None
        self.photometric = augment and photometric

    def __len__(self) -> int:
        return len(self.tiles)

    def load(self, index: int) -> tuple[Pixels, dict]:
        tile = self.tiles[index]
        scene = self.scenes[tile.scene]
        pixels = read_window(self.contract, scene.image, scene.height, scene.width, tile.top, tile.left, self.size)
        boxes, labels = tile_targets(scene, tile.top, tile.left, self.size, self.min_visible)
        if len(boxes) and not bool(pixels.valid.all()):  # objects mostly over pixels without data: not taught
            windows = [box_window(box) for box in boxes.tolist()]
            with_data = np.array([mostly_valid(pixels.valid[top:top + h, left:left + w].numpy())
                                  for top, left, h, w in windows], dtype=bool)
            boxes, labels = boxes[with_data], [label for label, keep in zip(labels, with_data, strict=True) if keep]
        target = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY",
                                                    canvas_size=(self.size, self.size)),
                  "labels": torch.tensor([self.class_index[label] for label in labels], dtype=torch.long)}
        return pixels, target

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        generator = torch.Generator().manual_seed(seed)
        (pixels, target), _, skipped = load_or_replace(self.load, index, len(self.tiles), generator)
        if self.transform is not None:
            with seeded_rngs(generator):
                image, target = self.transform(tv_tensors.Image(pixels.image),
                                               {**target, "valid": tv_tensors.Mask(pixels.valid.to(torch.uint8))})
            pixels = Pixels(image.as_subclass(torch.Tensor), target.pop("valid").as_subclass(torch.Tensor) > 0)
            if self.photometric:
                pixels = photometric_distortion(pixels, generator, not self.contract.is_sar)
        return {"image": self.contract.fill(pixels.image, pixels.valid), "valid": pixels.valid,
                "target": {"boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"]},
                "skipped": skipped}


def collate_tiles(samples: list[dict]) -> dict:
    """Lists of images and targets (what torchvision detectors take)."""
    return {"image": [s["image"] for s in samples], "target": [s["target"] for s in samples],
            "skipped": [m for s in samples for m in s["skipped"]]}
