"""benchmarks/reproduce_cspt.py: its --quick run (one pipeline), and the guards that keep scored images out of
pretraining."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from cspt.config import ProbeConfig
from cspt.data.classification import read_labelled
from cspt.data.files import find_images
from cspt.errors import CsptError
from cspt.pipeline import read_pipeline
from cspt.tasks.probe import run_probe

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_cspt.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_cspt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(reproduce, tmp_path_factory) -> Path:
    from tests.conftest import NATURAL_MAE, RSSCN7, TINY_IMAGENET, needs

    output = tmp_path_factory.mktemp("reproduce") / "quick"
    reproduce.main(["--quick", "--data", str(needs(RSSCN7)), "--source", str(needs(NATURAL_MAE)),
                    "--source-data", str(needs(TINY_IMAGENET)), "--output", str(output),
                    "--docs", str(output / "docs")])
    return output


@pytest.mark.slow
def test_quick_run_is_one_pipeline_config_and_writes_every_arm_table_and_plots(quick_run, reproduce):
    spec = read_pipeline(quick_run / "pipeline.yaml")  # the whole experiment, as `cspt pipeline` reads it
    assert spec["arms"] == list(reproduce.ARMS) and spec["seeds"] == [0] and spec["budgets"] == [1, 2]
    results = json.loads((quick_run / "results.json").read_text())
    chains = results["chains"]
    assert len(chains) == 2 + 2 * len(reproduce.PRETRAINING_ARMS)  # random, direct; every other arm at 2 budgets
    for label, row in chains.items():
        assert (row["pretrain_seconds"] > 0) == (row["arm"] in reproduce.PRETRAINING_ARMS), label
        probes = ["knn_train_10pct", "knn_train_50pct", reproduce.SOURCE_KNN] if row["arm"] != "random" else []
        for task in ["train_10pct", "train_50pct", *probes]:
            assert 0 <= row[task]["oa"] <= 1 and "kappa" in row[task], (label, task)
    table = (quick_run / "docs" / "results.md").read_text()
    assert "Command: `python benchmarks/reproduce_cspt.py --quick" in table
    for arm in reproduce.ARMS:  # one row per label fraction and budget
        assert table.count(f"| {reproduce.ARM_TITLES[arm]} | ") == (2 if arm in ("random", "direct") else 4 + 4)
    for name in ("results.png", "gain_vs_compute.png"):
        assert (quick_run / "docs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_direct_arms_source_knn_is_the_natural_checkpoints_own(quick_run, reproduce):
    from tests.conftest import NATURAL_MAE

    split = quick_run / "split"
    config = ProbeConfig(checkpoint=str(NATURAL_MAE), train=str(split / "source_bank.csv"),
                         test=str(split / "source_queries.csv"), num_workers=0)
    own = run_probe("knn", config)["oa"]
    chains = json.loads((quick_run / "results.json").read_text())["chains"]
    assert chains["direct_s0"][reproduce.SOURCE_KNN]["oa"] == own


def test_no_test_image_reaches_any_pretraining_stage(quick_run, reproduce):
    split = quick_run / "split"
    test = {Path(p).resolve() for p in read_labelled(split / "test.csv").paths}
    train = {Path(p).resolve() for p in read_labelled(split / "train.csv").paths}
    assert test and train and not test & train
    scored_source = {Path(p).resolve() for name in ("source_bank", "source_queries")
                     for p in read_labelled(split / f"{name}.csv").paths}
    runs = sorted(quick_run.glob("pretrain_*"))
    assert len(runs) == 2 * len(reproduce.PRETRAINING_ARMS)
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        seen = {path.resolve() for path in find_images(config["data"])}
        assert seen == train, run.name  # exactly the training images, none of the test split
        replayed = {path.resolve() for path in find_images(config["replay"])} if config["replay"] else set()
        assert bool(replayed) == ("replay" in run.name) and not replayed & scored_source, run.name
        lineage = json.loads((run / "encoder.json").read_text())["lineage"]
        assert lineage[-1]["data"] == config["data"]
    leaking = quick_run / "leaking.txt"
    leaking.write_text("".join(f"{p}\n" for p in sorted(train)[:3] + sorted(test)[:1]))
    with pytest.raises(CsptError, match="leaking.txt: 1 test images in the pretraining data"):
        reproduce.check_no_test_images([str(leaking)], read_labelled(split / "test.csv"))
