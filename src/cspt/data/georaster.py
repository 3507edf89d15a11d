"""Georeferenced outputs a GIS opens directly: class and probability GeoTIFFs, vector polygons and boxes.

Rasters are Cloud-Optimised GeoTIFFs (GDAL's COG driver: 256 px tiles, deflate, overviews
ahead of the full resolution) with the input's CRS and transform, written strip by strip (a
scene never sits in memory whole). Class maps carry their class names where GIS software
looks for them: a raster attribute table and category names in ``NAME.tif.aux.xml`` and a
QGIS style (``NAME.qml``, loaded with the layer). Vectors go through fiona: GeoPackage
(``.gpkg``) or a shapefile (``.shp``) in the scene's CRS, or GeoJSON (``.geojson``) in WGS84 as RFC 7946
requires.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fiona
import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.features import shapes
from rasterio.transform import xy
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom
from rasterio.windows import Window

from cspt.data.images import gdal_env, is_raster, open_raster
from cspt.errors import CsptError

log = logging.getLogger("cspt")

#: the class raster's nodata value (no class: outside the scene's data)
NO_CLASS = 255
#: the probability rasters' nodata value; probabilities are stored as 0..254 (GDAL scale 1/254)
PROBABILITY_NODATA = 255
VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".shp": "ESRI Shapefile"}
#: rows of the class raster vectorised at once (regions are cut at these seams on taller scenes)
VECTOR_STRIP_ROWS = 4096


@dataclass(frozen=True)
class Georeference:
    """Where a raster lies on the map (``crs`` None: a plain picture, pixel coordinates only)."""

    crs: CRS | None
    transform: Affine

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None


def georeference_of(path: Path) -> Georeference:
    """The CRS and pixel-to-map transform of a raster (GeoTIFF, VRT); the identity for other images."""
    if not is_raster(path):
        return Georeference(None, Affine.identity())
    with open_raster(path) as src:
        if src.crs is None and (src.gcps[0] or src.rpcs):
            log.warning("%s is located by ground control points or RPCs, which cspt does not carry to its outputs: "
                        "they are in pixel coordinates; orthorectify it first (gdalwarp) for outputs on the map", path)
        return Georeference(src.crs, src.transform)


@dataclass(frozen=True)
class ClassValues:
    """The pixel value each class has in a written class map: the user's own integer codes when every class
    name is one, written as a plain non-negative number below 65535 (``10``, ``20``, ``100``: land-cover
    legends; not ``007``, ``-1`` or ``10.0``), else the class index; and the map's type and
    nodata (uint8 and 255, or uint16 and 65535 for codes above 254)."""

    classes: tuple[str, ...]
    values: tuple[int, ...]
    are_codes: bool  #: the values are the class names read as integers

    @classmethod
    def of(cls, classes: Sequence[str]) -> ClassValues:
        codes = [int(name) if name.isascii() and name.isdigit() and str(int(name)) == name else None
                 for name in classes]
        if None in codes or max(codes, default=0) >= 65535:
            return cls(tuple(classes), tuple(range(len(classes))), False)
        return cls(tuple(classes), tuple(codes), True)

    @property
    def dtype(self) -> str:
        return "uint8" if max(self.values, default=0) < NO_CLASS else "uint16"

    @property
    def nodata(self) -> int:
        return NO_CLASS if self.dtype == "uint8" else 65535

    def from_indices(self, indices: np.ndarray) -> np.ndarray:
        """Class indices (``NO_CLASS``: none) as the map's values (nodata: none)."""
        lookup = np.full(256, self.nodata, self.dtype)
        lookup[:len(self.values)] = self.values
        return lookup[indices]

    def to_indices(self, values: np.ndarray) -> np.ndarray:
        """The map's values as class indices (``NO_CLASS`` for nodata)."""
        lookup = np.full(65536, NO_CLASS, np.uint8)
        lookup[list(self.values)] = np.arange(len(self.values))
        return lookup[values]


