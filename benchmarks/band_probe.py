"""A labelled probe of ``--band-init``: which start of an RGB MAE on a panchromatic scene tells buildings apart best?

Data: SpaceNet Las Vegas from the solaris 0.4.0 wheel (``sample_geotiff.tif``: panchromatic, uint16, 900 x 900 px
at 0.5 m, nodata 0; ``geotiff_labels.geojson``: 43 building footprints in the scene's CRS). The natural-image tiny
MAE (``cspt:mae-tiny-tinyimagenet``, RGB) is grown to the one pan band as ``cspt pretrain`` grows it (the pixel
contract, the adaptation and its scaling on the scene), one arm per ``--band-init``:

- ``wavelength``: the pan band named with its central wavelength (``--wavelengths 0.625``): red's filter (the
  nearest RGB band, within 0.05 um), scaled on the scene;
- ``cyclic``: timm's ``adapt_input_conv``: the sum of the three RGB filters (exact for a grey image); also what
  ``wavelength`` falls back to for a band whose wavelength is not known.

(``random`` has no arm here: it keeps the filter of a band that red, green or blue claims, as ``wavelength``
does, and falls back to ``cyclic`` without a wavelength.)

The encoder stays frozen. Its last block's patch tokens (4 m each) on 64 px windows at full resolution are the
features of a class-balanced logistic regression: is most of the patch a building? It is trained on the windows
of the scene's left 60% and scored on those of its right 35% (a 5% gap between), by the average precision of
buildings and the balanced accuracy. Both starts are deterministic: seeds vary only the probe's initialisation.

Usage (under a minute on 2 cores): python benchmarks/band_probe.py [--seeds 0 1 2 3 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.features import rasterize
from torchmetrics.functional.classification import binary_average_precision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paired import paired_interval  # noqa: E402

from cspt.config import PretrainConfig, build_config  # noqa: E402
from cspt.report import mean_and_spread  # noqa: E402
from cspt.tasks.pretrain import PretrainTask, resolve_config  # noqa: E402
from cspt.weights.load import load_checkpoint  # noqa: E402

WHEEL = ROOT / ".cache" / "wheels" / "solaris-0.4.0-py3-none-any.whl"
SOURCE = "cspt:mae-tiny-tinyimagenet"
ARMS = {"wavelength": {"band_init": "wavelength", "band_names": ["pan"], "wavelengths": [0.625]},
        "cyclic": {"band_init": "cyclic"}}
WINDOW, TRAIN_SHARE, TEST_FROM = 64, 0.60, 0.65  #: window side (px); columns left of 60% train, right of 65% test


def unpack(folder: Path) -> tuple[Path, Path]:
    """The SpaceNet pan scene and its footprints from the wheel, read without installing it."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(WHEEL) as wheel:
        (folder / "sample_geotiff.tif").write_bytes(wheel.read("solaris/data/sample_geotiff.tif"))
        (folder / "buildings.geojson").write_bytes(wheel.read("solaris/data/geotiff_labels.geojson"))
    return folder / "sample_geotiff.tif", folder / "buildings.geojson"


def building_mask(scene: Path, labels: Path) -> np.ndarray:
    """1 where a footprint covers the pixel, on the scene's grid."""
    shapes = [feature["geometry"] for feature in json.loads(labels.read_text())["features"]]
    with rasterio.open(scene) as src:
        return rasterize(shapes, out_shape=(src.height, src.width), transform=src.transform, dtype="uint8")


def encoder_of(arm: str, seed: int, scene: Path, work: Path) -> tuple[torch.nn.Module, object]:
    """The adapted MAE (frozen) and its pixel contract, as ``cspt pretrain --init SOURCE`` would start it."""
    overrides = {"data": [str(scene)], "output": str(work / f"{arm}_s{seed}"), "init": SOURCE, "in_chans": 1,
                 "img_size": WINDOW, "seed": seed, **ARMS[arm]}
    config = resolve_config(build_config(PretrainConfig, None, overrides), load_checkpoint(SOURCE))
    torch.manual_seed(seed)
    task = PretrainTask(config, load_checkpoint(SOURCE))
    return task.build_model(load_init=True).eval(), task.contract


