"""How should an RGB MAE start on multispectral data? ``--band-init`` wavelength, cyclic and random against the RGB
bands alone, with seeds.

Data: the WorldView 4-band tiles of the solaris 0.4.0 wheel (``preproc_tutorial/ms1-3.tif``: blue, green, red,
nir1; float64 DN, 1 m, 300 x 300 px). ``ms1`` and ``ms2`` are the pool, ``ms3`` is held out. Every arm
pretrains the natural-image tiny MAE (``cspt:mae-tiny-tinyimagenet``) with
``configs/pretrain/sentinel2_tiny_cpu.yaml`` and ``--sensor worldview3-4band``, one run per seed:

- ``rgb``: ``--bands red green blue`` (the model stays RGB);
- ``wavelength``, ``cyclic``, ``random``: all four bands, ``--band-init`` so;
- ``groups``: all four bands, ``--band-init wavelength`` and two spectral band groups (``--band-groups
  blue,green,red nir1``, SatMAE style, each group masked on its own in training);
- ``groups_shared``: the same with both groups masked alike in training (``--group-masking shared``).

Measured on the held-out tile's fixed crops and masks (pretraining's own held-out crops, seed-0 masks), before
training (the adaptation alone) and after: the reconstruction error of the masked patches on red, green and
blue, the bands every arm has (each band normalised per patch, so arms of 3 and 4 bands compare), and for the
4-band arms on near-infrared; and pretraining's own held-out MAE loss (over the arm's bands: the ungrouped
4-band arms compare with each other, not with ``rgb`` or ``groups``, whose loss normalises each group's patch
apart). Every arm's errors are measured on the same masked locations (``groups``: both groups masked
alike). Prints each arm's mean and spread over seeds and the paired 95% interval of ``wavelength`` minus
each other arm. Usage (about 20 s per run on 2 cores):

    python benchmarks/band_init.py [--seeds 0 1 2 3 4] [--epochs 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paired import paired_interval  # noqa: E402

from cspt.config import PretrainConfig, build_config  # noqa: E402
from cspt.models.mae import MaskedAutoencoderViT  # noqa: E402
from cspt.report import mean_and_spread  # noqa: E402
from cspt.tasks.common import contract_of  # noqa: E402
from cspt.tasks.pretrain import PretrainTask, fixed_crops, pretrain, resolve_config, with_mask_draws  # noqa: E402
from cspt.weights.load import load_checkpoint  # noqa: E402

WHEEL = ROOT / ".cache" / "wheels" / "solaris-0.4.0-py3-none-any.whl"
RECIPE = ROOT / "configs" / "pretrain" / "sentinel2_tiny_cpu.yaml"
ARMS = {"rgb": {"bands": ["red", "green", "blue"]}, "wavelength": {"band_init": "wavelength"},
        "cyclic": {"band_init": "cyclic"}, "random": {"band_init": "random"},
        "groups": {"band_init": "wavelength", "band_groups": ["blue,green,red", "nir1"]},
        "groups_shared": {"band_init": "wavelength", "band_groups": ["blue,green,red", "nir1"],
                          "group_masking": "shared"}}
COLOURS, NIR = ("red", "green", "blue"), "nir1"


def unpack_tiles(folder: Path) -> tuple[Path, Path]:
    """``pool/ms1.tif``, ``pool/ms2.tif`` and ``held/ms3.tif`` from the wheel, read without installing it."""
    with zipfile.ZipFile(WHEEL) as wheel:
        for name, part in (("ms1", "pool"), ("ms2", "pool"), ("ms3", "held")):
            (folder / part).mkdir(parents=True, exist_ok=True)
            (folder / part / f"{name}.tif").write_bytes(wheel.read(f"solaris/data/preproc_tutorial/{name}.tif"))
    return folder / "pool", folder / "held"


@torch.no_grad()
def band_errors(model: MaskedAutoencoderViT, config: PretrainConfig, held: Path) -> dict[str, float]:
    """``mae``: pretraining's held-out MAE loss (its crops, masks and the arm's own group masking). Per band,
    over the masked patches mostly with data (the same masked locations for every arm, band groups masked
    alike): ``NAME``,
    the mean squared error with prediction and truth both normalised by the true patch's own mean
    and std in that band; ``NAME shape``, the same with the prediction normalised by its own (2 x (1 - the
    correlation), blind to a band's offset and gain). The reconstruction undoes the normalised-pixel target
    with the true patch's statistics (as MAE pictures do): over all bands without groups, over a group's
    bands with them, so a one-band group gets its band's offset and gain from the truth and only its
    ``shape`` error compares with the ungrouped arms'."""
    contract = contract_of(config)
    images, valid, own = fixed_crops(contract, [held], config.tile_size, config.img_size, model.mask_noise_length)
    model.eval()
    measured, measured_valid, measured_noise = with_mask_draws((images, valid, own))  # as pretraining measures
    errors = {"mae": float(model(measured, noise=measured_noise, valid=measured_valid)[0])}
    length = model.arch.grid_size**2
    model.group_masking = "shared"
    result = model.reconstruct(images, noise=torch.rand(len(images), length,
                                                        generator=torch.Generator().manual_seed(0)))
    mask = result.mask[:, :length] * model.scored_patches(valid)  # masked (every group alike), with data
    for band, spec in enumerate(contract.spectral):
        truth = model.patchify(images[:, band : band + 1])
        guess = model.patchify(result.reconstruction[:, band : band + 1])
        mean, std = truth.mean(-1, keepdim=True), (truth.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (((guess - mean) / std - (truth - mean) / std) ** 2).mean(-1)
        errors[spec.name] = float((per_patch * mask).sum() / mask.sum())
        own = (guess - guess.mean(-1, keepdim=True)) / (guess.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = ((own - (truth - mean) / std) ** 2).mean(-1)
        errors[f"{spec.name} shape"] = float((per_patch * mask).sum() / mask.sum())
    return errors


def run_arm(arm: str, seed: int, pool: Path, held: Path, epochs: int | None, work: Path) -> dict[str, dict]:
    """One seeded run: band errors of the adapted model before training and of the trained one."""
    overrides = {"data": [str(pool)], "eval_data": [str(held)], "output": str(work / f"{arm}_s{seed}"),
                 "init": "cspt:mae-tiny-tinyimagenet", "sensor": "worldview3-4band", "seed": seed,
                 "num_workers": 0, **ARMS[arm], **({"epochs": epochs} if epochs else {})}
    config = resolve_config(build_config(PretrainConfig, RECIPE, overrides), load_checkpoint(overrides["init"]))
    torch.manual_seed(seed)
    before = band_errors(PretrainTask(config, load_checkpoint(config.init)).build_model(load_init=True), config,
                         held)
    heldout = Path(config.output) / "heldout.json"
    finished = heldout.is_file() and json.loads(heldout.read_text())[-1]["epoch"] == config.epochs
    run_dir = Path(config.output) if finished else Path(pretrain(config))  # --work reuses finished runs
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    trained = PretrainTask(config).build_model(load_init=False)
    trained.load_state_dict(state)
    after = band_errors(trained, config, held)
    return {"before": before, "after": after, "mae": {"before": before.pop("mae"), "after": after.pop("mae")}}


def paired(a: list[float], b: list[float]) -> str:
    """Mean of ``a - b`` with its 95% interval over the seeds."""
    mean, _, half = paired_interval([x - y for x, y in zip(a, b)])
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="band_init_"))
    pool, held = unpack_tiles(work / "tiles")
    results = {arm: [run_arm(arm, seed, pool, held, args.epochs, work) for seed in args.seeds] for arm in ARMS}
    for suffix, what in (("", "error"), (" shape", "shape error (prediction normalised by its own statistics)")):
        print_table(results, suffix, f"held-out reconstruction {what} of the masked patches (ms3), seeds "
                                     f"{args.seeds}, mean ± std")


def print_table(results: dict[str, list[dict]], suffix: str, title: str) -> None:
    """One metric (band name + ``suffix``) per arm, before and after, and wavelength minus each other arm."""
    print(f"\n{title}")
    print("| arm | RGB before | RGB after | NIR before | NIR after | MAE loss before | MAE loss after |\n"
          "|---|---|---|---|---|---|---|")
    nir = NIR + suffix
    rgb = {arm: {when: [statistics.mean(r[when][c + suffix] for c in COLOURS) for r in runs]
                 for when in ("before", "after")} for arm, runs in results.items()}
    for arm, runs in results.items():
        cells = [mean_and_spread(rgb[arm][when]) for when in ("before", "after")]
        cells += [mean_and_spread([r[when][nir] for r in runs]) if nir in runs[0][when] else "-"
                  for when in ("before", "after")]
        cells += [mean_and_spread([r["mae"][when] for r in runs]) for when in ("before", "after")]
        print(f"| {arm} | {' | '.join(cells)} |")
    print("\nwavelength minus each arm, paired by seed (mean [95% interval]; negative: wavelength better)")
    for arm in results:
        if arm != "wavelength":
            print(f"- {arm}: RGB before {paired(rgb['wavelength']['before'], rgb[arm]['before'])}, "
                  f"after {paired(rgb['wavelength']['after'], rgb[arm]['after'])}"
                  + ("" if arm == "rgb" else ", NIR after " + paired(
                      [r["after"][nir] for r in results["wavelength"]], [r["after"][nir] for r in results[arm]])))

if __name__ == "__main__":
    main()
