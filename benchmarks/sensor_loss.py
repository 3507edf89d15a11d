"""Does consecutive pretraining from the RGB MAE lower the MAE loss on SAR, Landsat and WorldView rasters? Seeds,
spread and the scale it is measured at.

Data: the real rasters of the solaris 0.4.0 wheel, read without installing it: SAR in decibels with NaN
(``preproc_tutorial/sar_masked.tif``, HH/HV/VH/VV, 200 x 200 px), single-look complex SAR
(``preproc_tutorial/sar_vv.tif``, read as amplitude in decibels, as it is and after a 3x3 and a 5x5 boxcar
mean of its intensity, ``--despeckle``), the Landsat-5 scene (int16 with a -9999
border, 2846 x 4627 px) and two WorldView 4-band tiles (``preproc_tutorial/ms1.tif``, ``ms2.tif``, float64 DN). Each
case
pretrains the natural-image tiny MAE (``cspt:mae-tiny-tinyimagenet``, grown to the rasters' bands) with
``configs/pretrain/tiny_cpu.yaml`` and the slow sensor test's budget (3 epochs of 16 steps of 16 crops, blr
1.5e-3, no warm-up), one run per seed, and reads pretraining's own MAE loss on the rasters' fixed windows
(``heldout.json``; the rasters are their own ``--eval-data``) before training and after.

The windows are half the largest crop training takes (``cspt.tasks.pretrain.fixed_crops``): from a tile of a
scene larger than twice ``tile_size``, else from the whole image; a 200 px SAR image has four, each measured
under 8 fixed masks (``with_mask_draws``: 16 windows or fewer get 32 // windows masks each). The Landsat
scene runs at two tile sizes: 128 px (crops of 57-128 px resized to the model's 64 px: at most 2x) and 256 px
(the default: shrunk 1.8-4x).

Prints per case the loss before, after (mean ± std over seeds) and the change with its 95% interval. With
``--scales``, the 200 px SAR rasters also on a dense grid of windows of 100, 150 and 200 px (half the largest
training crop to the whole image) under 8 mask draws, before (the grown MAE, from a run at lr 0) and after.
Usage (about 3 min alone on 2 cores; the 240-step SAR runs with ``--scales`` about 8 min):

    python benchmarks/sensor_loss.py [--seeds 0 1 2] [--epochs 3] [--work DIR]
    python benchmarks/sensor_loss.py --epochs 15 --scales --cases sar_db_with_nan sar_complex \
        sar_complex_despeckle_3 sar_complex_despeckle_5
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mae_loss_by_scene import load_mae, loss_over_mask_draws  # noqa: E402
from paired import paired_interval  # noqa: E402

from cspt.config import PretrainConfig, build_config, read_yaml  # noqa: E402
from cspt.data.windows import window_starts  # noqa: E402
from cspt.report import mean_and_spread  # noqa: E402
from cspt.tasks.pretrain import pretrain  # noqa: E402

WHEEL = ROOT / ".cache" / "wheels" / "solaris-0.4.0-py3-none-any.whl"
RECIPE = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
LANDSAT = "nebraska_landsat5_with_nodata_wgs84.tif"
#: single-look complex VV read as amplitude in decibels
SLC_VV = {"in_chans": 1, "band_names": ["VV"], "wavelengths": [55465.0], "decibels": "amplitude"}
#: case: (the wheel's rasters under solaris/data, the flags that say what their bands are, the tile size)
CASES = {
    "sar_db_with_nan": (["preproc_tutorial/sar_masked.tif"], {"sensor": "sar-quad"}, 256),
    "sar_complex": (["preproc_tutorial/sar_vv.tif"], SLC_VV, 256),
    "sar_complex_despeckle_3": (["preproc_tutorial/sar_vv.tif"], {**SLC_VV, "despeckle": 3}, 256),
    "sar_complex_despeckle_5": (["preproc_tutorial/sar_vv.tif"], {**SLC_VV, "despeckle": 5}, 256),
    "landsat_tile_128": ([LANDSAT], {"in_chans": 1}, 128),
    "landsat_tile_256": ([LANDSAT], {"in_chans": 1}, 256),
    "worldview_ms": (["preproc_tutorial/ms1.tif", "preproc_tutorial/ms2.tif"], {"sensor": "worldview3-4band"}, 256),
}
#: the windows ``--scales`` measures the 200 px SAR rasters on: half the whole image (the held-out windows) to all of it
SCALE_WINDOWS = (100, 150, 200)
SCALE_CASES = ("sar_db_with_nan", "sar_complex", "sar_complex_despeckle_3", "sar_complex_despeckle_5")
#: one step at lr 0: the natural MAE as pretraining grows it to the rasters' bands, unchanged
UNTRAINED = {"blr": 0.0, "samples_per_epoch": 16}
MASK_DRAWS = 8
BUDGET = {"batch_size": 16, "samples_per_epoch": 256, "blr": 1.5e-3, "warmup_epochs": 0, "num_workers": 0,
          "device": "cpu"}


def unpack(raster: str, folder: Path) -> Path:
    """The wheel's ``solaris/data/RASTER`` written under ``folder``."""
    path = folder / Path(raster).name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(WHEEL) as wheel:
            path.with_suffix(".part").write_bytes(wheel.read(f"solaris/data/{raster}"))
        path.with_suffix(".part").replace(path)
    return path


