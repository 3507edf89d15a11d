"""A labelled probe of ``--band-init``: how should an RGB MAE start on a panchromatic scene? Buildings, several seeds.

Data: SpaceNet Las Vegas from the solaris 0.4.0 wheel (``sample_geotiff.tif``: panchromatic, uint16, 900 x 900 px
at 0.5 m, nodata 0; ``geotiff_labels.geojson``: 43 building footprints). Every arm fine-tunes the natural-image
tiny MAE (``cspt:mae-tiny-tinyimagenet``, RGB) for segmentation with the segmentation recipe
(``src/cspt/recipes/segment_tiny_cpu.yaml``) on the footprints burnt onto the scene (``--background``), at half
resolution, held out by blocks of the map (``--split blocks``, 30%, with a buffer), one run per seed:

- ``wavelength``: the pan band named with its central wavelength (``--wavelengths 0.625``): it keeps the filter
  of red, the nearest RGB band (within 0.05 um), scaled on the scene;
- ``cyclic``: timm's ``adapt_input_conv``: the sum of the three RGB filters (exact for a grey image);
- ``random``: a fresh filter.

Prints each arm's held-out mIoU and building IoU at the last epoch (no checkpoint chosen on the held-out
blocks), mean and spread over seeds, and the paired 95% interval of ``wavelength`` minus each other arm.

Usage (about 2 min a run on 2 cores): python benchmarks/band_probe.py [--seeds 0 1 2 3 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paired import paired_interval  # noqa: E402

from cspt.config import SegmentConfig, make_config  # noqa: E402
from cspt.demo import recipe  # noqa: E402
from cspt.report import mean_and_spread  # noqa: E402
from cspt.tasks.segment import finetune_segment  # noqa: E402

WHEEL = ROOT / ".cache" / "wheels" / "solaris-0.4.0-py3-none-any.whl"
ARMS = {"wavelength": {"band_init": "wavelength", "band_names": ["pan"], "wavelengths": [0.625]},
        "cyclic": {"band_init": "cyclic"}, "random": {"band_init": "random"}}
#: the recipe at half resolution, with enough steps to learn buildings: 12 epochs of 64 windows (96 steps)
SETTINGS = {"resize": 0.5, "windows_per_epoch": 64, "epochs": 12, "eval_every": 12, "in_chans": 1,
            "split": "blocks", "val_fraction": 0.3, "background": "background", "num_workers": 0}


def unpack(folder: Path) -> tuple[Path, Path]:
    """The SpaceNet pan scene and its footprints from the wheel, read without installing it."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(WHEEL) as wheel:
        (folder / "sample_geotiff.tif").write_bytes(wheel.read("solaris/data/sample_geotiff.tif"))
        (folder / "buildings.geojson").write_bytes(wheel.read("solaris/data/geotiff_labels.geojson"))
    return folder / "sample_geotiff.tif", folder / "buildings.geojson"


def run_arm(arm: str, seed: int, scene: Path, labels: Path, work: Path) -> dict[str, float]:
    """One seeded fine-tune; its held-out evaluation after the last epoch: mIoU and the buildings' IoU."""
    output = work / f"{arm}_s{seed}"
    last = output / "metrics.json"
    if not last.is_file():  # --work reuses finished runs
        options = {k: v for k, v in recipe("segment_tiny_cpu.yaml").items() if k != "palette"}
        config = make_config(SegmentConfig, {**options, **SETTINGS, **ARMS[arm],
                                             "init": "cspt:mae-tiny-tinyimagenet", "scenes": [str(scene)],
                                             "labels": str(labels), "seed": seed, "output": str(output)},
                             "band_probe")
        finetune_segment(config)
    metrics = json.loads(last.read_text())
    return {"miou": metrics["miou"], "buildings": metrics["per_class"]["buildings"]["iou"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="band_probe_"))
    scene, labels = unpack(work / "data")
    results = {arm: [run_arm(arm, seed, scene, labels, work) for seed in args.seeds] for arm in ARMS}
    print(f"\nheld-out blocks of the SpaceNet pan scene, last epoch, seeds {args.seeds}, mean ± std")
    print("| arm | mIoU | building IoU |\n|---|---|---|")
    for arm, runs in results.items():
        print(f"| {arm} | {mean_and_spread([r['miou'] for r in runs])} | "
              f"{mean_and_spread([r['buildings'] for r in runs])} |")
    print("\nwavelength minus each arm, paired by seed (mean [95% interval]; positive: wavelength better)")
    for arm in ARMS:
        if arm != "wavelength":
            cells = []
            for name, key in (("mIoU", "miou"), ("building IoU", "buildings")):
                mean, _, half = paired_interval([a[key] - b[key] for a, b in zip(results["wavelength"], results[arm])])
                cells.append(f"{name} {mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]")
            print(f"- {arm}: {', '.join(cells)}")


if __name__ == "__main__":
    main()
