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
from rasterio.features import shapes
from rasterio.transform import xy
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


class RasterWriter:
    """A Cloud-Optimised GeoTIFF of uint8 bands written in strips of full-width rows.

    The rows go to a hidden tiled GeoTIFF beside ``path``; leaving the ``with`` block cleanly
    turns it into a COG (overviews resampled with ``overviews``) and moves that into place in one
    step. Leaving it with an error removes the partial file and whatever ``path`` held, so a
    scene that failed leaves no output that looks like a result.
    """

    def __init__(self, path: Path, height: int, width: int, bands: int, where: Georeference,
                 nodata: int | None = None, colors: np.ndarray | None = None, scale: float | None = None,
                 names: Sequence[str] | None = None, overviews: str = "NEAREST"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.overviews = path, overviews
        self.partial = path.with_name(f".{path.name}.partial")
        self.env = gdal_env()
        self.env.__enter__()
        self.dataset = rasterio.open(self.partial, "w", driver="GTiff", height=height, width=width, count=bands,
                                     dtype="uint8", crs=where.crs, transform=where.transform, nodata=nodata,
                                     tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                                     BIGTIFF="IF_SAFER")
        if colors is not None:
            self.dataset.write_colormap(1, {i: (*map(int, rgb), 255) for i, rgb in enumerate(colors)})
        if scale is not None:  # a GIS shows the stored levels times the scale
            self.dataset.scales = [scale] * bands
        if names is not None:
            self.dataset.descriptions = tuple(names)

    def write(self, top: int, values: np.ndarray) -> None:
        """``(bands, rows, width)`` uint8 rows starting at row ``top``."""
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


def class_sidecars(path: Path) -> tuple[Path, Path]:
    """The files beside a class raster that name its classes: GDAL's ``NAME.tif.aux.xml`` and QGIS's
    ``NAME.qml``."""
    return path.with_name(f"{path.name}.aux.xml"), path.with_suffix(".qml")


def remove_outputs(path: Path) -> None:
    """Remove a raster output and its sidecars (a scene that failed leaves none behind)."""
    for target in (path, *class_sidecars(path)):
        target.unlink(missing_ok=True)


def write_class_sidecars(path: Path, classes: Sequence[str], colors: np.ndarray) -> tuple[Path, Path]:
    """Name the classes of the class raster ``path`` (values 0..N-1) for GIS software: a thematic raster
    attribute table and category names in ``NAME.tif.aux.xml`` (GDAL, ArcGIS, QGIS's attribute-table panel)
    and a paletted QGIS style ``NAME.qml`` (loaded with the layer: each class in its colour, with its name)."""
    from xml.sax.saxutils import escape, quoteattr

    aux, qml = class_sidecars(path)
    columns = [("value", 0, 5), ("class", 2, 2), ("red", 0, 6), ("green", 0, 7), ("blue", 0, 8)]  # type, usage
    fields = "".join(f'<FieldDefn index="{i}"><Name>{name}</Name><Type>{kind}</Type><Usage>{usage}</Usage>'
                     f"</FieldDefn>" for i, (name, kind, usage) in enumerate(columns))
    rows = "".join(f'<Row index="{i}"><F>{i}</F><F>{escape(name)}</F>{"".join(f"<F>{int(c)}</F>" for c in rgb)}'
                   f"</Row>" for i, (name, rgb) in enumerate(zip(classes, colors, strict=True)))
    categories = "".join(f"<Category>{escape(name)}</Category>" for name in classes)
    aux.write_text(f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames>'
                   f'<GDALRasterAttributeTable tableType="thematic">{fields}{rows}</GDALRasterAttributeTable>'
                   f"</PAMRasterBand></PAMDataset>\n")
    entries = "".join(f'<paletteEntry value="{i}" color="#{int(r):02x}{int(g):02x}{int(b):02x}" alpha="255" '
                      f"label={quoteattr(name)}/>" for i, (name, (r, g, b)) in enumerate(zip(classes, colors,
                                                                                           strict=True)))
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
    """One polygon feature per connected region of one class in a class raster (``NO_CLASS`` left out),
    in the raster's CRS; returns the number of features."""
    count = 0
    with rasterio.open(raster) as src:
        schema = {"geometry": "Polygon", "properties": {"class": "str", "class_index": "int"}}
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
                regions = shapes(labels, mask=labels != NO_CLASS, connectivity=4,
                                 transform=src.window_transform(window))
                for geometry, value in regions:
                    index = int(value)
                    sink.write({"geometry": geometry, "properties": {"class": classes[index], "class_index": index}})
                    count += 1
    return count


def write_boxes(output: Path, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, classes: Sequence[str],
                where: Georeference) -> int:
    """Pixel boxes ``(N, 4)`` (x1, y1, x2, y2) as map-coordinate polygons with class and score."""
    schema = {"geometry": "Polygon", "properties": {"class": "str", "score": "float"}}
    with fiona.open(output, "w", driver=vector_driver(output), crs=where.crs.to_wkt() if where.crs else None,
                    schema=schema, **layer_options(output, where.crs)) as sink:
        for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True):
            xs, ys = [x1, x2, x2, x1, x1], [y1, y1, y2, y2, y1]
            ring = list(zip(*xy(where.transform, ys, xs, offset="ul")))
            sink.write({"geometry": {"type": "Polygon", "coordinates": [ring]},
                        "properties": {"class": classes[int(label)], "score": float(score)}})
    return len(boxes)
