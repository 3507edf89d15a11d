"""Training labels in map coordinates: vector polygons in any CRS, rasterised onto each scene's pixel grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fiona
import numpy as np
import rasterio
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window

from cspt.data.images import ImageReadError, gdal_env, open_raster
from cspt.errors import CsptError


@dataclass(frozen=True)
class VectorLabels:
    """A vector file's features, each a GeoJSON geometry and its class, in the file's CRS (WKT; None: none)."""

    path: Path
    class_field: str
    features: list[tuple[dict[str, Any], str]]
    crs: str | None


def read_vector_labels(labels: Path, class_field: str | None, single_class: str | None = None) -> VectorLabels:
    """Every feature's geometry and class (the ``class_field`` value, as text; without a field, every feature
    is one class: ``single_class``, else named after the file), and the file's CRS. Features without a
    geometry, with an empty one or without a class are left out."""
    if not labels.exists():
        raise CsptError(f"{labels}: no such vector file")
    try:
        with fiona.open(labels) as layer:
            fields = list(layer.schema["properties"])
            if class_field is not None and class_field not in fields:
                raise CsptError(f"{labels}: no field {class_field!r} (its fields: {', '.join(fields) or 'none'})")
            features = []
            for feature in layer:
                geometry = feature.geometry
                name = (single_class or labels.stem) if class_field is None else feature.properties[class_field]
                if geometry is None or name is None or not all_points(geometry.__geo_interface__["coordinates"]):
                    continue
                features.append((dict(geometry.__geo_interface__), str(name)))
            crs = layer.crs_wkt or None
    except CsptError:
        raise
    except Exception as err:  # fiona/GDAL: missing, not vector, corrupt
        raise CsptError(f"{labels}: not a readable vector file ({str(err).splitlines()[0] if str(err) else err})") \
            from None
    return VectorLabels(labels, class_field, features, crs)


def crs_name(wkt: str) -> str:
    """A CRS's EPSG code, else the name its WKT gives it."""
    try:
        epsg = CRS.from_wkt(wkt).to_epsg()
    except Exception:
        epsg = None
    return f"EPSG:{epsg}" if epsg else (wkt.split('"')[1] if '"' in wkt else wkt[:60])


