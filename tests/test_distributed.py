"""Several processes (gloo on the CPU, as torchrun starts them): evaluation shared by every rank, a
non-finite loss stopping all of them, and resuming on another number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cspt.config import PretrainConfig
from cspt.engine.distributed import DistContext
from cspt.engine.run_log import read_log
from cspt.engine.trainer import Trainer
from cspt.errors import CsptError
from tests.conftest import TINY_FLAGS, run_cli
from tests.test_pretrain import losses

FAST = ["--num-workers", "0", "--warmup-epochs", "0", "--log-every", "1", "--device", "cpu"]


def torchrun(*args: str, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(processes), "-m", "cspt", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_processes_evaluate_together_and_score_what_one_process_scores(rsscn7_csv, natural_mae, tmp_path):
    run = tmp_path / "run"
    result = torchrun("finetune", "classify", "--data", str(rsscn7_csv(8)), "--init", str(natural_mae),
                      "--train-fraction", "0.5", "--val-fraction", "0.25", "--epochs", "2", "--batch-size", "4",
                      "--img-size", "32", "--output", str(run), *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    together = json.loads((run / "metrics.json").read_text())
    assert together["images"] == 14  # the test split: 2 of each class's 8
    alone = run_cli("evaluate", "classify", "--checkpoint", str(run), "--output", str(tmp_path / "alone"),
                    "--device", "cpu", "--num-workers", "0")
    assert alone.returncode == 0, alone.stderr
    single = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    for key in ("oa", "aa", "kappa", "confusion", "images"):
        assert together[key] == single[key], key
    best = max(r["val_oa"] for r in read_log(run) if "val_oa" in r)
    val = run_cli("evaluate", "classify", "--checkpoint", str(run), "--data", str(run / "splits" / "val.csv"),
                  "--output", str(tmp_path / "val"), "--device", "cpu", "--num-workers", "0")
    assert val.returncode == 0 and json.loads((tmp_path / "val" / "metrics.json").read_text())["oa"] == best


@pytest.mark.slow
def test_a_loss_that_is_not_finite_on_one_process_stops_every_process(rsscn7_list, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for line in rsscn7_list(15).read_text().split():
        (data / Path(line).name).symlink_to(line)
    broken = np.full((48, 48, 3), 3e38, dtype=np.float32)  # finite, valid, and infinite once normalised
    tifffile.imwrite(data / "huge.tif", broken, photometric="rgb")  # its batch's loss is not finite
    result = torchrun("pretrain", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1",
                      "--batch-size", "4", "--dist-timeout", "2", "--vis-every", "0", *TINY_FLAGS, *FAST,
                      timeout=240)
    assert result.returncode != 0
    assert result.stderr.count("the loss is not finite at step") == 2, result.stderr[-3000:]  # each process says so


@pytest.mark.slow
def test_resuming_on_one_process_keeps_the_global_batch_of_two(rsscn7_list, tmp_path):
    common = ["pretrain", "--data", str(rsscn7_list(48)), "--seed", "3", "--vis-every", "0", *TINY_FLAGS, *FAST]
    reference = tmp_path / "reference"
    assert run_cli(*common, "--epochs", "2", "--batch-size", "8", "--accum-iter", "2",
                   "--output", str(reference)).returncode == 0
    moved = tmp_path / "moved"
    first = torchrun(*common, "--epochs", "1", "--batch-size", "8", "--output", str(moved))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("pretrain", "--resume", str(moved), "--epochs", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming on 1 process(es) instead of 2: accumulation 2 keeps the global batch of 16" in second.stderr
    want, got = losses(reference), losses(moved)
    # the same 16 images in every step (a global batch of 8 would take 9 steps); all-reduce and accumulation sum
    # the gradients in another order, so the losses drift apart by a few 1e-4 over the steps
    assert len(want) == len(got) == 6 and np.allclose(want, got, atol=1e-3), (want, got)


def test_a_world_size_that_cannot_make_the_global_batch_is_refused(tmp_path):
    config = PretrainConfig(output=str(tmp_path), batch_size=8, accum_iter=1)
    state = {"world_size": 2, "accum_iter": 1, "micro_batch": 4}
    trainer = Trainer(config, tmp_path, DistContext(0, 4, 0, torch.device("cpu")))
    with pytest.raises(CsptError, match=r"global batch of 16 \(8 x 1 accumulation x 2\); 4 processes of 8"):
        trainer.continue_on(state)
    trainer = Trainer(config, tmp_path, DistContext(0, 1, 0, torch.device("cpu")))
    assert trainer.continue_on(state)["micro_batch"] == 8 and trainer.config.accum_iter == 2
    trainer = Trainer(PretrainConfig(batch_size=4, accum_iter=2), tmp_path, DistContext(0, 2, 0, torch.device("cpu")))
    assert trainer.continue_on({"world_size": 1, "accum_iter": 4, "micro_batch": 8})["micro_batch"] == 4
    assert trainer.config.accum_iter == 2


def test_batch_norm_batches_count_processes_only_where_batch_norm_is_synchronised(monkeypatch):
    from cspt.config import SegmentConfig
    from cspt.tasks import segment

    config = SegmentConfig(batch_size=1, palette="dubai", images=["x"])
    with pytest.raises(CsptError, match="--batch-size 1: the pyramid and heads use BatchNorm"):
        segment.check_batch_norm_batch(config)
    monkeypatch.setenv("WORLD_SIZE", "16")
    with pytest.raises(CsptError, match="synchronised over processes on GPUs only"):
        segment.check_batch_norm_batch(config)
    monkeypatch.setattr(segment, "resolve_device", lambda device: "cuda")
    segment.check_batch_norm_batch(config)  # the paper's two-node line: 1 crop on each of 16 GPUs
