"""Write the small rasters the default tests read, as TorchGeo keeps its test data: run it to regenerate
``tests/data/rasters/`` (``python tests/data/generate.py``); ``tests/test_data_files.py`` checks the committed
files are what it writes.

Each file is one kind of raster users bring, 64 x 64 pixels, made from a seeded smooth
random field (``KINDS`` names them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

FOLDER = Path(__file__).resolve().parent / "rasters"
SIZE = 64
CRS = "EPSG:32640"
TRANSFORM = Affine(0.5, 0, 300000.0, 0, -0.5, 2800000.0)


def smooth_field(bands: int, seed: int) -> np.ndarray:
    """``(bands, SIZE, SIZE)`` smooth random values in 0-1 (a stand-in for real texture)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, bands, 6, 6, generator=generator, dtype=torch.float64)
    fine = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0]
    return fine.clamp(0, 1).numpy()


def float32_dn() -> tuple[np.ndarray, float | None]:
    """3 bands of float32 digital numbers 0-2047 (what a WorldView product in float looks like)."""
    return (smooth_field(3, 0) * 2047).astype(np.float32), None


def float64_dn() -> tuple[np.ndarray, float | None]:
    """The same in float64 (solaris's WorldView tiles are float64)."""
    return smooth_field(3, 1) * 2047, None


def uint16_11bit() -> tuple[np.ndarray, float | None]:
    """3 bands of 11-bit data in uint16, 1-2047."""
    return (smooth_field(3, 2) * 2046 + 1).astype(np.uint16), None


def int16_border() -> tuple[np.ndarray, float | None]:
    """1 band of int16 with -9999 borders (a Landsat product), nodata -9999."""
    pixels = (smooth_field(1, 3) * 3000 + 200).astype(np.int16)
    pixels[:, :, :20] = -9999
    pixels[:, -8:, :] = -9999
    return pixels, -9999.0


def float32_nan() -> tuple[np.ndarray, float | None]:
    """4 bands of float32 decibels with NaN outside the swath (SAR)."""
    pixels = (smooth_field(4, 4) * 40 - 25).astype(np.float32)
    pixels[:, 40:, 30:] = np.nan
    return pixels, None


KINDS = {"float32 DN 0-2047": ("float32_dn.tif", float32_dn),
         "float64 DN 0-2047": ("float64_dn.tif", float64_dn),
         "11-bit uint16": ("uint16_11bit.tif", uint16_11bit),
         "int16 with -9999 borders": ("int16_border.tif", int16_border),
         "float32 with NaN, 4 bands": ("float32_nan.tif", float32_nan)}


def write(path: Path, pixels: np.ndarray, nodata: float | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=SIZE, width=SIZE, count=len(pixels), dtype=pixels.dtype,
                       crs=CRS, transform=TRANSFORM, nodata=nodata, photometric="MINISBLACK",
                       compress="deflate") as dst:
        dst.write(pixels)
    return path


def generate(folder: Path = FOLDER) -> list[Path]:
    return [write(folder / name, *make()) for name, make in KINDS.values()]


if __name__ == "__main__":
    for written in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        print(written)
