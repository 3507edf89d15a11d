"""Shared test fixtures: the real data in ../shared, tiny architectures, made-up images."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cspt.data.pixels import PixelContract
from cspt.models import ArchConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CSPT_SHARED", ROOT.parent / "shared"))
RSSCN7 = SHARED / "data" / "rsscn7"
NATURAL_MAE = SHARED / "weights" / "mae_vit_tiny_p8_64_tinyimagenet.pth"
TINY_IMAGENET = SHARED / "data" / "tiny-imagenet-val"

TINY_ARCH = ArchConfig(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=32, decoder_dim=32,
                       decoder_depth=1, decoder_num_heads=2)
#: command-line flags for the same tiny architecture
TINY_ENCODER_FLAGS = ["--embed-dim", "64", "--depth", "2", "--num-heads", "2", "--patch-size", "8"]
TINY_FLAGS = [*TINY_ENCODER_FLAGS, "--img-size", "32", "--decoder-dim", "32", "--decoder-depth", "1",
              "--decoder-num-heads", "2"]


#: the deepforest wheel (NEON aerial scenes with tree-crown boxes); the README's set-up downloads it
DEEPFOREST_WHEEL = Path(os.environ.get("CSPT_DEEPFOREST_WHEEL",
                                       ROOT / ".cache" / "wheels" / "deepforest-2.1.0-py3-none-any.whl"))


#: the solaris wheel (real GeoTIFFs: Landsat with nodata, WorldView multispectral, SAR, SpaceNet); the README's
#: set-up downloads it
SOLARIS_WHEEL = Path(os.environ.get("CSPT_SOLARIS_WHEEL",
                                    ROOT / ".cache" / "wheels" / "solaris-0.4.0-py3-none-any.whl"))


def unpack_wheel_data(wheel: Path, folder: str, suffixes: tuple[str, ...], target: Path, flat: bool) -> Path:
    """The files of ``folder`` in a wheel ending in ``suffixes``, written under ``target`` (``flat``: without
    their sub-folders), read without importing the package."""
    with zipfile.ZipFile(needs(wheel)) as archive:
        for name in archive.namelist():
            if name.startswith(folder) and name.endswith(suffixes):
                path = target / (Path(name).name if flat else name.removeprefix(folder))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(name))
    return target


@pytest.fixture(scope="session")
def solaris(tmp_path_factory) -> Path:
    """The ``solaris/data`` folder of the wheel (its rasters and vectors, read without importing solaris)."""
    return unpack_wheel_data(SOLARIS_WHEEL, "solaris/data/", (".tif", ".geojson", ".json"),
                             tmp_path_factory.mktemp("solaris"), flat=False)


def neutral_contract(bands: int = 3, **fields) -> PixelContract:
    """A pixel contract normalising every band with 0.5 / 0.25 (the dtype scale unless ``fields`` say)."""
    return PixelContract((0.5,) * bands, (0.25,) * bands, **fields)


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set CSPT_SHARED)")
    return path


@pytest.fixture
def rsscn7() -> Path:
    return needs(RSSCN7)


@pytest.fixture(scope="session")
def neon(tmp_path_factory) -> Path:
    """The ``deepforest/data`` folder of the wheel: NEON PNG/TIF scenes with VOC XML and CSV boxes."""
    return unpack_wheel_data(DEEPFOREST_WHEEL, "deepforest/data/", (".png", ".tif", ".xml", ".csv"),
                             tmp_path_factory.mktemp("neon"), flat=True)


@pytest.fixture
def natural_mae() -> Path:
    return needs(NATURAL_MAE)


@pytest.fixture
def rsscn7_list(rsscn7: Path, tmp_path: Path):
    """Write a text list of ``n`` RSSCN7 images, spread over the classes (seeded)."""

    def make(n: int, seed: int = 0) -> Path:
        files = sorted(rsscn7.rglob("*.jpg"))
        chosen = random.Random(seed).sample(files, n)
        path = tmp_path / f"rsscn7_{n}_{seed}.txt"
        path.write_text("\n".join(str(f) for f in chosen) + "\n")
        return path

    return make


@pytest.fixture
def rsscn7_csv(rsscn7: Path, tmp_path: Path):
    """Write a ``path,label`` CSV of ``per_class`` seeded RSSCN7 images of every class."""

    def make(per_class: int, seed: int = 0) -> Path:
        rows = ["path,label"]
        for folder in sorted(p for p in rsscn7.iterdir() if p.is_dir()):
            files = sorted(folder.glob("*.jpg"))
            rows += [f"{f},{folder.name}" for f in random.Random(seed).sample(files, per_class)]
        path = tmp_path / f"rsscn7_{per_class}x7_{seed}.csv"
        path.write_text("\n".join(rows) + "\n")
        return path

    return make


#: fine-tuning flags without the heavy regularisation, so a few dozen CPU steps learn something
PLAIN_FINETUNE = {"mixup": 0.0, "cutmix": 0.0, "rand_augment": None, "reprob": 0.0, "smoothing": 0.0,
                  "layer_decay": 1.0, "drop_path": 0.0}


def write_rgb(path: Path, size: int = 48, seed: int = 0) -> Path:
    """A textured RGB JPEG/PNG made by the test."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((size, size), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m cspt ARGS`` in a subprocess (as a user would run it)."""
    return subprocess.run([sys.executable, "-m", "cspt", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


#: where the test scenes lie on the map: UTM zone 40N (Dubai), 0.5 m pixels
TEST_CRS = "EPSG:32640"
TEST_ORIGIN = (300000.0, 2800000.0)


def write_geotiff(path: Path, pixels: np.ndarray, nodata: float | None = None, crs: str = TEST_CRS,
                  resolution: float = 0.5, photometric: str = "MINISBLACK") -> Path:
    """A tiled, compressed GeoTIFF of ``(bands, H, W)`` pixels, georeferenced at :data:`TEST_ORIGIN` (every band
    spectral, as multispectral products are written; ``photometric="RGB"`` makes a fourth byte band alpha)."""
    import rasterio
    from affine import Affine

    bands, height, width = pixels.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=bands, dtype=pixels.dtype,
                       crs=crs, transform=Affine(resolution, 0, TEST_ORIGIN[0], 0, -resolution, TEST_ORIGIN[1]),
                       nodata=nodata, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                       photometric=photometric) as dst:
        dst.write(pixels)
    return path


def eleven_bit_scene(source: Path, path: Path, size: int = 900, border: int = 0) -> Path:
    """A single-band uint16 scene whose values stay below 2048 (as 11-bit WorldView data), made from a real
    RGB image; with ``border``, a nodata (0) frame that wide."""
    grey = np.asarray(Image.open(source).convert("L").resize((size, size), Image.BICUBIC)).astype(np.uint16)
    pixels = grey * 8 + 1  # 1..2041: 0 stays free for nodata
    if border:
        pixels[:border], pixels[-border:], pixels[:, :border], pixels[:, -border:] = 0, 0, 0, 0
    return write_geotiff(path, pixels[None], nodata=0 if border else None)
