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
    # the GPU goal: ViT-B/16 over 50,000 JPEGs of mixed sizes made from the shared images, then shards of them
    python benchmarks/loader_overhead.py --device cuda --config configs/pretrain/cspt_vit_base.yaml \
        --make-pool 50000 --pool runs/pool --compile --num-workers 15 [--decode-on device] [--shards]

``--make-pool N`` writes N randomly resized JPEG copies (256-1024 px on the long side)
of the images under ``--data`` into ``--pool`` once, and measures on them; ``--shards``
packs that pool into tar shards (``cspt shards make``) and measures on those instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from cspt.config import PretrainConfig, make_config, read_yaml
from cspt.data.files import find_images
from cspt.data.shards import make_shards
from cspt.data.unlabelled import collate
from cspt.engine.distributed import DistContext, resolve_device
from cspt.engine.loading import ThreadedBatches, training_batches
from cspt.engine.optim import adamw, param_groups_weight_decay
from cspt.engine.trainer import Trainer, flush_denormals_on_cpu, resolve_precision
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
        device = torch.device(resolve_device(self.config.device))
        batch = collate_fn([dataset[(i, i)] for i in range(self.config.batch_size)])
        self.images = self.batch_images(batch, device)
        self.ids_shuffle = batch["ids_shuffle"].to(device)
        self.steps_per_epoch = len(dataset) // self.config.batch_size
        model = MaskedAutoencoderViT(arch_of(self.config), self.config.mask_ratio,
                                     self.config.norm_pix_loss).to(device).train()
        self.optimizer = adamw(param_groups_weight_decay(model, self.config.weight_decay), self.config.betas)
        self.model = torch.compile(model) if self.config.compile else model
        self.autocast = resolve_precision(self.config.precision, device)
        self.pure_steps(3)  # warm-up (and compilation)
        return dataset, collate_fn

    def pure_steps(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps (forward, backward, AdamW) on the batch already on the device."""
        times = []
        device = self.images.device
        for _ in range(steps):
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
                loss, _, _ = self.model(self.images, ids_shuffle=self.ids_shuffle)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
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
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step (both measures)")
    parser.add_argument("--decode-on", default="loader", choices=["loader", "device"])
    parser.add_argument("--make-pool", type=int, metavar="N", help="measure on N resized JPEG copies of --data")
    parser.add_argument("--pool", default="runs/loader_pool", help="where --make-pool writes (kept for reruns)")
    parser.add_argument("--shards", action="store_true", help="measure on tar shards of the pool")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = args.data
    if args.make_pool:
        data = str(make_pool(Path(args.data), Path(args.pool) / "jpeg", args.make_pool))
    if args.shards:
        folder = Path(args.pool) / "shards"
        shards = sorted(folder.glob("shard-*.tar")) or make_shards(find_images([data]), folder, 256 << 20)
        data = f"{folder}/shard-{{000000..{len(shards) - 1:06d}}}.tar"
    recipe = read_yaml(args.config)
    values = {**recipe, "data": [data], "epochs": args.epochs + 1, "vis_every": 0, "checkpoint_every": 0,
              "device": args.device, "num_workers": args.num_workers, "precision": args.precision,
              "compile": args.compile, "decode_on": args.decode_on,
              "batch_size": args.batch_size or recipe.get("batch_size", 64)}
    config = resolve_config(make_config(PretrainConfig, values, args.config))
    flush_denormals_on_cpu(torch.device(args.device))
    with tempfile.TemporaryDirectory() as folder:
        config = dataclasses.replace(config, output=folder)
        task = TimedPretrainTask(config)
        with distributed_run(config, Path(folder)) as dist:
            Trainer(config, Path(folder), dist).fit(task)
        epochs = epoch_times(Path(folder), task.pause_seconds)
    steps, step = task.steps_per_epoch, statistics.median(task.step_seconds)
    context = DistContext(0, 1, 0, torch.device(args.device))
    loader = training_batches(task.dataset, None, collate, args.num_workers, context)
    loading = (f"{loader.threads} loader threads between steps" if isinstance(loader, ThreadedBatches)
               else f"{loader.num_workers} loader processes")
    epoch = statistics.median(epochs)
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.machine()
    print(f"device: {device}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"{Path(data).name}, {steps} steps of {config.batch_size} per epoch, {loading}; "
          f"decode on the {args.decode_on}, precision {args.precision}{', compiled' if args.compile else ''}")
    print(f"epoch: {epoch:.2f} s (epochs: {', '.join(f'{t:.2f}' for t in epochs)}); "
          f"{steps * config.batch_size / epoch:.0f} img/s")
    print(f"model steps: {steps} x {step * 1000:.1f} ms = {steps * step:.2f} s; {config.batch_size / step:.0f} img/s")
    print(f"ratio: {epoch / (steps * step):.2f}")


def make_pool(source: Path, target: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs resized from the images under ``source`` (long side 256-1024 px), written once."""
    if target.is_dir() and len(list(target.glob("*.jpg"))) >= count:
        return target
    target.mkdir(parents=True, exist_ok=True)
    files = find_images([str(source)])
    rng = random.Random(seed)
    jobs = [(files[i % len(files)], rng.randint(256, 1024), target / f"{i:07d}.jpg") for i in range(count)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_copy, jobs, chunksize=256))
    return target


def write_copy(job: tuple[Path, int, Path]) -> None:
    source, side, target = job
    with Image.open(source) as img:
        img = img.convert("RGB")
        scale = side / max(img.size)
        img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                   Image.Resampling.BICUBIC).save(target, quality=90)


if __name__ == "__main__":
    main()
