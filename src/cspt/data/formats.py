"""File suffixes of the image formats cspt reads (shared by the finders, readers and shard writer)."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".vrt"}
TIFF_SUFFIXES = {".tif", ".tiff"}
#: formats GDAL (rasterio) reads: georeferenced rasters and their virtual mosaics
RASTER_SUFFIXES = TIFF_SUFFIXES | {".vrt"}
