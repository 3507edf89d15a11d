"""Does the data path keep up? Epoch time of a real pretraining run over pure model-step time.

Runs ``cspt pretrain`` (the tiny CPU recipe by default) over real images with the default
loading (on a CPU: threads between the steps; ``--num-workers N``: N loader processes).
An epoch's time is the time between consecutive epoch ends in the run's log, so it holds
everything an epoch costs (decoding, augmentation, loading, logging, the epoch-end
checkpoint) but not the start-up. After each epoch (time taken out of the next epoch's
measure) the same model and optimizer step on one batch already in memory, as often as
an epoch has steps: the pure model-step time, measured between the epochs so that a
machine whose speed drifts affects both alike. Prints both and ``ratio: X.XX`` (1.00:
the data path costs nothing).

    python benchmarks/loader_overhead.py                                  # RSSCN7, tiny recipe
    python benchmarks/loader_overhead.py --data /data/AID --num-workers 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cspt.config import PretrainConfig, make_config, read_yaml
from cspt.data.unlabelled import collate
from cspt.engine.distributed import DistContext
from cspt.engine.loading import ThreadedBatches, training_batches
from cspt.engine.optim import adamw, param_groups_weight_decay
from cspt.engine.trainer import Trainer, flush_denormals_on_cpu
from cspt.models.mae import MaskedAutoencoderViT
from cspt.tasks.common import arch_of, distributed_run
from cspt.tasks.pretrain import PretrainTask, resolve_config

ROOT = Path(__file__).resolve().parents[1]


class TimedPretrainTask(PretrainTask):
    """The pretraining task, plus pure model steps on a separate model after every epoch."""

    def __init__(self, config: PretrainConfig):
        super().__init__(config)
        self.pause_seconds: list[float] = []  #: time spent in the pure steps after each epoch
        self.step_seconds: list[float] = []

    def train_data(self):
        dataset, collate_fn = super().train_data()
        self.batch = collate([dataset[(i, i)] for i in range(self.config.batch_size)])
        self.steps_per_epoch = len(dataset) // self.config.batch_size
        self.model = MaskedAutoencoderViT(arch_of(self.config), self.config.mask_ratio,
                                          self.config.norm_pix_loss).train()
        self.optimizer = adamw(param_groups_weight_decay(self.model, self.config.weight_decay), self.config.betas)
        self.pure_steps(3)  # warm-up
        return dataset, collate_fn

    def pure_steps(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps (forward, backward, AdamW) on the batch in memory."""
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            loss, _, _ = self.model(self.batch["image"], noise=self.batch["noise"])
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        return times

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any] | None:
        start = time.perf_counter()
        self.step_seconds += self.pure_steps(self.steps_per_epoch)
        self.pause_seconds.append(time.perf_counter() - start)
        return super().on_epoch_end(model, epoch, run_dir)


def epoch_times(run_dir: Path, pauses: list[float]) -> list[float]:
    """Seconds between consecutive epoch ends in a run's log, less the pure steps run in between."""
    ends = [record["time"] for record in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
            if record.get("event") == "epoch_end"]
    return [b - a - pause for a, b, pause in zip(ends, ends[1:], pauses)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rsscn7"))
    parser.add_argument("--config", default=str(ROOT / "configs" / "pretrain" / "tiny_cpu.yaml"))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (one more runs first)")
    parser.add_argument("--num-workers", type=int, default=None, help="default: the engine's choice")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    values = {**read_yaml(args.config), "data": [args.data], "epochs": args.epochs + 1, "vis_every": 0,
              "checkpoint_every": 0, "device": "cpu", "num_workers": args.num_workers}
    config = resolve_config(make_config(PretrainConfig, values, args.config))
    flush_denormals_on_cpu(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        config = dataclasses.replace(config, output=folder)
        task = TimedPretrainTask(config)
        with distributed_run(config, Path(folder)) as dist:
            Trainer(config, Path(folder), dist).fit(task)
        epochs = epoch_times(Path(folder), task.pause_seconds)
    steps, step = task.steps_per_epoch, statistics.median(task.step_seconds)
    cpu = DistContext(0, 1, 0, torch.device("cpu"))
    loader = training_batches(task.dataset, None, collate, args.num_workers, cpu)
    loading = (f"{loader.threads} loader threads between steps" if isinstance(loader, ThreadedBatches)
               else f"{loader.num_workers} loader processes")
    epoch = statistics.median(epochs)
    print(f"device: {platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"{Path(args.data).name}, {steps} steps of {config.batch_size} per epoch, {loading}")
    print(f"epoch: {epoch:.2f} s (epochs: {', '.join(f'{t:.2f}' for t in epochs)})")
    print(f"model steps: {steps} x {step * 1000:.1f} ms = {steps * step:.2f} s")
    print(f"ratio: {epoch / (steps * step):.2f}")


if __name__ == "__main__":
    main()
