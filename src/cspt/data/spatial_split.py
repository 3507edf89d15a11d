"""Hold-outs in space: which window of each scene trains and which validates.

Neighbouring pixels look alike (spatial autocorrelation), so a validation window beside a training
window scores what the model has seen rather than what it has learnt. Four ways to split
image/mask pairs into training and validation regions (each a :class:`~cspt.data.segmentation.Pair`
window; training crops and validation windows stay inside their region):

- ``by-file``: whole files, seeded. Tiles cut from one scene still touch each other: right for
  files from far-apart places, optimistic for the tiles of one mosaic.
- ``blocks``: every scene cut by a grid of square blocks in map units (pixels for images without a
  map position), anchored at the map's origin, so scenes that touch or overlap share their blocks;
  a seeded share of the blocks validates, the rest train. Each side of a block that faces a block
  of the other split (across an edge or a corner) gives up ``buffer / 2``, and a pixel straddling a
  block edge belongs to neither, so no training pixel lies within ``buffer`` of a validation pixel.
- ``polygons``: the user's own regions, polygons in any CRS whose attribute says ``train``,
  ``val`` or ``test``: a scene's pixels under them belong to that split (burnt onto the scene's grid),
  the others to neither; crops and validation windows read the pixels of their own split only.
- ``random``: the sliding windows of every scene (crop-sized, at the sliding stride), each assigned
  at random. Neighbouring windows overlap, so pixels are shared across the split: what a random
  split of a chip dataset amounts to, kept to measure how much it overstates the scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from affine import Affine
from rasterio.warp import transform_bounds

from cspt.data.georaster import georeference_of
from cspt.data.segmentation import Pair
from cspt.data.vector_labels import VectorLabels, burn_shapes, in_scene_crs, scene_grid
from cspt.data.windows import window_starts
from cspt.errors import CsptError

SPLITS = ("by-file", "blocks", "polygons", "random")

#: the zone value of each split in the rasters a polygon split burns
ZONES = {"train": 1, "val": 2, "test": 3}

#: slack when deciding whether a pixel lies inside a block (map coordinates are floating point)
EDGE_SLACK = 1e-6

BlockKey = tuple[str, int, int]


def split_regions(pairs: Sequence[Pair], method: str, fraction: float, seed: int, window: int, stride: int,
                  block_size: float | None = None, buffer: float = 0.0, polygons: VectorLabels | None = None,
                  folder: Path | None = None, test_fraction: float = 0.0) -> dict[str, list[Pair]]:
    """Training, validation (and test) regions of ``pairs`` (whole files): ``fraction`` (and ``test_fraction``)
    of the files, blocks or windows held out, or what the ``polygons`` say (their zone rasters written in
    ``folder``); ``window`` and ``stride``: the sliding window in image pixels."""
    if method == "polygons":
        if polygons is None or folder is None:
            raise CsptError("--split polygons needs --split-polygons FILE (polygons whose --split-field says train "
                            "or val)")
        return polygon_regions(pairs, polygons, folder)
    if not 0 < fraction < 1 or not 0 <= test_fraction < 1:
        raise CsptError(f"--val-fraction {fraction} and --test-fraction {test_fraction}: shares held out lie "
                        "between 0 and 1 (the first above 0)")
    fractions = {"val": fraction, "test": test_fraction}
    if method == "by-file":
        if len(pairs) < 2:
            raise CsptError("--split by-file needs at least two image/mask pairs; for one scene use --split blocks")
        return assign(list(pairs), fractions, seed)
    if method == "blocks":
        return block_regions(pairs, fractions, seed, block_size, buffer, window)
    if method == "random":
        if test_fraction:
            raise CsptError("--split random shares pixels across its splits: a test split from it would score "
                            "what was trained on; hold a test split out with --split blocks or polygons")
        windows = [replace(pair, top=pair.top + top, left=pair.left + left, height=min(window, pair.height),
                           width=min(window, pair.width))
                   for pair in pairs for top in window_starts(pair.height, window, stride)
                   for left in window_starts(pair.width, window, stride)]
        if len(windows) < 2:
            raise CsptError("--split random: the scenes hold a single sliding window; nothing to hold out")
        return assign(windows, fractions, seed)
    raise CsptError(f"--split {method}: choose one of {', '.join(SPLITS)}")


def assign(items: list, fractions: dict[str, float], seed: int) -> dict[str, list]:
    """Seeded shares of ``items`` for the held-out splits (``{"val": 0.2, "test": 0.1}``: at least one item each
    when asked for, never all of them), the rest for training; each split in the items' original order."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    wanted = {name: max(1, round(len(items) * share)) for name, share in fractions.items() if share > 0}
    while sum(wanted.values()) >= len(items) and max(wanted.values()) > 1:  # never all: training keeps some
        largest = max(wanted, key=wanted.get)
        wanted[largest] -= 1
    if sum(wanted.values()) >= len(items):
        raise CsptError(f"{len(items)} files, blocks or windows cannot give {' and '.join(wanted)} one each and "
                        "keep some for training: give more data, or smaller blocks")
    split_of, start = {}, 0
    for name, count in wanted.items():
        split_of.update({i: name for i in order[start:start + count]})
        start += count
    return {name: [x for i, x in enumerate(items) if split_of.get(i, "train") == name]
            for name in ["train", *wanted]}


