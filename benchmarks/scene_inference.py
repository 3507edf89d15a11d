"""Streaming scene inference: peak memory and speed of ``cspt predict segment`` on a scene far larger
than memory, against a plain whole-image pass on a scene that fits.

Makes a uint16 GeoTIFF (default 30,000 x 30,000 px, 11-bit values, UTM 40N) strip by strip
from a real Dubai tile, never whole in memory; trains (or takes, ``--checkpoint``) a tiny
segmenter; then runs, each in its own process so its peak RSS is its own:

- ``cspt predict segment`` on the big scene (streamed, blended windows, GeoTIFF out);
- the same command on a small scene (default 3,000 px);
- a plain pass on that small scene: read whole, predict whole in memory (the old path).

Prints peak RSS and megapixels per second of each and the ratios. Usage:
    python benchmarks/scene_inference.py [--size 30000] [--small 3000] [--work DIR] [--checkpoint RUN]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CSPT_SHARED", ROOT.parent / "shared"))
SOURCE = SHARED / "data" / "dubai" / "tile_1" / "images" / "image_part_002.jpg"
STRIP_ROWS = 1024

PLAIN_PASS = """
import sys, numpy as np, torch
from cspt.engine.streaming import blended_logits
from cspt.tasks.segment import load_segmenter, source_window, window_forward
described = load_segmenter(sys.argv[1])
model, info, _ = described
contract = described.contract()
image = contract.normalise(contract.read(sys.argv[2]))
forward = window_forward(model, info.crop_size, info.resize, torch.device("cpu"))
labels = blended_logits(forward, image, *source_window(info)).argmax(0).to(torch.uint8)
np.save(sys.argv[3], labels.numpy())
"""


def make_scene(path: Path, size: int) -> Path:
    """A single-band uint16 GeoTIFF (values below 2048) tiled from a real image, written strip by strip."""
    grey = np.asarray(Image.open(SOURCE).convert("L")).astype(np.uint16) * 8 + 1
    height, width = grey.shape
    profile = dict(driver="GTiff", height=size, width=size, count=1, dtype="uint16", crs="EPSG:32640",
                   transform=Affine(0.5, 0, 300000.0, 0, -0.5, 2800000.0), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", predictor=2, BIGTIFF="YES")
    columns = np.arange(size) % width
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, STRIP_ROWS):
            rows = np.arange(top, min(size, top + STRIP_ROWS)) % height
            strip = grey[rows[:, None], columns[None, :]]
            dst.write(strip[None], window=rasterio.windows.Window(0, top, size, len(rows)))
    return path


def scene_file(work: Path, size: int) -> Path:
    return work / f"scene_{size}px.tif"


def measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of ``command`` run in a fresh process."""
    probe = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
             "code = subprocess.run(sys.argv[1:]).returncode; "
             "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    seconds, peak_kib, code = result.stdout.split()[-3:]
    if int(code) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return float(seconds), int(peak_kib) / 2**20


def train_tiny_segmenter(folder: Path) -> Path:
    run = folder / "segmenter"
    if not (run / "segmenter.safetensors").is_file():
        subprocess.run([sys.executable, "-m", "cspt", "finetune", "segment", "--images",
                        str(SHARED / "data" / "dubai" / "tile_1"), "--palette", "dubai", "--output", str(run),
                        "--epochs", "1", "--batch-size", "4", "--embed-dim", "64", "--depth", "2", "--num-heads", "2",
                        "--patch-size", "8", "--crop-size", "64", "--resize", "0.25", "--channels", "32",
                        "--aux-channels", "16", "--num-workers", "0", "--device", "cpu"], check=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=30000, help="side of the big scene in pixels")
    parser.add_argument("--small", type=int, default=3000, help="side of the scene that fits in memory")
    parser.add_argument("--work", help="folder for scenes and outputs (default: a temporary one)")
    parser.add_argument("--checkpoint", help="a segmentation run (default: train a tiny one on a Dubai tile)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cspt_scene_"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else train_tiny_segmenter(work)
    rows = []
    for size in (args.size, args.small):
        scene = scene_file(work, size)
        if not scene.is_file():  # a scene made by an earlier run is reused only at the same size
            start = time.perf_counter()
            make_scene(scene, size)
            print(f"made {scene} ({size} x {size} uint16, {scene.stat().st_size / 2**30:.2f} GiB on disk) "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)
        seconds, peak = measured([sys.executable, "-m", "cspt", "predict", "segment", "--checkpoint",
                                  str(checkpoint), "--images", str(scene), "--output", str(work / f"out_{size}"),
                                  "--batch-size", str(args.batch_size), "--device", "cpu"])
        rows.append((f"streamed, {size} px", size * size / 1e6, seconds, peak))
        print(f"{rows[-1][0]}: {seconds:.0f} s, peak RSS {peak:.2f} GiB", flush=True)
    small = scene_file(work, args.small)
    seconds, peak = measured([sys.executable, "-c", PLAIN_PASS, str(checkpoint), str(small), str(work / "plain.npy")])
    rows.append((f"whole image in memory, {args.small} px", args.small**2 / 1e6, seconds, peak))
    streamed = rasterio.open(work / f"out_{args.small}" / small.name).read(1)
    agreement = float(np.mean(streamed == np.load(work / "plain.npy")))

    print("\n| pass | Mpx | seconds | Mpx/s | peak RSS (GiB) |\n|---|---|---|---|---|")
    for name, mpx, secs, rss in rows:
        print(f"| {name} | {mpx:.0f} | {secs:.0f} | {mpx / secs:.2f} | {rss:.2f} |")
    big, small_streamed, plain = rows
    speed = (small_streamed[1] / small_streamed[2]) / (plain[1] / plain[2])
    verdict = "under" if big[3] < 3 else "OVER"
    print(f"\nstreamed / whole-image speed on the small scene: {speed:.2f}; big-scene peak RSS {big[3]:.2f} GiB "
          f"({verdict} the 3 GiB goal) for "
          f"{big[1] / small_streamed[1]:.0f}x the pixels of the small scene; the two small-scene maps agree on "
          f"{agreement:.4f} of the pixels")


if __name__ == "__main__":
    main()
