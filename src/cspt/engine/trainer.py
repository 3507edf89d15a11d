"""One training loop for every task: DDP, autocast, accumulation, schedule, checkpoints, resume.

A task supplies the model, the dataset and what one step computes; the trainer owns
everything else. Resuming is exact: the data order and every sample's randomness are
functions of (seed, epoch, position), and the global RNG is reseeded from (seed, step,
rank) before every optimizer step, so a run continued from a checkpoint takes the same
steps as one that never stopped.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cspt.config import TrainConfig, config_to_dict
from cspt.engine.checkpointing import CheckpointManager
from cspt.engine.distributed import DistContext, all_gather_objects, all_reduce_mean
from cspt.engine.optim import param_groups_weight_decay, warmup_cosine
from cspt.engine.run_log import RunLog, truncate_log_after
from cspt.engine.sampler import SeededBatchSampler
from cspt.errors import CsptError

log = logging.getLogger("cspt")

CHECKPOINT_FORMAT = "cspt-train-state"


class Task(Protocol):
    """What a task gives the trainer."""

    config: TrainConfig

    def build_model(self, load_init: bool) -> nn.Module:
        """The model, with ``--init`` weights loaded unless resuming."""

    def train_data(self) -> tuple[Dataset, Callable[[list], Any]]:
        """The dataset (indexed by ``(index, seed)``) and its collate function."""

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        """The loss of one micro-batch."""

    def on_fit_start(self, model: nn.Module, run_dir: Path) -> None:
        """Main process only, on a fresh (not resumed) run: e.g. a "before" picture."""

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> None:
        """Main process only: per-epoch outputs (e.g. reconstruction grids)."""

    def on_fit_end(self, model: nn.Module, run_dir: Path) -> None:
        """Main process only: final outputs (e.g. the exported encoder)."""


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision != "fp32" and device.type != "cuda":
        raise CsptError(f"--precision {precision} needs a GPU; use fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def default_num_workers(dist: DistContext) -> int:
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, dist.world_size if dist.device.type == "cpu" else 1) - 1))


class Trainer:
    """Runs a task for ``config.epochs`` in ``run_dir``, resuming from its checkpoints."""

    def __init__(self, config: TrainConfig, run_dir: Path, dist: DistContext):
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = dist
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", config.keep_checkpoints)
        self.autocast_dtype = resolve_precision(config.precision, dist.device)
        self.skipped: set[str] = set()

    def resume_state(self) -> dict | None:
        """The newest training state in the run directory, if any."""
        found = self.checkpoints.load_latest()
        if found is None:
            return None
        path, state = found
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CsptError(f"{path}: not a cspt training state; cannot resume from it")
        log.info("resuming from %s (epoch %d, step %d)", path, state["epoch"], state["step"])
        return state

    def fit(self, task: Task) -> nn.Module:
        cfg, dist = self.config, self.dist
        state = self.resume_state()
        torch.manual_seed(cfg.seed)
        model = task.build_model(load_init=state is None).to(dist.device)
        dataset, collate = task.train_data()
        sampler = SeededBatchSampler(len(dataset), cfg.batch_size, cfg.seed, dist.rank, dist.world_size)
        micro_per_epoch = len(sampler) - len(sampler) % cfg.accum_iter
        if micro_per_epoch == 0:
            raise CsptError(f"an epoch has {len(sampler)} batches, fewer than --accum-iter {cfg.accum_iter}")
        steps_per_epoch = micro_per_epoch // cfg.accum_iter
        total_steps = steps_per_epoch * cfg.epochs
        warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        effective_batch = cfg.batch_size * cfg.accum_iter * dist.world_size
        base_lr = cfg.lr if cfg.lr is not None else cfg.blr * effective_batch / 256

        optimizer = torch.optim.AdamW(
            param_groups_weight_decay(model, cfg.weight_decay), lr=base_lr, betas=tuple(cfg.betas)
        )
        scaler = torch.amp.GradScaler(dist.device.type, enabled=self.autocast_dtype == torch.float16)
        epoch, micro_start, step = 0, 0, 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            epoch, micro_start, step = state["epoch"], state["micro_batch"], state["step"]
            if dist.is_main:
                truncate_log_after(self.run_dir, step)
        if dist.is_main:
            log.info(
                "training %d epochs x %d steps; effective batch %d (%d x %d accumulation x %d processes), "
                "lr %.3g, %s on %s", cfg.epochs, steps_per_epoch, effective_batch, cfg.batch_size,
                cfg.accum_iter, dist.world_size, base_lr,
                "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).split(".")[-1],
                dist.device,
            )
        net: nn.Module = model
        if dist.distributed:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)

        if state is None and dist.is_main:
            task.on_fit_start(model, self.run_dir)
        run_log = RunLog(self.run_dir, dist.is_main)
        workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(dist)
        progress = tqdm(total=total_steps, initial=step, disable=not dist.is_main or None,
                        dynamic_ncols=True, file=sys.stderr)
        try:
            while epoch < cfg.epochs:
                sampler.set_epoch(epoch, micro_start)
                loader = DataLoader(
                    dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                    pin_memory=dist.device.type == "cuda", persistent_workers=False,
                )
                step = self._train_epoch(task, net, model, loader, optimizer, scaler, epoch, micro_start,
                                         micro_per_epoch, step, total_steps, warmup_steps, base_lr,
                                         run_log, progress)
                micro_start = 0
                self._end_epoch(task, model, epoch, step, run_log)
                epoch += 1
                self._save(model, optimizer, scaler, epoch, 0, step)
            if dist.is_main:
                task.on_fit_end(model, self.run_dir)
        finally:
            progress.close()
            run_log.close()
        return model

    def _train_epoch(self, task: Task, net: nn.Module, model: nn.Module, loader: DataLoader,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, epoch: int,
                     micro_start: int, micro_per_epoch: int, step: int, total_steps: int,
                     warmup_steps: int, base_lr: float, run_log: RunLog, progress: tqdm) -> int:
        cfg, dist = self.config, self.dist
        loss_sum = torch.zeros((), device=dist.device)
        interval_steps, interval_images, interval_start = 0, 0, time.perf_counter()
        net.train()
        for micro, batch in enumerate(loader, start=micro_start):
            if micro >= micro_per_epoch:
                break
            self._report_skipped(batch.pop("skipped", []))
            first, last = micro % cfg.accum_iter == 0, (micro + 1) % cfg.accum_iter == 0
            if first:
                torch.manual_seed((cfg.seed * 1_000_003 + step) * 4096 + dist.rank)
                lr = warmup_cosine(step, total_steps, warmup_steps, base_lr, cfg.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            sync = nullcontext() if last or not dist.distributed else net.no_sync()
            autocast = torch.autocast(dist.device.type, dtype=self.autocast_dtype,
                                      enabled=self.autocast_dtype is not None)
            with sync:
                with autocast:
                    loss = task.training_step(net, batch, dist.device)
                if not torch.isfinite(loss):
                    raise CsptError(f"loss is {loss.item()} at step {step}; lower the learning rate")
                scaler.scale(loss / cfg.accum_iter).backward()
            loss_sum += loss.detach() / cfg.accum_iter
            interval_images += len(batch["image"]) * dist.world_size
            if not last:
                continue
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_steps += 1
            progress.update(1)
            if step % cfg.log_every == 0 or micro + 1 == micro_per_epoch:
                mean_loss = all_reduce_mean(loss_sum / interval_steps).item()
                elapsed = time.perf_counter() - interval_start
                record = {"step": step, "epoch": epoch + (micro + 1) / micro_per_epoch,
                          "loss": mean_loss, "lr": lr, "img_per_s": interval_images / elapsed}
                run_log.write(record, step)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}",
                                     img_s=f"{record['img_per_s']:.1f}", epoch=epoch)
                loss_sum.zero_()
                interval_steps, interval_images, interval_start = 0, 0, time.perf_counter()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and micro + 1 < micro_per_epoch:
                self._save(model, optimizer, scaler, epoch, micro + 1, step)
        return step

    def _report_skipped(self, messages: list[str]) -> None:
        for message in messages:
            if message not in self.skipped:
                self.skipped.add(message)
                log.warning("skipped unreadable image: %s", message)

    def _end_epoch(self, task: Task, model: nn.Module, epoch: int, step: int, run_log: RunLog) -> None:
        skipped = set().union(*all_gather_objects(self.skipped))
        if self.dist.is_main:
            run_log.write({"event": "epoch_end", "epoch": epoch + 1, "step": step,
                           "skipped_images": len(skipped)})
            log.info("epoch %d/%d done (step %d)%s", epoch + 1, self.config.epochs, step,
                     f"; {len(skipped)} unreadable images skipped so far" if skipped else "")
            task.on_epoch_end(model, epoch, self.run_dir)

    def _save(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              epoch: int, micro_batch: int, step: int) -> None:
        if not self.dist.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "micro_batch": micro_batch,
            "step": step,
            "config": config_to_dict(self.config),
        }
        self.checkpoints.save(state, step)