def vector_classes(labels: VectorLabels) -> list[str]:
    """The classes the labels name, sorted (the class index order): as numbers when every one is an integer
    code (10, 20, 100), else as text."""
    if not labels.features:
        what = f"with a {labels.class_field!r} value" if labels.class_field else "with a geometry"
        raise CsptError(f"{labels.path}: no features {what}")
    names = {name for _, name in labels.features}
    if all(_is_integer(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _is_integer(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def class_index(labels: VectorLabels, classes: Sequence[str]) -> dict[str, int]:
    """``class name -> index`` in ``classes``; a one-line error when the labels name a class it lacks."""
    missing = sorted({name for _, name in labels.features} - set(classes))
    if missing:
        raise CsptError(f"{labels.path}: class(es) {', '.join(missing[:8])} of its {labels.class_field or 'features'} "
                        f"are not among --class-names ({', '.join(classes)}): name every class")
    return {name: i for i, name in enumerate(classes)}


def in_scene_crs(labels: VectorLabels, scene: Path, scene_crs: CRS | None) -> list[tuple[dict[str, Any], str]]:
    """The features reprojected to the scene's CRS; a one-line error when that cannot be done."""
    crs = labels.crs
    if (crs is None) != (scene_crs is None):
        raise CsptError(f"{labels.path}: cannot place it on {scene}: "
                        f"{'it has' if crs is None else 'the scene has'} no CRS")
    if crs is None:
        return labels.features
    try:
        return [(transform_geom(crs, scene_crs, geometry), name) for geometry, name in labels.features]
    except Exception:
        raise CsptError(f"{labels.path}: its CRS ({crs_name(crs)}) cannot be transformed to {scene}'s "
                        f"({scene_crs})") from None


@dataclass(frozen=True)
class SceneGrid:
    """A GeoTIFF scene's pixel grid on the map."""

    crs: CRS | None
    transform: Affine
    height: int
    width: int
    bounds: BoundingBox


def scene_grid(scene: Path, what: str = "scene") -> SceneGrid:
    """The grid of ``scene``; an :class:`ImageReadError` naming it (as ``what``) when it cannot be opened."""
    try:
        with open_raster(scene) as src:
            return SceneGrid(src.crs, src.transform, src.height, src.width, src.bounds)
    except Exception as err:  # GDAL: missing, not a raster, corrupt
        raise ImageReadError(f"{scene}: cannot open the {what} ({str(err).splitlines()[0] if str(err) else err})") \
            from None


def scene_boxes(labels: VectorLabels, scene: Path, grid: SceneGrid) -> tuple[np.ndarray, list[str], int]:
    """The pixel boxes ``(N, 4)`` (x1, y1, x2, y2) of the features (boxes or polygons, any CRS) over
    ``scene`` (on ``grid``), clipped to it, their classes, and how many were clipped."""
    width, height = grid.width, grid.height
    boxes, names, clipped = [], [], 0
    for geometry, name in in_scene_crs(labels, scene, grid.crs):
        x1, y1, x2, y2 = pixel_span(geometry, grid.transform)
        box = np.clip([x1, y1, x2, y2], 0, [width, height, width, height])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue  # outside the scene (or a sliver of it)
        clipped += int(not np.allclose(box, [x1, y1, x2, y2]))
        boxes.append(box)
        names.append(name)
    return np.array(boxes, np.float32).reshape(-1, 4), names, clipped


def covers(labels: VectorLabels, scene: Path, grid: SceneGrid) -> bool:
    """Whether the labels' extent (the bounding box of all their features, in the scene's CRS) overlaps the
    scene: a scene outside it is not labelled by this file at all, rather than labelled as holding nothing."""
    points = [p for geometry, _ in in_scene_crs(labels, scene, grid.crs) for p in all_points(geometry["coordinates"])]
    if not points:
        return False
    xs, ys = np.array(points, dtype=np.float64).T
    corners = [grid.transform @ corner for corner in ((0, 0), (grid.width, 0), (0, grid.height),
                                                      (grid.width, grid.height))]
    left, right = min(x for x, _ in corners), max(x for x, _ in corners)
    bottom, top = min(y for _, y in corners), max(y for _, y in corners)
    return xs.min() < right and xs.max() > left and ys.min() < top and ys.max() > bottom


def check_lies_over(labels: VectorLabels, scenes: Sequence[str | Path]) -> None:
    """A one-line error when the labels' extent overlaps none of the ``scenes`` (before any other complaint
    about the labels: a file of another place is the likelier mistake)."""
    if not any(covers(labels, Path(scene), scene_grid(Path(scene))) for scene in scenes):
        named = ", ".join(str(scene) for scene in list(scenes)[:3]) + (", ..." if len(scenes) > 3 else "")
        raise CsptError(f"{labels.path}: no feature lies over any of the {len(scenes)} scene(s) ({named}): "
                        "do they show the same place?")


def all_points(coordinates: Any) -> list[tuple[float, float]]:
    """Every vertex of a GeoJSON coordinate array (point, ring, polygon or multi-polygon)."""
    if coordinates and isinstance(coordinates[0], (int, float)):
        return [tuple(coordinates[:2])]
    return [point for part in coordinates for point in all_points(part)]


#: pixels of a scene rasterised at a time (whole rows of tiles: memory independent of the scene's size, and
#: every tile written whole, so GDAL's bounded cache can flush it)
LABEL_STRIP_PIXELS = 16_000_000
LABEL_TILE = 256


def rasterize_labels(scene: Path, labels: VectorLabels, classes: Sequence[str], target: Path,
                     ignore_index: int = 255, background: str | None = None) -> Path:
    """Burn the labels' polygons into a mask of ``scene``'s grid (class indices, reprojected to its CRS): a tiled
    GeoTIFF at ``target`` with the scene's CRS and transform, written strip by strip (any scene size). Where
    no polygon lies: the ``background`` class, else ``ignore_index``. (Pixels without data are ignored by
    the datasets, through the pixel contract.)"""
    grid = scene_grid(scene)
    bounds = grid.bounds
    index = class_index(labels, [c for c in classes if c != background])
    index = {name: classes.index(name) for name in index}
    fill = ignore_index if background is None else classes.index(background)
    shapes = [(geometry, index[name]) for geometry, name in in_scene_crs(labels, scene, grid.crs)]
    if not burn_shapes(grid, shapes, fill, target):
        target.unlink()
        raise CsptError(f"{labels.path}: no feature lies over {scene} (the scene covers x {bounds.left:.1f}.."
                        f"{bounds.right:.1f}, y {bounds.bottom:.1f}..{bounds.top:.1f} in {grid.crs})")
    return target


def pixel_span(geometry: dict[str, Any], transform: Affine) -> tuple[float, float, float, float]:
    """The fractional pixel columns and rows a geometry's points reach on a grid: min column, min row, max column,
    max row."""
    xs, ys = np.array(all_points(geometry["coordinates"]), dtype=np.float64).T
    cols, rows = ~transform @ (xs, ys)
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def burn_shapes(grid: SceneGrid, shapes: Sequence[tuple[dict[str, Any], int]], fill: int,
                target: Path) -> dict[int, tuple[int, int, int, int]]:
    """Burn ``(geometry, value)`` shapes (in the grid's CRS) into a uint8 tiled GeoTIFF on ``grid``, ``fill``
    elsewhere, strip by strip (memory independent of the grid's size). Returns the pixel window (top, left,
    height, width) each burnt value covers (empty: nothing burnt)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    extents: dict[int, list[int]] = {}  # value: [top, left, bottom, right]
    with gdal_env(), rasterio.open(target, "w", driver="GTiff", height=grid.height, width=grid.width, count=1,
                                   dtype="uint8", crs=grid.crs, transform=grid.transform, tiled=True,
                                   blockxsize=LABEL_TILE, blockysize=LABEL_TILE, compress="deflate") as dst:
        step = max(1, LABEL_STRIP_PIXELS // grid.width // LABEL_TILE) * LABEL_TILE  # whole rows of tiles
        spans = [pixel_span(geometry, grid.transform)[1::2] for geometry, _ in shapes]
        for top in range(0, grid.height, step):
            rows = min(step, grid.height - top)
            inside = [shape for shape, (first, last) in zip(shapes, spans, strict=True)
                      if last + 1 >= top and first - 1 < top + rows]  # a pixel of slack either side
            strip = rasterize(inside, out_shape=(rows, grid.width), transform=grid.transform
                              @ Affine.translation(0, top), fill=fill, dtype="uint8") if inside else \
                np.full((rows, grid.width), fill, np.uint8)
            for value in np.flatnonzero(np.bincount(strip.ravel(), minlength=256)).tolist():
                if value == fill:
                    continue
                hit = strip == value
                found_rows, found_cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
                box = [top + found_rows[0], found_cols[0], top + found_rows[-1] + 1, found_cols[-1] + 1]
                known = extents.setdefault(value, box)
                extents[value] = [min(known[0], box[0]), min(known[1], box[1]), max(known[2], box[2]),
                                  max(known[3], box[3])]
            dst.write(strip[None], window=Window(0, top, grid.width, rows))
    return {value: (int(t), int(l), int(b - t), int(r - l)) for value, (t, l, b, r) in extents.items()}


def scene_label_pairs(scenes: Sequence[str], labels: VectorLabels, classes: Sequence[str], folder: Path,
                      ignore_index: int = 255, background: str | None = None) -> Path:
    """Rasterise the labels onto every scene; an ``image,mask`` CSV of the pairs (absolute paths), in
    ``folder``. Masks are numbered, so scenes of the same name from two folders keep their own."""
    rows = ["image,mask"]
    for number, scene in enumerate(map(Path, scenes)):
        mask = rasterize_labels(scene, labels, classes, folder / f"{number:04d}_{scene.stem}.tif", ignore_index,
                                background)
        rows.append(f"{scene.resolve()},{mask.resolve()}")
    table = folder / "pairs.csv"
    table.write_text("\n".join(rows) + "\n")
    return table
