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


def stage_of(recipe: Path) -> str:
    """The stage folder's name; in ``configs/paper`` the file name's first word."""
    return recipe.name.split("_")[0] if recipe.parent.name == "paper" else recipe.parent.name


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(recipe: Path):
    stage = stage_of(recipe)
    config = build_config(STAGES[stage], recipe)
    img_size = getattr(config, "crop_size", None) or getattr(config, "tile_size", None) or config.img_size
    arch = resolve_arch({"embed_dim": config.embed_dim, "depth": config.depth, "num_heads": config.num_heads,
                         "patch_size": config.patch_size, "img_size": img_size}, config.model)
    if recipe.name.startswith(("cspt_vit_base", "cspt_distill_vit_base")) or recipe.parent.name == "paper":
        size = {"segment": 512, "detect": 800}.get(stage, 224)
        assert (arch.embed_dim, arch.depth, arch.patch_size, arch.img_size) == (768, 12, 16, size)
    else:
        assert recipe.name.endswith("tiny_cpu.yaml") and config.device == "cpu" and arch.img_size in (64, 128)
    if "distill" in recipe.name:  # GFM's guidance: the natural source as a frozen teacher, weight 1, cosine
        assert config.distill_from == config.init and config.distill_weight == 1.0
        assert (config.distill_target, config.distill_loss) == ("tokens", "cosine")
        assert config.epochs == (100 if "vit_base" in recipe.name else 2)


def test_every_stage_has_recipes():
    assert {p.parent.name for p in RECIPES} == {*STAGES, "paper"}
    paper = [p for p in RECIPES if p.parent.name == "paper"]
    assert {stage_of(p) for p in paper} == set(STAGES)
    assert all(p.resolve().parent.name == stage_of(p) for p in paper)  # links to the stage folders' recipes


@pytest.mark.parametrize("name", ["dubai", "isprs", "gid"])
def test_builtin_palettes_load(name: str):
    from cspt.tasks.segment import load_palette

    palette = load_palette(name, None)
    assert len(palette.classes) >= 5 and len(set(palette.colors)) == len(palette.classes)


def test_a_key_given_twice_is_refused_naming_file_key_and_lines(tmp_path: Path):
    """PyYAML lets the later of two equal keys win without a word: a recipe edited twice would train
    something else than it reads."""
    from cspt.config import read_yaml
    from cspt.errors import CsptError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 3\nbase: &base {blr: 0.1}\nfinetune:\n  <<: *base\n  blr: 0.2\nepochs: 4\n")
    with pytest.raises(CsptError, match=r"recipe.yaml: .*the key 'epochs' twice \(lines 1 and 6\)"):
        read_yaml(recipe)
    recipe.write_text("epochs: 3\nbase: &base {blr: 0.1}\nfinetune:\n  <<: *base\n  blr: 0.2\n")
    assert read_yaml(recipe) == {"epochs": 3, "base": {"blr": 0.1}, "finetune": {"blr": 0.2}}  # merges may override
