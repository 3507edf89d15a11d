"""Every shipped recipe parses into its stage's config, with the architecture it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from cspt.config import ClassifyConfig, DetectConfig, PretrainConfig, SegmentConfig, build_config
from cspt.models.vit import resolve_arch
from tests.conftest import ROOT

STAGES = {"pretrain": PretrainConfig, "classify": ClassifyConfig, "segment": SegmentConfig,
          "detect": DetectConfig}
RECIPES = sorted((ROOT / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(recipe: Path):
    config = build_config(STAGES[recipe.parent.name], recipe)
    img_size = getattr(config, "crop_size", None) or getattr(config, "tile_size", None) or config.img_size
    arch = resolve_arch({"embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads,
                         "patch_size": config.patch_size, "img_size": img_size}, config.model)
    if recipe.name.startswith("cspt_vit_base"):
        size = {"segment": 512, "detect": 800}.get(recipe.parent.name, 224)
        assert (arch.embed_dim, arch.depth, arch.patch_size, arch.img_size) == (768, 12, 16, size)
    else:
        assert recipe.name == "tiny_cpu.yaml" and config.device == "cpu" and arch.img_size in (64, 128)


def test_every_stage_has_recipes():
    assert {p.parent.name for p in RECIPES} == set(STAGES)


@pytest.mark.parametrize("name", ["dubai", "isprs", "gid"])
def test_builtin_palettes_load(name: str):
    from cspt.tasks.segment import load_palette

    palette = load_palette(name, None)
    assert len(palette.classes) >= 5 and len(set(palette.colors)) == len(palette.classes)
