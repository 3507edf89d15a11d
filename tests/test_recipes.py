"""Every shipped recipe parses into its stage's config, with the architecture it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from cspt.config import ClassifyConfig, PretrainConfig, build_config
from cspt.models.vit import resolve_arch
from tests.conftest import ROOT

STAGES = {"pretrain": PretrainConfig, "classify": ClassifyConfig}
RECIPES = sorted((ROOT / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(recipe: Path):
    config = build_config(STAGES[recipe.parent.name], recipe)
    arch = resolve_arch({"embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads,
                         "patch_size": config.patch_size, "img_size": config.img_size}, config.model)
    if recipe.name.startswith("cspt_vit_base"):
        assert (arch.embed_dim, arch.depth, arch.patch_size, arch.img_size) == (768, 12, 16, 224)
    else:
        assert recipe.name == "tiny_cpu.yaml" and config.device == "cpu" and arch.img_size == 64


def test_every_stage_has_recipes():
    assert {p.parent.name for p in RECIPES} == set(STAGES)