def block_regions(pairs: Sequence[Pair], fractions: dict[str, float], seed: int, size: float | None,
                  buffer: float, window: int) -> dict[str, list[Pair]]:
    """The regions of the ``blocks`` split (see the module's docstring); ``size`` None: four sliding windows
    (``window`` pixels) of the first scene of each grid."""
    grids = {pair.image: grid_of(pair) for pair in pairs}
    sizes: dict[str, float] = {}
    for pair in pairs:
        name, transform = grids[pair.image]
        sizes.setdefault(name, size or 4 * window * abs(transform.a))
    for block in set(sizes.values()):
        if block <= 0 or not 0 <= buffer < block:
            raise CsptError(f"--block-size {block:g} and --split-buffer {buffer:g}: the block must be positive and "
                            "larger than the buffer")
    check_crs_apart(pairs, {image: name for image, (name, _) in grids.items()})
    placed = [(pair, [key for key in scene_blocks(pair, grids[pair.image], sizes)
                      if block_window(pair, grids[pair.image][1], key, sizes[key[0]], (0, 0, 0, 0))])
              for pair in pairs]
    keys = sorted({key for _, blocks in placed for key in blocks})
    if len(keys) < 2:
        raise CsptError(f"--block-size {min(sizes.values()):g}: the scenes lie in a single block, so none can be held "
                        "out; give a smaller --block-size (in the scenes' map units)")
    split = {key: name for name, held in assign(keys, fractions, seed).items() for key in held}
    regions: dict[str, list[Pair]] = {name: [] for name in ["train", *(n for n, f in fractions.items() if f > 0)]}
    for pair, blocks in placed:
        for key in blocks:
            region = block_window(pair, grids[pair.image][1], key, sizes[key[0]],
                                  shrunk_sides(key, split, buffer / 2))
            if region is not None:
                regions[split[key]].append(region)
    empty = [name for name, found in regions.items() if not found]
    if empty:
        raise CsptError(f"--split blocks: no {empty[0]} pixel is left (the blocks drawn for it lie at the scenes' "
                        "edges, or inside the buffer); give a smaller --block-size or --split-buffer, or another "
                        "--split-seed")
    return regions


def grid_of(pair: Pair) -> tuple[str, Affine]:
    """The name of a scene's block grid (its CRS, by EPSG code where it has one; a picture without a map position
    has a grid of its own) and its pixel-to-map transform."""
    where = georeference_of(pair.image)
    t = where.transform
    if t.b or t.d:
        raise CsptError(f"{pair.image}: its pixel grid is rotated on the map; --split blocks needs a north-up grid "
                        "(gdalwarp it first)")
    if not where.is_georeferenced:
        return str(pair.image.resolve()), t
    epsg = where.crs.to_epsg()
    return (f"EPSG:{epsg}" if epsg else where.crs.to_wkt()), t


def check_crs_apart(pairs: Sequence[Pair], grid_names: dict[Path, str]) -> None:
    """Refuse, in one line, scenes in different CRSs that overlap: blocks of one CRS cannot keep their common
    ground on one side of the split (``grid_names``: each scene's, from :func:`grid_of`)."""
    footprints = []
    for pair in pairs:
        where = georeference_of(pair.image)
        if where.is_georeferenced:
            t = where.transform
            x0, x1 = sorted((t.c, t.c + t.a * pair.width))
            y0, y1 = sorted((t.f, t.f + t.e * pair.height))
            footprints.append((pair.image, grid_names[pair.image],
                               transform_bounds(where.crs, "EPSG:4326", x0, y0, x1, y1)))
    for i, (image, crs, (a0, b0, a1, b1)) in enumerate(footprints):
        for other, other_crs, (c0, d0, c1, d1) in footprints[i + 1:]:
            if crs != other_crs and a0 < c1 and c0 < a1 and b0 < d1 and d0 < b1:
                raise CsptError(f"{image} ({crs}) and {other} ({other_crs}) overlap in different CRSs: --split blocks "
                                "cannot keep their common ground on one side; reproject them to one CRS (gdalwarp) "
                                "or give --split polygons")


