"""Aligned stacks: rasters of different CRS, resolution or sensor (an image, a DEM, another sensor's bands) put
on one pixel grid as one multi-band VRT that every stage reads like any raster, window by window.

The target grid is the first raster's unless a CRS or resolution is given (then the first raster's extent
reprojected to that CRS, at that resolution). Each raster is reprojected on the fly through a GDAL warped
VRT written beside the stack (``STACK_parts/``); the stack holds their bands in order, as float32 with
NaN where a raster has no data or does not reach, so a pixel any layer lacks is a pixel without data for
training, scoring and prediction alike. Build the stacks of the scenes to predict with the same options.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds

from cspt.data.images import gdal_env, open_raster
from cspt.data.vector_labels import SceneGrid, scene_grid
from cspt.errors import CsptError

RESAMPLINGS = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "cubic": Resampling.cubic}


def target_grid(first: Path, crs: str | None = None, resolution: float | None = None) -> SceneGrid:
    """The stack's grid: ``first``'s own, or its extent in ``crs`` at ``resolution`` (map units of that CRS)."""
    grid = scene_grid(first)
    if grid.crs is None:
        raise CsptError(f"{first}: has no CRS, so other rasters cannot be put on its grid")
    if crs is None and resolution is None:
        return grid
    try:
        target = CRS.from_user_input(crs) if crs else grid.crs
    except Exception:
        raise CsptError(f"--target-crs {crs}: not a CRS rasterio knows (try EPSG:32633)") from None
    if resolution is not None and resolution <= 0:
        raise CsptError(f"--target-res {resolution}: must be positive")
    transform, width, height = calculate_default_transform(grid.crs, target, grid.width, grid.height,
                                                           *grid.bounds, resolution=resolution)
    return SceneGrid(target, transform, height, width, BoundingBox(*array_bounds(height, width, transform)))


def write_stack(rasters: Sequence[str | Path], output: str | Path, crs: str | None = None,
                resolution: float | None = None, resampling: str = "bilinear") -> Path:
    """Write the aligned stack of ``rasters`` as the VRT ``output`` (see the module's docstring); returns it."""
    paths = [Path(r) if str(r).startswith("/vsi") else Path(r).resolve() for r in rasters]  # found from anywhere
    output = Path(output)
    if output.suffix.lower() != ".vrt":
        raise CsptError(f"{output}: a stack is a VRT file; name it NAME.vrt")
    if resampling not in RESAMPLINGS:
        raise CsptError(f"--resampling {resampling}: choose one of {', '.join(RESAMPLINGS)}")
    grid = target_grid(paths[0], crs, resolution)
    parts = output.parent / f"{output.stem}_parts"
    parts.mkdir(parents=True, exist_ok=True)
    bands = []
    for number, path in enumerate(paths):
        part = parts / f"{number:02d}_{path.stem}.warp"  # a VRT GDAL opens by its content; not an image to list
        bands += [(part, band, f"{path.name}:{band}") for band in warp_to(path, grid, part, RESAMPLINGS[resampling])]
    output.write_text(stack_xml(grid, bands, output.parent))
    return output


def warp_to(path: Path, grid: SceneGrid, target: Path, resampling: Resampling) -> list[int]:
    """``path`` reprojected onto ``grid`` as a float32 warped VRT at ``target``, NaN where it has no data (its
    nodata, or its alpha band's transparent pixels) or does not reach; returns its data bands (an alpha band is a
    mask, not data). A raster without a CRS, or not overlapping the grid, is refused."""
    try:
        with open_raster(path) as src:
            if src.crs is None:
                raise CsptError(f"{path}: has no CRS, so it cannot be put on the stack's grid")
            west, south, east, north = transform_bounds(src.crs, grid.crs, *src.bounds)
            if west >= grid.bounds.right or east <= grid.bounds.left or south >= grid.bounds.top or \
                    north <= grid.bounds.bottom:
                raise CsptError(f"{path}: does not overlap the stack's grid (its first raster's extent)")
            alpha = [band for band in range(1, src.count + 1) if src.colorinterp[band - 1] == ColorInterp.alpha]
            with gdal_env(), WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                       height=grid.height, resampling=resampling, dtype="float32",
                                       src_nodata=src.nodata, nodata=float("nan"),
                                       src_alpha=alpha[0] if alpha else 0,
                                       UNIFIED_SRC_NODATA="NO") as warped:  # a band's nodata is its own
                rasterio.shutil.copy(warped, target, driver="VRT")
            return [band for band in range(1, src.count + 1) if band not in alpha]
    except CsptError:
        raise
    except Exception as err:  # GDAL: missing, not a raster, corrupt
        raise CsptError(f"{path}: cannot be read as a raster ({str(err).splitlines()[0] if str(err) else err})") \
            from None


def stack_xml(grid: SceneGrid, bands: Sequence[tuple[Path, int, str]], folder: Path) -> str:
    """The VRT of a stack: every ``(part, band, name)`` as a float32 band with NaN as nodata, on ``grid``."""
    transform: Affine = grid.transform
    geo = ", ".join(repr(v) for v in (transform.c, transform.a, transform.b, transform.f, transform.d, transform.e))
    size = f'xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"'
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">',
             f"  <SRS>{escape(grid.crs.to_wkt())}</SRS>", f"  <GeoTransform>{geo}</GeoTransform>"]
    for number, (part, band, name) in enumerate(bands, 1):
        lines += [f'  <VRTRasterBand dataType="Float32" band="{number}">', f"    <Description>{escape(name)}"
                  "</Description>", "    <NoDataValue>nan</NoDataValue>", "    <SimpleSource>",
                  f'      <SourceFilename relativeToVRT="1">{escape(str(part.relative_to(folder)))}</SourceFilename>',
                  f"      <SourceBand>{band}</SourceBand>", f"      <SrcRect {size}/>", f"      <DstRect {size}/>",
                  "    </SimpleSource>", "  </VRTRasterBand>"]
    return "\n".join(lines + ["</VRTDataset>", ""])
