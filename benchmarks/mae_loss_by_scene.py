"""Where consecutive pretraining lowers the MAE loss: scene by scene, before and after stage 2, over seeds.

Where does stage 2 of ``cspt demo`` lower the MAE loss, and where does it raise it? For every NEON scene the
demo uses, the MAE loss of the natural-image source and of each seed's stage-2 model, on the crops and masks
pretraining measures its held-out loss with (``cspt.tasks.pretrain.fixed_crops``: windows half the largest
training crop, each masked by the same fixed noise), averaged over four mask draws. Reads the stage-2 runs that
``benchmarks/demo_spread.py`` wrote (``OUTPUT/pretrain_cspt_sN``); trains nothing.

Usage: python benchmarks/mae_loss_by_scene.py [--runs runs/demo_spread]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cspt.config import read_yaml  # noqa: E402
from cspt.data.pixels import PixelContract  # noqa: E402
from cspt.demo import HELD_OUT, PRETRAIN_SCENES, neon_scenes  # noqa: E402
from cspt.models.mae import MaskedAutoencoderViT  # noqa: E402
from cspt.models.vit import resolve_arch  # noqa: E402
from cspt.tasks.common import checkpoint_contract  # noqa: E402
from cspt.tasks.pretrain import fixed_crops  # noqa: E402
from cspt.weights.load import load_checkpoint, load_into_model  # noqa: E402

MASK_DRAWS = 4


def load_mae(checkpoint: str | Path) -> tuple[MaskedAutoencoderViT, PixelContract]:
    """The MAE of a checkpoint (with its decoder), in eval mode, and the pixel contract it records."""
    loaded = load_checkpoint(checkpoint)
    arch = resolve_arch({}, None, loaded.arch)
    model = MaskedAutoencoderViT(arch, group_masking=loaded.group_masking)
    load_into_model(model, loaded)
    return model.eval(), checkpoint_contract(loaded, arch.in_chans)


@torch.no_grad()
def loss_over_mask_draws(model: MaskedAutoencoderViT, images: torch.Tensor, valid: torch.Tensor,
                         draws: int = MASK_DRAWS) -> float:
    """The MAE loss on normalised ``images``, averaged over ``draws`` fixed mask draws (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    return statistics.mean(
        float(model(images, noise=torch.rand(len(images), model.mask_noise_length, generator=generator),
                    valid=valid)[0])
        for _ in range(draws))


def scene_losses(checkpoint: str | Path, scenes: list[Path], tile_size: int) -> list[float]:
    """The MAE loss of ``checkpoint`` on each scene's fixed crops (mean over ``MASK_DRAWS`` mask draws)."""
    model, contract = load_mae(checkpoint)
    losses = []
    for scene in scenes:
        images, valid, _ = fixed_crops(contract, [str(scene)], tile_size, model.arch.img_size,
                                       model.mask_noise_length, limit=64)
        losses.append(loss_over_mask_draws(model, images, valid))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/demo_spread", help="the output folder of demo_spread.py")
    args = parser.parse_args()
    stage2 = sorted(Path(args.runs).glob("pretrain_cspt_s*"))
    if not stage2:
        sys.exit(f"{args.runs}: no pretrain_cspt_sN runs; run benchmarks/demo_spread.py first")
    config = read_yaml(stage2[0] / "config.yaml")
    folder = neon_scenes()
    scenes = [folder / name for name in PRETRAIN_SCENES] + [folder / f"{stem}.png" for stem in HELD_OUT]
    before = scene_losses(config["init"], scenes, config["tile_size"])
    after = [scene_losses(run / "checkpoints" / "last.pt", scenes, config["tile_size"]) for run in stage2]
    print(f"| scene | role in stage 2 | natural source | after stage 2 (mean ± std, {len(stage2)} seeds) | change |")
    print("|---|---|---|---|---|")
    for index, scene in enumerate(scenes):
        seeds = [losses[index] for losses in after]
        mean, spread = statistics.mean(seeds), statistics.stdev(seeds) if len(seeds) > 1 else 0.0
        role = "pool" if scene.name in PRETRAIN_SCENES else "held out"
        print(f"| {scene.stem} | {role} | {before[index]:.4f} | {mean:.4f} ± {spread:.4f} | "
              f"{100 * (mean - before[index]) / before[index]:+.1f}% |")


if __name__ == "__main__":
    main()