def scene_blocks(pair: Pair, grid: tuple[str, Affine], sizes: dict[str, float]) -> list[BlockKey]:
    """The blocks ``(grid, column, row)`` a scene's window touches."""
    name, t = grid
    size = sizes[name]
    xs = sorted((t.c + t.a * pair.left, t.c + t.a * (pair.left + pair.width)))
    ys = sorted((t.f + t.e * pair.top, t.f + t.e * (pair.top + pair.height)))
    columns = range(math.floor(xs[0] / size), math.ceil(xs[1] / size))
    rows = range(math.floor(ys[0] / size), math.ceil(ys[1] / size))
    return [(name, i, j) for i in columns for j in rows]


def shrunk_sides(key: BlockKey, split: dict[BlockKey, str], half: float) -> tuple[float, float, float, float]:
    """How much each side of a block gives up (low x, high x, low y, high y; map units): ``half`` the buffer
    where a block of the other split lies across it or across one of its corners."""
    prefix, i, j = key
    other = {(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
             if split.get((prefix, i + di, j + dj), split[key]) != split[key]}
    return tuple(half if any(d[axis] == side for d in other) else 0.0
                 for axis, side in ((0, -1), (0, 1), (1, -1), (1, 1)))  # type: ignore[return-value]


def block_window(pair: Pair, transform: Affine, key: BlockKey, size: float,
                 shrink: tuple[float, float, float, float]) -> Pair | None:
    """The pixels of ``pair``'s window lying wholly inside the (shrunk) block, as a region (None: none)."""
    _, i, j = key
    low_x, high_x, low_y, high_y = shrink
    x0, x1 = i * size + low_x, (i + 1) * size - high_x
    y0, y1 = j * size + low_y, (j + 1) * size - high_y
    cols = sorted(((x0 - transform.c) / transform.a, (x1 - transform.c) / transform.a))
    rows = sorted(((y0 - transform.f) / transform.e, (y1 - transform.f) / transform.e))
    left = max(pair.left, math.ceil(cols[0] - EDGE_SLACK))
    right = min(pair.left + pair.width, math.floor(cols[1] + EDGE_SLACK))
    top = max(pair.top, math.ceil(rows[0] - EDGE_SLACK))
    bottom = min(pair.top + pair.height, math.floor(rows[1] + EDGE_SLACK))
    if right <= left or bottom <= top:
        return None
    return replace(pair, top=top, left=left, height=bottom - top, width=right - left)


def polygon_regions(pairs: Sequence[Pair], polygons: VectorLabels, folder: Path) -> dict[str, list[Pair]]:
    """The regions of the ``polygons`` split: per scene, one per split its polygons reach, its pixels in a zone
    raster burnt onto the scene's grid (``folder/NNNN_STEM.tif``)."""
    unknown = sorted({name for _, name in polygons.features} - set(ZONES))
    if unknown:
        raise CsptError(f"{polygons.path}: {polygons.class_field} values must be train, val or test, found "
                        f"{', '.join(unknown[:5])}")
    regions: dict[str, list[Pair]] = {name: [] for name in ZONES
                                      if name != "test" or any(n == "test" for _, n in polygons.features)}
    for number, pair in enumerate(pairs):
        grid = scene_grid(pair.image)
        if grid.crs is None:
            raise CsptError(f"{pair.image}: has no CRS, so the polygons of {polygons.path} cannot be placed on it")
        shapes = [(geometry, ZONES[name]) for geometry, name in in_scene_crs(polygons, pair.image, grid.crs)]
        zone = folder / f"{number:04d}_{pair.image.stem}.tif"
        extents = burn_shapes(grid, shapes, 0, zone)
        for split, value in ZONES.items():
            if value in extents and split in regions:
                top, left, height, width = extents[value]
                regions[split].append(replace(pair, top=top, left=left, height=height, width=width, zone=zone,
                                              zone_value=value))
    missing = [name for name, found in regions.items() if not found]
    if missing:
        raise CsptError(f"{polygons.path}: no {missing[0]} polygon lies over the scenes")
    return regions