def trained(case: str, seed: int, epochs: int, work: Path, budget: dict | None = None) -> Path:
    """The run directory of one seeded run (a finished one of the same settings in ``work`` is reused)."""
    rasters, flags, tile = CASES[case]
    paths = [str(unpack(raster, work / "rasters")) for raster in rasters]
    output = work / f"{case}_e{epochs}_s{seed}" if budget is None else work / f"{case}_untrained"
    overrides = {"data": paths, "eval_data": paths, "output": str(output), "seed": seed,
                 "init": "cspt:mae-tiny-tinyimagenet", "epochs": epochs, "vis_every": epochs, "tile_size": tile,
                 **BUDGET, **(budget or {}), **flags}
    saved = output / "config.yaml"
    if saved.is_file() and any(read_yaml(saved).get(k) != v for k, v in overrides.items()):
        shutil.rmtree(output)  # a run of other settings (an unfinished one of these settings is continued)
    heldout = output / "heldout.json"
    if not (heldout.is_file() and json.loads(heldout.read_text())[-1]["epoch"] == epochs):
        pretrain(build_config(PretrainConfig, RECIPE, overrides))
    return output


def run_case(case: str, seed: int, epochs: int, work: Path) -> tuple[float, float]:
    """One seeded run: the MAE loss on the rasters' windows before and after (``heldout.json``)."""
    losses = json.loads((trained(case, seed, epochs, work) / "heldout.json").read_text())
    return losses[0]["mae_loss"], losses[-1]["mae_loss"]


def window_losses(checkpoint: Path, raster: Path, sizes: Sequence[int]) -> list[float]:
    """The MAE loss of ``checkpoint`` on windows of each of ``sizes`` px (a grid at a quarter-window stride over
    the whole raster) resized to the model's input, averaged over ``MASK_DRAWS`` fixed mask draws."""
    model, contract = load_mae(checkpoint)
    info, img_size = contract.info(raster), model.arch.img_size
    losses = []
    for size in sizes:
        stride = max(size // 4, 1)
        boxes = [(top, left, size, size) for top in window_starts(info.height, size, stride)
                 for left in window_starts(info.width, size, stride)]
        crops = [contract.read(raster, box).resized([img_size, img_size]) for box in boxes]
        images = torch.stack([contract.normalise(crop) for crop in crops])
        losses.append(loss_over_mask_draws(model, images, torch.stack([crop.valid for crop in crops]),
                                           MASK_DRAWS))
    return losses


def scale_table(cases: Sequence[str], seeds: Sequence[int], epochs: int, work: Path) -> None:
    """Print each one-raster case's loss at windows from half the largest training crop to the whole raster:
    the natural MAE grown to its bands (a run at lr 0) against the trained runs."""
    print(f"\nMAE loss by window size ({MASK_DRAWS} mask draws, quarter-window stride), {epochs * 16} steps, "
          f"seeds {list(seeds)}")
    print("| case | window px | before | after (mean ± std) | after - before, mean [95% interval] | relative |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        raster = unpack(CASES[case][0][0], work / "rasters")
        sizes = SCALE_WINDOWS
        before = window_losses(trained(case, 0, 1, work, UNTRAINED) / "checkpoints" / "last.pt", raster, sizes)
        after = [window_losses(trained(case, seed, epochs, work) / "checkpoints" / "last.pt", raster, sizes)
                 for seed in seeds]
        for index, size in enumerate(sizes):
            changes = [run[index] - before[index] for run in after]
            mean = statistics.mean(changes)
            interval = ""
            if len(changes) > 1:
                _, _, half = paired_interval(changes)
                interval = f" [{mean - half:+.4f}, {mean + half:+.4f}]"
            print(f"| {case} | {size} | {before[index]:.4f} | {mean_and_spread([run[index] for run in after])} | "
                  f"{mean:+.4f}{interval} | {100 * mean / before[index]:+.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="of 16 steps each")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--scales", action="store_true", help="also measure the SAR cases at windows of "
                        f"{', '.join(map(str, SCALE_WINDOWS))} px")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="sensor_loss_"))
    results = {case: [run_case(case, seed, args.epochs, work) for seed in args.seeds] for case in args.cases}
    print(f"\nMAE loss on each raster's fixed windows, {args.epochs * 16} steps, seeds {args.seeds}")
    print("| case | tile size | before | after (mean ± std) | after - before, mean [95% interval] | relative |")
    print("|---|---|---|---|---|---|")
    for case, runs in results.items():
        before, after = [b for b, _ in runs], [a for _, a in runs]
        change = statistics.mean(a - b for b, a in runs)
        interval = ""
        if len(runs) > 1:
            _, _, half = paired_interval([a - b for b, a in runs])
            interval = f" [{change - half:+.4f}, {change + half:+.4f}]"
        print(f"| {case} | {CASES[case][2]} | {mean_and_spread(before)} | {mean_and_spread(after)} | "
              f"{change:+.4f}{interval} | {100 * change / statistics.mean(before):+.1f}% |")
    if args.scales:
        scale_table([case for case in args.cases if case in SCALE_CASES], args.seeds, args.epochs, work)


if __name__ == "__main__":
    main()
