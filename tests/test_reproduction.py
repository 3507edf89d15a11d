"""benchmarks/reproduce_cspt.py: its --quick run, and the guard that keeps test images out of pretraining."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from cspt.data.classification import read_labelled
from cspt.data.files import find_images
from cspt.errors import CsptError

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
    from tests.conftest import NATURAL_MAE, RSSCN7, needs

    output = tmp_path_factory.mktemp("reproduce") / "quick"
    reproduce.main(["--quick", "--data", str(needs(RSSCN7)), "--source", str(needs(NATURAL_MAE)),
                    "--output", str(output), "--docs", str(output / "docs")])
    return output


def test_quick_run_writes_every_arm_table_and_plots(quick_run, reproduce):
    results = json.loads((quick_run / "results.json").read_text())
    assert set(results["main"]) == set(reproduce.ARMS)
    for arm in reproduce.ARMS:
        for row in results["main"][arm]["0"].values():
            assert 0 <= row["oa"] <= 1 and 0 <= row["knn"] <= 1 and "kappa" in row
    assert {entry["epochs"] for entry in results["sweep"].values()} == {0, 1, 2}
    table = (quick_run / "docs" / "results.md").read_text()
    assert "Command: `python benchmarks/reproduce_cspt.py --quick" in table
    assert table.count("| (c) natural MAE -> consecutive MAE -> fine-tune (CSPT) |") == 2  # one row per fraction
    for name in ("results.png", "sweep.png"):
        assert (quick_run / "docs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_test_image_reaches_any_pretraining_stage(quick_run, reproduce):
    test = {Path(p).resolve() for p in read_labelled(quick_run / "split" / "test.csv").paths}
    train = {Path(p).resolve() for p in read_labelled(quick_run / "split" / "train.csv").paths}
    assert test and train and not test & train
    runs = sorted((quick_run / "pretrain").iterdir())
    assert len(runs) == 4  # cspt and scratch at the main budget; the cspt sweep adds 2 epochs and the other lr
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        seen = {path.resolve() for path in find_images(config["data"])}
        assert seen == train, run.name  # exactly the training images, none of the test split
        lineage = json.loads((run / "encoder.json").read_text())["lineage"]
        assert lineage[-1]["data"] == config["data"]
    leaking = quick_run / "leaking.txt"
    leaking.write_text("".join(f"{p}\n" for p in sorted(train)[:3] + sorted(test)[:1]))
    with pytest.raises(CsptError, match="leaking.txt: 1 test images in the pretraining data"):
        reproduce.check_no_test_images([str(leaking)], read_labelled(quick_run / "split" / "test.csv"))
