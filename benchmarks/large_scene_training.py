"""Training a segmenter on scenes far larger than memory: peak memory as the scene grows, and samples per second.

For each size (default 15,000 and 30,000 px a side), makes the scene of ``scene_inference.py``
(a uint16 GeoTIFF tiled from a real Dubai tile, UTM 40N, written strip by strip) and vector
labels over it (a GeoPackage of 250 x 250 squares, each a third of its spacing wide: as many
squares whatever the size, so that only the pixels grow; one class beside the background),
then runs, in its own process so that its peak RSS is its own:

    cspt finetune segment --scenes SCENE --labels SQUARES --background ground --class-names building
        --split blocks --block-size 512 --val-fraction 0.01 --windows-per-epoch N ...

(a tiny segmenter: the labels burnt onto the scene's grid strip by strip, every mask checked
strip by strip, crops read window by window, the validation blocks scored strip by strip).
Prints the wall time, the training samples per second, the peak RSS of each size and their
ratio. Usage:
    python benchmarks/large_scene_training.py [--sizes 15000 30000] [--windows 512] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import fiona
from scene_inference import make_scene, measured  # the same scene as the inference benchmark

ORIGIN, RESOLUTION = (300000.0, 2800000.0), 0.5  #: where make_scene puts the scene (UTM 40N, 0.5 m)
SQUARES_PER_SIDE = 250  #: the labelled squares along each side of a scene


def write_squares(path: Path, size: int) -> int:
    """A GeoPackage of :data:`SQUARES_PER_SIDE` x :data:`SQUARES_PER_SIDE` squares over a ``size`` px scene;
    returns how many."""
    spacing = size * RESOLUTION / SQUARES_PER_SIDE
    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    with fiona.open(path, "w", driver="GPKG", crs="EPSG:32640", schema=schema) as sink:
        for i in range(SQUARES_PER_SIDE):
            for j in range(SQUARES_PER_SIDE):
                x0, y0 = ORIGIN[0] + (i + 1 / 3) * spacing, ORIGIN[1] - (j + 1 / 3) * spacing
                side = spacing / 3
                ring = [(x0, y0), (x0 + side, y0), (x0 + side, y0 - side), (x0, y0 - side), (x0, y0)]
                sink.write({"geometry": {"type": "Polygon", "coordinates": [ring]},
                            "properties": {"class": "building"}})
    return SQUARES_PER_SIDE**2


def training_speed(run: Path) -> float:
    """Training crops per second, as the run's log measured them between its records."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    speeds = [r["img_per_s"] for r in records if "img_per_s" in r]
    return sum(speeds) / len(speeds) if speeds else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[15000, 30000], help="scene sides in pixels")
    parser.add_argument("--windows", type=int, default=512, help="training crops (one epoch)")
    parser.add_argument("--work", help="folder for scenes and runs (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cspt_large_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        scene, squares, run = work / f"scene_{size}px.tif", work / f"squares_{size}px.gpkg", work / f"run_{size}"
        if not scene.is_file():
            start = time.perf_counter()
            make_scene(scene, size)
            print(f"made {scene} in {time.perf_counter() - start:.0f} s", flush=True)
        shutil.rmtree(run, ignore_errors=True)
        if not squares.is_file():
            print(f"{squares}: {write_squares(squares, size)} squares", flush=True)
        seconds, peak = measured([
            sys.executable, "-m", "cspt", "finetune", "segment", "--scenes", str(scene), "--labels", str(squares),
            "--background", "ground", "--class-names", "building", "--split", "blocks", "--block-size", "512",
            "--val-fraction", "0.01", "--windows-per-epoch", str(args.windows), "--epochs", "1",
            "--batch-size", "8", "--crop-size", "64", "--resize", "0.5", "--embed-dim", "64", "--depth", "2",
            "--num-heads", "2", "--patch-size", "8", "--channels", "32", "--aux-channels", "0",
            "--num-workers", "0", "--device", "cpu", "--warmup-epochs", "0", "--log-every", "8",
            "--output", str(run)])
        miou = json.loads((run / "metrics.json").read_text())["miou"]
        rows.append((size, seconds, training_speed(run), peak, miou))
        print(f"{size} px: {seconds:.0f} s, {rows[-1][2]:.1f} training samples/s, peak RSS {peak:.2f} GiB, "
              f"validation mIoU {miou:.3f}", flush=True)

    print("\n| scene (px) | Mpx | wall seconds | training samples/s | peak RSS (GiB) | validation mIoU |")
    print("|---|---|---|---|---|---|")
    for size, seconds, speed, peak, miou in rows:
        print(f"| {size:,} x {size:,} | {size * size / 1e6:.0f} | {seconds:.0f} | {speed:.1f} | {peak:.2f} | "
              f"{miou:.3f} |")
    smallest, largest = rows[0], rows[-1]
    ratio = largest[3] / smallest[3]
    print(f"\npeak RSS {largest[0]:,} px / {smallest[0]:,} px: {ratio:.2f} for {(largest[0] / smallest[0]) ** 2:.0f}x "
          f"the pixels ({'within' if abs(ratio - 1) <= 0.1 else 'OUTSIDE'} the 10% goal)")


if __name__ == "__main__":
    main()
