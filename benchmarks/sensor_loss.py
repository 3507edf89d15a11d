"""Does consecutive pretraining from the RGB MAE lower the MAE loss on SAR, Landsat and WorldView rasters? Seeds,
spread and the scale it is measured at.

Data: the real rasters of the solaris 0.4.0 wheel, read without installing it: SAR in decibels with NaN
(``preproc_tutorial/sar_masked.tif``, HH/HV/VH/VV, 200 x 200 px), single-look complex SAR
(``preproc_tutorial/sar_vv.tif``, read as amplitude in decibels), the Landsat-5 scene (int16 with a -9999
border, 2846 x 4627 px) and two WorldView 4-band tiles (``preproc_tutorial/ms1.tif``, ``ms2.tif``, float64 DN). Each
case
pretrains the natural-image tiny MAE (``cspt:mae-tiny-tinyimagenet``, grown to the rasters' bands) with
``configs/pretrain/tiny_cpu.yaml`` and the slow sensor test's budget (3 epochs of 16 steps of 16 crops, blr
1.5e-3, no warm-up), one run per seed, and reads pretraining's own MAE loss on the rasters' fixed windows
(``heldout.json``; the rasters are their own ``--eval-data``) before training and after.

The windows are half the largest crop training takes (``cspt.tasks.pretrain.fixed_crops``): from a tile of a
scene larger than twice ``tile_size``, else from the whole image. The Landsat scene runs at two tile sizes:
128 px (crops of 57-128 px resized to the model's 64 px: at most 2x) and 256 px (the default: shrunk 1.8-4x).

Prints per case the loss before, after (mean ± std over seeds) and the change with its 95% interval.
Usage (about 10 min alone on 2 cores):

    python benchmarks/sensor_loss.py [--seeds 0 1 2] [--epochs 3] [--work DIR]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paired import paired_interval  # noqa: E402

from cspt.config import PretrainConfig, build_config, read_yaml  # noqa: E402
from cspt.report import mean_and_spread  # noqa: E402
from cspt.tasks.pretrain import pretrain  # noqa: E402

WHEEL = ROOT / ".cache" / "wheels" / "solaris-0.4.0-py3-none-any.whl"
RECIPE = ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"
LANDSAT = "nebraska_landsat5_with_nodata_wgs84.tif"
#: case: (the wheel's rasters under solaris/data, the flags that say what their bands are, the tile size)
CASES = {
    "sar_db_with_nan": (["preproc_tutorial/sar_masked.tif"], {"sensor": "sar-quad"}, 256),
    "sar_complex": (["preproc_tutorial/sar_vv.tif"], {"in_chans": 1, "band_names": ["VV"],
                                                      "wavelengths": [55465.0], "decibels": "amplitude"}, 256),
    "landsat_tile_128": ([LANDSAT], {"in_chans": 1}, 128),
    "landsat_tile_256": ([LANDSAT], {"in_chans": 1}, 256),
    "worldview_ms": (["preproc_tutorial/ms1.tif", "preproc_tutorial/ms2.tif"], {"sensor": "worldview3-4band"}, 256),
}
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


def run_case(case: str, seed: int, epochs: int, work: Path) -> tuple[float, float]:
    """One seeded run (a finished one of the same settings in ``work`` is reused): the MAE loss on the rasters'
    windows before and after."""
    rasters, flags, tile = CASES[case]
    paths = [str(unpack(raster, work / "rasters")) for raster in rasters]
    output = work / f"{case}_e{epochs}_s{seed}"
    overrides = {"data": paths, "eval_data": paths, "output": str(output), "seed": seed,
                 "init": "cspt:mae-tiny-tinyimagenet", "epochs": epochs, "vis_every": epochs, "tile_size": tile,
                 **BUDGET, **flags}
    saved = output / "config.yaml"
    if saved.is_file() and any(read_yaml(saved).get(k) != v for k, v in overrides.items()):
        shutil.rmtree(output)  # a run of other settings (an unfinished one of these settings is continued)
    heldout = output / "heldout.json"
    if not (heldout.is_file() and json.loads(heldout.read_text())[-1]["epoch"] == epochs):
        pretrain(build_config(PretrainConfig, RECIPE, overrides))
    losses = json.loads(heldout.read_text())
    return losses[0]["mae_loss"], losses[-1]["mae_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="of 16 steps each")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
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

if __name__ == "__main__":
    main()
