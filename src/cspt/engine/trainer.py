"""One training loop for every task: DDP, autocast, accumulation, schedule, checkpoints, resume.

A task supplies the model, the dataset and what one step computes; the trainer owns
everything else. Resuming is exact: the data order and every sample's randomness are
functions of (seed, epoch, position), and the global RNG is reseeded from (seed, step,
rank) before every optimizer step, so a run continued from a checkpoint takes the same
steps as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from cspt.config import TrainConfig, config_to_dict
from cspt.engine.distributed import DistContext, all_gather_objects, all_reduce_max, all_reduce_mean
from cspt.engine.loading import training_batches
from cspt.engine.optim import adamw, param_groups_weight_decay, warmup_cosine, warmup_poly
from cspt.engine.run_log import RunLog, truncate_log_after
from cspt.engine.sampler import SeededBatchSampler
from cspt.engine.train_states import CheckpointManager
from cspt.errors import CsptError

log = logging.getLogger("cspt")

CHECKPOINT_FORMAT = "cspt-train-state"


class Task:
    """What a task gives the trainer: model, data and step, plus optional hooks.

    Subclasses implement the first three; the hooks default to doing nothing. The
    trainer sets ``dist`` (which process this is) before it calls any of them.
    """

    config: TrainConfig
    dist: DistContext = DistContext(0, 1, 0, torch.device("cpu"))

    def build_model(self, load_init: bool) -> nn.Module:
        """The model, with ``--init`` weights loaded unless resuming."""
        raise NotImplementedError

    def train_data(self) -> tuple[Dataset, Callable[[list], Any]]:
        """The dataset (indexed by ``(index, seed)``) and its collate function."""
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        """The loss of one micro-batch."""
        raise NotImplementedError

    def loss_parts(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Named parts of the last micro-batch's loss (detached, on the device), logged beside it as
        ``loss_NAME``."""
        return {}

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimizer parameter groups (a group's ``lr_scale`` multiplies the scheduled lr)."""
        return param_groups_weight_decay(model, self.config.weight_decay)

    def on_fit_start(self, model: nn.Module, run_dir: Path) -> None:
        """Main process only, on a fresh (not resumed) run: e.g. a "before" picture."""

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Every process, after each optimizer step (e.g. an EMA update)."""

    def on_epoch_end(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, Any] | None:
        """Every process, after each epoch: evaluations shard over the processes, the main one writes.

        The main process's returned metrics go into the log.
        """
        return None

    def on_fit_end(self, model: nn.Module, run_dir: Path) -> None:
        """Every process, at the end: final outputs (the main process writes them, e.g. the encoder)."""

    def stop_reason(self) -> str | None:
        """Main process, after :meth:`on_epoch_end`: why to end the run early (None: go on)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Task state that a resumed run needs (e.g. EMA weights, best score)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when resuming."""


def seed_step(seed: int) -> None:
    """Seed torch, numpy and ``random`` (timm's mixup and augmentations draw from all three)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def flush_denormals_on_cpu(device: torch.device) -> None:
    """Treat denormal floats as zero in CPU kernels (process-wide).

    AdamW's second-moment estimates of small gradients sink into the denormal range,
    where x86 arithmetic is many times slower; flushing them changes values below 1e-38
    only. Measured: a ViT-B MAE step on 2 CPU cores 15% faster.
    """
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast beats fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@functools.cache
def warn_emulated_bf16() -> None:
    """Warn (once per process) that bf16 on this CPU is emulated and likely slower than fp32."""
    log.warning("--precision bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): emulated, likely "
                "slower than fp32")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32.

    ``auto`` is bf16 on a GPU that supports it and fp32 on the CPU; bf16 on the CPU is a choice
    (about 1.4 times faster for the NEON detector on a CPU with bf16 instructions), fp16 needs a GPU.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type != "cuda":
        raise CsptError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warn_emulated_bf16()
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass
class Schedule:
    """The step budget and learning rate of a run."""

    micro_per_epoch: int  #: micro-batches per epoch (a multiple of accum_iter)
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    base_lr: float
    min_lr: float
    shape: str = "cosine"

    def lr(self, step: int) -> float:
        decay = warmup_poly if self.shape == "poly" else warmup_cosine
        return decay(step, self.total_steps, self.warmup_steps, self.base_lr, self.min_lr)


@dataclass
class Training:
    """What changes as the run goes: the model (bare and wrapped), optimizer, scaler, position."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int = 0
    micro_batch: int = 0
    step: int = 0


def nonfinite_message(step: int, count: int) -> str:
    """The error for a loss that is not finite at ``step``, after ``count`` skipped updates."""
    return (f"the loss is not finite at step {step} (on at least one process; {count} update(s) skipped, none "
            "applied); lower the learning rate")


class Trainer:
    """Runs a task for ``config.epochs`` in ``run_dir``, resuming from its checkpoints."""

    def __init__(self, config: TrainConfig, run_dir: Path, dist: DistContext):
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = dist
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", config.keep_checkpoints)
        self.autocast_dtype = resolve_precision(config.precision, dist.device)
        flush_denormals_on_cpu(dist.device)
        self.skipped: set[str] = set()
        self.compiled_logged = False

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

    def schedule(self, batches_per_epoch: int) -> Schedule:
        cfg = self.config
        micro_per_epoch = batches_per_epoch - batches_per_epoch % cfg.accum_iter
        if micro_per_epoch == 0:
            raise CsptError(f"an epoch has {batches_per_epoch} batches, fewer than --accum-iter {cfg.accum_iter}")
        steps_per_epoch = micro_per_epoch // cfg.accum_iter
        effective_batch = cfg.batch_size * cfg.accum_iter * self.dist.world_size
        base_lr = cfg.lr if cfg.lr is not None else cfg.blr * effective_batch / 256
        schedule = Schedule(micro_per_epoch, steps_per_epoch, steps_per_epoch * cfg.epochs,
                            round(cfg.warmup_epochs * steps_per_epoch), base_lr, cfg.min_lr, cfg.lr_schedule)
        if self.dist.is_main:
            precision = "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).split(".")[-1]
            log.info("training %d epochs x %d steps; effective batch %d (%d x %d accumulation x %d processes), "
                     "lr %.3g, %s on %s", cfg.epochs, steps_per_epoch, effective_batch, cfg.batch_size,
                     cfg.accum_iter, self.dist.world_size, base_lr, precision, self.dist.device)
        return schedule

    def setup(self, task: Task, model: nn.Module, state: dict | None) -> Training:
        """Optimizer and scaler for ``model``, restored from ``state`` when resuming; DDP wrapping."""
        cfg, dist = self.config, self.dist
        if dist.distributed and dist.device.type == "cuda":  # BatchNorm over the global batch (dense heads)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = adamw(task.param_groups(model), cfg.betas)
        scaler = torch.amp.GradScaler(dist.device.type, enabled=self.autocast_dtype == torch.float16)
        training = Training(model, model, optimizer, scaler)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            task.load_state_dict(state.get("task", {}))
            training.epoch, training.micro_batch, training.step = state["epoch"], state["micro_batch"], state["step"]
            if dist.is_main:
                truncate_log_after(self.run_dir, training.step)
        if dist.distributed:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            training.net = DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            training.net = torch.compile(training.net)
        return training

    def continue_on(self, state: dict) -> dict:
        """Continue ``state`` on this world size: the same global batch (by accumulation) and sample order.

        The global batch is ``batch_size x accum_iter x processes``; a resume on another
        number of processes keeps it by changing the accumulation (the schedule, the
        lr and the data position follow from it), or is refused when it cannot.
        """
        cfg, world = self.config, self.dist.world_size
        saved_world, saved_accum = state.get("world_size", world), state.get("accum_iter", cfg.accum_iter)
        if (saved_world, saved_accum) == (world, cfg.accum_iter):
            return state
        global_batch = cfg.batch_size * saved_accum * saved_world
        if global_batch % (cfg.batch_size * world):
            raise CsptError(
                f"{self.run_dir}: trained on {saved_world} process(es) with a global batch of {global_batch} "
                f"({cfg.batch_size} x {saved_accum} accumulation x {saved_world}); {world} processes of "
                f"{cfg.batch_size} cannot make that batch: resume on a number of processes that divides "
                f"{global_batch // cfg.batch_size}")
        accum = global_batch // (cfg.batch_size * world)
        self.config = dataclasses.replace(cfg, accum_iter=accum)
        if self.dist.is_main:
            log.info("resuming on %d process(es) instead of %d: accumulation %d keeps the global batch of %d",
                     world, saved_world, accum, global_batch)
        return {**state, "micro_batch": state["micro_batch"] // saved_accum * accum}

    def fit(self, task: Task) -> nn.Module:
        state = self.resume_state()
        if state is not None:
            state = self.continue_on(state)
        cfg, dist = self.config, self.dist
        task.dist = dist
        torch.manual_seed(cfg.seed)
        model = task.build_model(load_init=state is None).to(dist.device)
        dataset, collate = task.train_data()
        sampler = SeededBatchSampler(len(dataset), cfg.batch_size, cfg.seed, dist.rank, dist.world_size,
                                     getattr(dataset, "groups", None))
        schedule = self.schedule(len(sampler))
        training = self.setup(task, model, state)
        if state is None and dist.is_main:
            task.on_fit_start(training.model, self.run_dir)
        run_log = RunLog(self.run_dir, dist.is_main)
        progress = tqdm(total=schedule.total_steps, initial=training.step, disable=not dist.is_main or None,
                        dynamic_ncols=True, file=sys.stderr)
        loader = training_batches(dataset, sampler, collate, cfg.num_workers, dist)
        try:
            while training.epoch < cfg.epochs and not self._stopped(task, run_log):
                sampler.set_epoch(training.epoch, training.micro_batch)
                self._train_epoch(task, training, loader, schedule, run_log, progress)
                self._end_epoch(task, training, run_log)
                training.epoch += 1
                training.micro_batch = 0
                self._save(task, training)
            task.on_fit_end(training.model, self.run_dir)
        finally:
            progress.close()
            run_log.close()
        return training.model

    def _train_epoch(self, task: Task, training: Training, loader: Iterable, schedule: Schedule,
                     run_log: RunLog, progress: tqdm) -> None:
        cfg, dist = self.config, self.dist
        optimizer, scaler = training.optimizer, training.scaler
        loss_sum = torch.zeros((), device=dist.device)
        part_sums: dict[str, torch.Tensor] = {}  #: the task's named loss parts since the last log
        nonfinite = torch.zeros((), device=dist.device)  #: micro-batches of this step whose loss was not finite
        bad_steps = torch.zeros((), device=dist.device)  #: optimizer steps skipped for it, since the last log
        first_bad = torch.full((), -1, device=dist.device)  #: the first of them
        interval_steps, interval_images, interval_start = 0, 0, time.perf_counter()
        training.net.train()
        for micro, batch in enumerate(loader, start=training.micro_batch):
            if micro >= schedule.micro_per_epoch:
                break
            self._report_skipped(batch.pop("skipped", []))
            first, last = micro % cfg.accum_iter == 0, (micro + 1) % cfg.accum_iter == 0
            if first:
                seed_step((cfg.seed * 1_000_003 + training.step) * 4096 + dist.rank)
                lr = schedule.lr(training.step)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            sync = nullcontext() if last or not dist.distributed else training.net.no_sync()
            autocast = torch.autocast(dist.device.type, dtype=self.autocast_dtype,
                                      enabled=self.autocast_dtype is not None)
            with sync:
                with autocast:
                    loss = task.training_step(training.net, batch, dist.device)
                scaler.scale(loss / cfg.accum_iter).backward()
            nonfinite += (~torch.isfinite(loss.detach())).float()
            loss_sum += loss.detach() / cfg.accum_iter
            for name, part in task.loss_parts(training.net).items():
                part_sums[name] = part_sums.get(name, 0) + part.float() / cfg.accum_iter
            interval_images += len(batch["image"]) * dist.world_size
            if not last:
                continue
            found = (all_reduce_max(nonfinite) > 0).float()  # the same on every process, still on the device
            if not getattr(optimizer, "_step_supports_amp_scaling", False) and found.item():
                raise CsptError(nonfinite_message(training.step, 1))  # an optimizer that cannot skip on the device
            bad_steps += found
            first_bad = torch.where((first_bad < 0) & (found > 0), training.step, first_bad)
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(training.model.parameters(), cfg.clip_grad)
            if scaler.is_enabled():
                scaler.step(optimizer)  # skips steps with non-finite gradients itself
                scaler.update()
            else:
                optimizer.found_inf = found  # fused AdamW skips the update (and its step count) on the device
                optimizer.step()
                del optimizer.found_inf
            optimizer.zero_grad(set_to_none=True)
            nonfinite.zero_()
            training.step += 1
            if cfg.compile and not self.compiled_logged and dist.is_main:  # the first step of this process
                self.compiled_logged = True
                log.info("compiled the training step: the first step took %.1f s, compilation included",
                         time.perf_counter() - interval_start)
            task.on_step_end(training.model, training.step)
            training.micro_batch = micro + 1
            interval_steps += 1
            progress.update(1)
            end_of_epoch = training.micro_batch == schedule.micro_per_epoch
            if training.step % cfg.log_every == 0 or end_of_epoch:  # the only host syncs of the loop
                names = sorted(part_sums)
                mean_loss, bad, first, *parts = torch.stack(
                    [all_reduce_mean(loss_sum / interval_steps), bad_steps, first_bad.float()]
                    + [all_reduce_mean(part_sums[name] / interval_steps) for name in names]).tolist()
                if bad:  # every process raises here together, none is left waiting
                    raise CsptError(nonfinite_message(int(first), int(bad)))
                elapsed = time.perf_counter() - interval_start
                epoch = training.epoch + training.micro_batch / schedule.micro_per_epoch
                record = {"step": training.step, "epoch": epoch, "loss": mean_loss,
                          **{f"loss_{name}": value for name, value in zip(names, parts)}, "lr": lr,
                          "img_per_s": interval_images / elapsed}
                run_log.write(record, training.step)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{record['img_per_s']:.1f}",
                                     epoch=training.epoch)
                loss_sum.zero_()
                part_sums.clear()
                interval_steps, interval_images, interval_start = 0, 0, time.perf_counter()
            if cfg.checkpoint_every and training.step % cfg.checkpoint_every == 0 and not end_of_epoch:
                self._save(task, training)

    def _report_skipped(self, messages: list[str]) -> None:
        for message in messages:
            if message not in self.skipped:
                self.skipped.add(message)
                log.warning("skipped unreadable image: %s", message)

    def _end_epoch(self, task: Task, training: Training, run_log: RunLog) -> None:
        skipped = set().union(*all_gather_objects(self.skipped))
        epoch = training.epoch + 1
        if self.dist.is_main:
            run_log.write({"event": "epoch_end", "epoch": epoch, "step": training.step,
                           "skipped_images": len(skipped)})
            log.info("epoch %d/%d done (step %d)%s", epoch, self.config.epochs, training.step,
                     f"; {len(skipped)} unreadable images skipped so far" if skipped else "")
        metrics = task.on_epoch_end(training.model, training.epoch, self.run_dir)
        if metrics and self.dist.is_main:
            run_log.write({"event": "eval", "epoch": epoch, "step": training.step, **metrics}, training.step)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def _stopped(self, task: Task, run_log: RunLog) -> bool:
        """Whether the task asks to end the run (the main process decides for all)."""
        reason = all_gather_objects(task.stop_reason() if self.dist.is_main else None)[0]
        if reason and self.dist.is_main and not (self.run_dir / "stopped.json").is_file():
            log.info("stopping early: %s", reason)
            run_log.write({"event": "stopped", "reason": reason})
            (self.run_dir / "stopped.json").write_text(json.dumps({"reason": reason}) + "\n")
        return bool(reason)

    def _save(self, task: Task, training: Training) -> None:
        """Checkpoint the position reached: ``epoch`` and the next ``micro_batch`` in it."""
        if not self.dist.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": training.model.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "scaler": training.scaler.state_dict(),
            "epoch": training.epoch,
            "micro_batch": training.micro_batch,
            "step": training.step,
            "world_size": self.dist.world_size,
            "accum_iter": self.config.accum_iter,
            "task": task.state_dict(),
            "config": config_to_dict(self.config),
        }
        self.checkpoints.save(state, training.step)