class RasterWriter:
    """A Cloud-Optimised GeoTIFF of uint8 (or ``dtype``) bands written in strips of full-width rows.

    The rows go to a hidden tiled GeoTIFF beside ``path``; leaving the ``with`` block cleanly
    turns it into a COG (overviews resampled with ``overviews``) and moves that into place in one
    step. Leaving it with an error removes the partial file and whatever ``path`` held, so a
    scene that failed leaves no output that looks like a result.
    """

    def __init__(self, path: Path, height: int, width: int, bands: int, where: Georeference,
                 nodata: int | None = None, colors: dict[int, Sequence[int]] | None = None, scale: float | None = None,
                 names: Sequence[str] | None = None, overviews: str = "NEAREST", dtype: str = "uint8"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.overviews = path, overviews
        self.partial = path.with_name(f".{path.name}.partial")
        self.env = gdal_env()
        self.env.__enter__()
        self.dataset = rasterio.open(self.partial, "w", driver="GTiff", height=height, width=width, count=bands,
                                     dtype=dtype, crs=where.crs, transform=where.transform, nodata=nodata,
                                     tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                                     BIGTIFF="IF_SAFER", photometric="MINISBLACK")  # bands, not RGB + alpha
        if colors is not None:  # value -> RGB
            self.dataset.write_colormap(1, {value: (*map(int, rgb), 255) for value, rgb in colors.items()})
        if scale is not None:  # a GIS shows the stored levels times the scale
            self.dataset.scales = [scale] * bands
        if names is not None:
            self.dataset.descriptions = tuple(names)

    def write(self, top: int, values: np.ndarray) -> None:
        """``(bands, rows, width)`` rows starting at row ``top``."""
        self.dataset.write(values, window=Window(0, top, values.shape[2], values.shape[1]))

    def __enter__(self) -> RasterWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.dataset.close()
        cog = self.path.with_name(f".{self.path.name}.cog")
        try:
            if exc[0] is None:
                rasterio.shutil.copy(self.partial, cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256,
                                     OVERVIEW_RESAMPLING=self.overviews, BIGTIFF="IF_SAFER")
                os.replace(cog, self.path)
            else:
                remove_outputs(self.path)
        finally:
            for leftover in (self.partial, cog):
                leftover.unlink(missing_ok=True)
            self.env.__exit__(*exc)


def reproject_raster(path: Path, crs: CRS) -> None:
    """Warp a raster output to ``crs`` in place, nearest neighbour (a class stays a class, nodata stays
    nodata), keeping its colour table, band names and scales; written as a COG like the original."""
    with gdal_env(), rasterio.open(path) as src, WarpedVRT(src, crs=crs, resampling=Resampling.nearest,
                                                           nodata=src.nodata) as warped:
        colors = {value: rgba[:3] for value, rgba in src.colormap(1).items()} \
            if src.colorinterp[0] == ColorInterp.palette else None
        where = Georeference(crs, warped.transform)
        scale = src.scales[0] if src.scales[0] != 1 else None
        with RasterWriter(path, warped.height, warped.width, warped.count, where, src.nodata, colors, scale,
                          src.descriptions, "AVERAGE" if scale else "NEAREST", src.dtypes[0]) as sink:
            for top in range(0, warped.height, 256):
                sink.write(top, warped.read(window=Window(0, top, warped.width, min(256, warped.height - top))))


def class_sidecars(path: Path) -> tuple[Path, Path]:
    """The files beside a class raster that name its classes: GDAL's ``NAME.tif.aux.xml`` and QGIS's
    ``NAME.qml``."""
    return path.with_name(f"{path.name}.aux.xml"), path.with_suffix(".qml")


def remove_outputs(path: Path) -> None:
    """Remove a raster output and its sidecars (a scene that failed leaves none behind)."""
    for target in (path, *class_sidecars(path)):
        target.unlink(missing_ok=True)


def write_class_sidecars(path: Path, values: ClassValues, colors: np.ndarray) -> tuple[Path, Path]:
    """Name the classes of the class raster ``path`` for GIS software: a thematic raster attribute table and
    category names in ``NAME.tif.aux.xml`` (GDAL, ArcGIS, QGIS's attribute-table panel) and a paletted QGIS
    style ``NAME.qml`` (loaded with the layer: each class in its colour, with its name)."""
    from xml.sax.saxutils import escape, quoteattr

    aux, qml = class_sidecars(path)
    classes = list(zip(values.values, values.classes, colors, strict=True))
    columns = [("value", 0, 5), ("class", 2, 2), ("red", 0, 6), ("green", 0, 7), ("blue", 0, 8)]  # type, usage
    fields = "".join(f'<FieldDefn index="{i}"><Name>{name}</Name><Type>{kind}</Type><Usage>{usage}</Usage>'
                     f"</FieldDefn>" for i, (name, kind, usage) in enumerate(columns))
    rows = "".join(f'<Row index="{i}"><F>{value}</F><F>{escape(name)}</F>'
                   f'{"".join(f"<F>{int(c)}</F>" for c in rgb)}</Row>' for i, (value, name, rgb) in enumerate(classes))
    named = dict(zip(values.values, values.classes, strict=True))  # GDAL's category names: one per value from 0
    categories = "".join(f"<Category>{escape(named.get(v, ''))}</Category>" for v in range(max(values.values) + 1))
    aux.write_text(f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames>'
                   f'<GDALRasterAttributeTable tableType="thematic">{fields}{rows}</GDALRasterAttributeTable>'
                   f"</PAMRasterBand></PAMDataset>\n")
    entries = "".join(f'<paletteEntry value="{value}" color="#{int(r):02x}{int(g):02x}{int(b):02x}" alpha="255" '
                      f"label={quoteattr(name)}/>" for value, name, (r, g, b) in classes)
    qml.write_text("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
                   '<qgis version="3.28" styleCategories="Symbology"><pipe>'
                   '<rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1">'
                   f"<colorPalette>{entries}</colorPalette></rasterrenderer></pipe></qgis>\n")
    return aux, qml


def vector_driver(path: Path) -> str:
    """The vector driver (GPKG, GeoJSON or ESRI Shapefile) of a file, by its suffix; a one-line error for others."""
    driver = VECTOR_DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise CsptError(f"{path}: unknown vector format; use {', '.join(VECTOR_DRIVERS)}")
    return driver


def layer_options(path: Path, crs: CRS | None) -> dict[str, str]:
    """GDAL layer options of a vector output: GeoJSON of a georeferenced scene follows RFC 7946 (WGS84
    longitude/latitude, as web maps and QGIS expect); GeoPackage and shapefiles keep the scene's CRS."""
    return {"RFC7946": "YES"} if vector_driver(path) == "GeoJSON" and crs is not None else {}


def vectorize_classes(raster: Path, output: Path, classes: Sequence[str]) -> int:
    """One polygon feature per connected region of one class in a class raster written for ``classes``
    (nodata left out), in the raster's CRS, with its class (an integer where the classes are integer codes)
    and raster value; returns the number of features."""
    count = 0
    values = ClassValues.of(classes)
    named = dict(zip(values.values, values.classes, strict=True))
    with rasterio.open(raster) as src:
        schema = {"geometry": "Polygon", "properties": {"class": "int" if values.are_codes else "str",
                                                        "value": "int"}}
        if src.crs is None:
            log.warning("vectorize: %s has no CRS; its polygons in %s are in pixel coordinates (column, row)",
                        raster, output)
        if src.height > VECTOR_STRIP_ROWS:
            log.info("vectorize: %s is vectorised in strips of %d rows; regions crossing a strip edge are cut "
                     "there", raster, VECTOR_STRIP_ROWS)
        with fiona.open(output, "w", driver=vector_driver(output), crs=src.crs.to_wkt() if src.crs else None,
                        schema=schema, **layer_options(output, src.crs)) as sink:
            for top in range(0, src.height, VECTOR_STRIP_ROWS):
                window = Window(0, top, src.width, min(VECTOR_STRIP_ROWS, src.height - top))
                labels = src.read(1, window=window)
                regions = shapes(labels, mask=labels != values.nodata, connectivity=4,
                                 transform=src.window_transform(window))
                for geometry, value in regions:
                    name = named[int(value)]
                    sink.write({"geometry": geometry, "properties": {"class": int(name) if values.are_codes else name,
                                                                      "value": int(value)}})
                    count += 1
    return count


def write_boxes(output: Path, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                where: Georeference, crs: CRS | None = None) -> int:
    """Pixel boxes ``(N, 4)`` (x1, y1, x2, y2) as map-coordinate polygons with class and score, in the scene's
    CRS or reprojected to ``crs``."""
    target = crs or where.crs
    schema = {"geometry": "Polygon", "properties": {"class": "str", "score": "float"}}
    with fiona.open(output, "w", driver=vector_driver(output), crs=target.to_wkt() if target else None,
                    schema=schema, **layer_options(output, target)) as sink:
        for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True):
            xs, ys = [x1, x2, x2, x1, x1], [y1, y1, y2, y2, y1]
            polygon = {"type": "Polygon", "coordinates": [list(zip(*xy(where.transform, ys, xs, offset="ul")))]}
            if crs is not None:
                polygon = transform_geom(where.crs, crs, polygon)
            sink.write({"geometry": polygon, "properties": {"class": classes[int(label)], "score": float(score)}})
    return len(boxes)
