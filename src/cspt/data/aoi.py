"""Areas of interest: the part of each scene a prediction covers, from polygons in any CRS (``--aoi FILE``)
or a bounding box (``--bbox``, in the scene's CRS or ``--aoi-crs``).

A scene is read only over the pixel window that holds the area; pixels of that window outside its
polygons are treated as pixels without data (never predicted, written as nodata), and the outputs are
georeferenced on the window's grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize

from cspt.data.vector_labels import VectorLabels, all_points, in_scene_crs, read_vector_labels, scene_grid
from cspt.errors import CsptError

#: points per edge of a --bbox, so that it keeps its shape in another CRS
EDGE_POINTS = 64


@dataclass(frozen=True)
class SceneArea:
    """The pixel window of a scene that holds the area (``top``, ``left``, ``height``, ``width``), which of its
    pixels lie inside the area's polygons, and the window's pixel-to-map transform."""

    top: int
    left: int
    height: int
    width: int
    inside: np.ndarray
    transform: Affine


def read_aoi(path: str | Path) -> VectorLabels:
    """The polygons of a vector file (GeoPackage, GeoJSON, shapefile) as an area of interest."""
    aoi = read_vector_labels(Path(path), None, "aoi")
    if not aoi.features:
        raise CsptError(f"{path}: no polygon with a geometry: an area of interest needs one")
    return aoi


def bbox_aoi(bbox: Sequence[float], crs: str | None = None) -> VectorLabels:
    """``minx miny maxx maxy`` as an area of interest, in ``crs`` (any form rasterio reads: ``EPSG:4326``, WKT),
    else in each scene's own CRS."""
    if len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
        raise CsptError(f"--bbox {' '.join(map(str, bbox))}: give MINX MINY MAXX MAXY, minima below maxima")
    minx, miny, maxx, maxy = map(float, bbox)
    corners = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy), (minx, miny)]
    steps = np.linspace(0, 1, EDGE_POINTS, endpoint=False)  # edges stay edges when reprojected (4326 -> UTM)
    ring = [(x0 + t * (x1 - x0), y0 + t * (y1 - y0)) for (x0, y0), (x1, y1) in zip(corners, corners[1:])
            for t in steps] + [corners[0]]
    try:
        wkt = CRS.from_user_input(crs).to_wkt() if crs else None
    except Exception:
        raise CsptError(f"--aoi-crs {crs}: not a CRS rasterio knows (try EPSG:4326)") from None
    return VectorLabels(Path("--bbox"), "", [({"type": "Polygon", "coordinates": [ring]}, "aoi")], wkt)


def scene_area(aoi: VectorLabels, scene: Path) -> SceneArea | None:
    """Where ``aoi`` lies over ``scene`` (None: nowhere). A box without a CRS is in the scene's own CRS; a
    scene that is not a georeferenced raster is refused in one line."""
    grid = scene_grid(scene)
    if grid.crs is None:
        raise CsptError(f"{scene}: has no CRS, so an area of interest ({aoi.path}) cannot be placed on it")
    features = aoi.features if aoi.crs is None else in_scene_crs(aoi, scene, grid.crs)
    geometries = [geometry for geometry, _ in features]
    points = np.array([p for geometry in geometries for p in all_points(geometry["coordinates"])], np.float64)
    cols, rows = ~grid.transform @ (points[:, 0], points[:, 1])
    top, left = max(0, math.floor(rows.min())), max(0, math.floor(cols.min()))
    bottom, right = min(grid.height, math.ceil(rows.max())), min(grid.width, math.ceil(cols.max()))
    if bottom <= top or right <= left:
        return None
    transform = grid.transform @ Affine.translation(left, top)
    inside = rasterize([(geometry, 1) for geometry in geometries], out_shape=(bottom - top, right - left),
                       transform=transform, fill=0, dtype="uint8").astype(bool)
    if not inside.any():
        return None
    return SceneArea(top, left, bottom - top, right - left, inside, transform)


def area_from_options(aoi: str | None = None, bbox: Sequence[float] | None = None,
                      aoi_crs: str | None = None) -> VectorLabels | None:
    """The area of interest ``--aoi FILE`` or ``--bbox`` (``--aoi-crs``) name, None for the whole scene."""
    if aoi and bbox:
        raise CsptError("give --aoi FILE or --bbox, not both")
    if aoi_crs and not bbox:
        raise CsptError("--aoi-crs is the CRS of --bbox (an --aoi file has its own)")
    return read_aoi(aoi) if aoi else bbox_aoi(bbox, aoi_crs) if bbox else None


def output_crs(crs: str | None, vector_format: str | None = None) -> CRS | None:
    """``--dst-crs`` as a rasterio CRS; a one-line error when rasterio does not know it, or when the vector
    outputs are GeoJSON, which RFC 7946 keeps in WGS84 longitude/latitude."""
    try:
        found = CRS.from_user_input(crs) if crs else None
    except Exception:
        raise CsptError(f"--dst-crs {crs}: not a CRS rasterio knows (try EPSG:4326 or EPSG:32633)") from None
    if found is not None and vector_format in ("geojson", "json") and found.to_epsg() != 4326:
        raise CsptError(f"--dst-crs {crs}: GeoJSON outputs are WGS84 longitude/latitude (RFC 7946); choose gpkg or "
                        "shp for another CRS")
    return found
