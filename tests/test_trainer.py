"""The training engine's step on a model small enough to reason about."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cspt.config import TrainConfig
from cspt.engine.distributed import DistContext
from cspt.engine.sampler import SeededBatchSampler
from cspt.engine.trainer import Task, Trainer, resolve_precision
from cspt.errors import CsptError


class Points(torch.utils.data.Dataset):
    """16 points of y = 2x + 1; the point ``poisoned`` has a NaN input."""

    def __init__(self, poisoned: int):
        self.poisoned = poisoned

    def __len__(self) -> int:
        return 16

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, _ = item
        x = torch.tensor([float("nan") if index == self.poisoned else index / 16])
        return {"image": x, "target": 2 * x + 1}


class LineTask(Task):
    def __init__(self, config: TrainConfig, poisoned: int):
        self.config = config
        self.poisoned = poisoned

    def build_model(self, load_init: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(1, 1)

    def train_data(self) -> tuple[Points, object]:
        return Points(self.poisoned), lambda samples: {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        return ((model(batch["image"]) - batch["target"]) ** 2).mean()


class AutocastProbe(LineTask):
    """Records, step by step, the CPU autocast dtype the step ran under (False: none)."""

    def __init__(self, config: TrainConfig):
        super().__init__(config, poisoned=-1)
        self.seen: list[torch.dtype | bool] = []

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return super().training_step(model, batch, device)


def test_bf16_trains_under_cpu_autocast_when_asked_auto_stays_fp32_on_the_cpu_and_fp16_needs_a_gpu(tmp_path: Path):
    for precision, expected in (("bf16", torch.bfloat16), ("auto", False), ("fp32", False)):
        config = TrainConfig(epochs=1, batch_size=4, warmup_epochs=0, log_every=100, num_workers=0, device="cpu",
                             precision=precision)
        task = AutocastProbe(config)
        Trainer(config, tmp_path / precision, DistContext(0, 1, 0, torch.device("cpu"))).fit(task)
        assert task.seen == [expected] * 4, precision
    with pytest.raises(CsptError, match="--precision fp16 needs a GPU; use bf16 or fp32 on the CPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_a_step_whose_loss_is_not_finite_is_skipped_on_the_device_and_reported_at_the_next_log(tmp_path: Path):
    """The step has no host sync: the update is skipped inside fused AdamW, and the run stops
    at the next log with the step named. Every step of the epoch's first three is swept."""
    config = TrainConfig(epochs=1, batch_size=4, blr=256 * 0.1, warmup_epochs=0, weight_decay=0.0, log_every=100,
                         checkpoint_every=1, keep_checkpoints=10, num_workers=0, device="cpu")
    sampler = SeededBatchSampler(16, 4, config.seed)
    sampler.set_epoch(0)
    batches = [[index for index, _ in batch] for batch in sampler]
    for bad_step in range(3):  # the fourth step is the epoch's last: the run stops before its checkpoint
        run_dir = tmp_path / f"bad{bad_step}"
        with pytest.raises(CsptError, match=f"not finite at step {bad_step} .*1 update"):
            Trainer(config, run_dir, DistContext(0, 1, 0, torch.device("cpu"))).fit(
                LineTask(config, batches[bad_step][0]))
        states = {step: torch.load(run_dir / "checkpoints" / f"step_{step:08d}.pt", weights_only=True)
                  for step in range(1, 4)}
        for state in states.values():
            assert all(torch.isfinite(v).all() for v in state["model"].values())
        after, before = states[bad_step + 1], states.get(bad_step)
        if before is not None:  # the skipped step changed neither the weights nor AdamW's moments and count
            assert all(torch.equal(after["model"][k], before["model"][k]) for k in after["model"])
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(after["optimizer"]["state"][0][key], before["optimizer"]["state"][0][key])
        next_state = states.get(bad_step + 2)
        if next_state is not None:  # and training went on
            assert not torch.equal(next_state["model"]["weight"], after["model"]["weight"])