@torch.no_grad()
def token_features(model: torch.nn.Module, contract, scene: Path, buildings: np.ndarray) -> dict[str, torch.Tensor]:
    """Per patch token of every 64 px window: its last-block feature, whether most of it is a building, whether it
    holds data, and which side of the scene it lies on (0 train, 1 gap, 2 test)."""
    info = contract.info(scene)
    patch = model.arch.patch_size
    feats, labels, valid, side = [], [], [], []
    for top in range(0, info.height - WINDOW + 1, WINDOW):
        for left in range(0, info.width - WINDOW + 1, WINDOW):
            crop = contract.read(scene, (top, left, WINDOW, WINDOW))
            tokens = model.forward_features(contract.normalise(crop)[None])[0, model.num_prefix_tokens:]
            cover = torch.from_numpy(buildings[top:top + WINDOW, left:left + WINDOW]).float()
            share = torch.nn.functional.avg_pool2d(cover[None, None], patch).flatten()
            data = torch.nn.functional.avg_pool2d(crop.valid[None, None].float(), patch).flatten()
            column = (left + WINDOW / 2) / info.width
            feats.append(tokens)
            labels.append(share >= 0.5)
            valid.append(data >= 0.5)
            side.append(torch.full_like(share, 0 if column < TRAIN_SHARE else 2 if column >= TEST_FROM else 1))
    return {"x": torch.cat(feats), "y": torch.cat(labels).float(), "valid": torch.cat(valid),
            "side": torch.cat(side)}


def probe(tokens: dict[str, torch.Tensor], seed: int, steps: int = 300) -> dict[str, float]:
    """A class-balanced logistic regression on the training side; AP and balanced accuracy on the test side."""
    train = tokens["valid"] & (tokens["side"] == 0)
    test = tokens["valid"] & (tokens["side"] == 2)
    x, y = tokens["x"], tokens["y"]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], 1)
    torch.nn.init.normal_(head.weight, std=0.01, generator=generator)
    positive = float(y[train].mean())
    weight = torch.where(y[train] > 0, 0.5 / positive, 0.5 / (1 - positive))
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        logits = head(x[train]).squeeze(1)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y[train], reduction="none")
                * weight).mean()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        scores = head(x[test]).squeeze(1).sigmoid()
    truth = y[test].long()
    predicted = scores >= 0.5
    recall = float(predicted[truth == 1].float().mean())
    specificity = float((~predicted[truth == 0]).float().mean())
    return {"ap": float(binary_average_precision(scores, truth)), "balanced": (recall + specificity) / 2,
            "buildings": float(truth.float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, help="where the unpacked data go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="band_probe_"))
    scene, labels = unpack(work / "data")
    buildings = building_mask(scene, labels)
    results = {}
    for arm in ARMS:
        results[arm] = []
        for seed in args.seeds:
            model, contract = encoder_of(arm, seed, scene, work)
            results[arm].append(probe(token_features(model, contract, scene, buildings), seed))
    share = results["cyclic"][0]["buildings"]
    print(f"\nfrozen tokens of the SpaceNet pan scene, test side ({share:.1%} of its tokens buildings), seeds "
          f"{args.seeds}, mean ± std\n| arm | building AP | balanced accuracy |\n|---|---|---|")
    for arm, runs in results.items():
        print(f"| {arm} | {mean_and_spread([r['ap'] for r in runs])} | "
              f"{mean_and_spread([r['balanced'] for r in runs])} |")
    print("\nwavelength minus each arm, paired by seed (mean [95% interval]; positive: wavelength better)")
    for arm in ARMS:
        if arm != "wavelength":
            cells = []
            for name, key in (("AP", "ap"), ("balanced accuracy", "balanced")):
                mean, _, half = paired_interval([a[key] - b[key] for a, b in zip(results["wavelength"], results[arm])])
                cells.append(f"{name} {mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]")
            print(f"- {arm}: {', '.join(cells)}")


if __name__ == "__main__":
    main()
