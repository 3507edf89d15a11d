"""Run directories: where a run's config lives, and whether starting it means resuming it."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from cspt.config import TrainConfig, config_to_dict, make_config, read_yaml
from cspt.engine.train_states import CheckpointManager
from cspt.errors import CsptError

C = TypeVar("C", bound=TrainConfig)

#: settings that may change when a run is continued
RESUMABLE_KEYS = {"epochs", "num_workers", "device", "checkpoint_every", "keep_checkpoints",
                  "log_every", "vis_every", "eval_every", "output", "precision",
                  "probe_every", "stop_on_plateau", "dist_timeout", "compile", "max_image_pixels"}
#: settings a stage derives from the data, which runs of older releases did not record
DERIVED_KEYS = {"band_names", "wavelengths", "band_gsd"}
CONFIG_NAME = "config.yaml"
#: held (``flock``) by the process that trains into a run directory
LOCK_NAME = ".lock"


def run_dir_of(resume: str | Path) -> Path:
    """The run directory named by ``--resume``: the folder itself, or a checkpoint's run."""
    path = Path(resume)
    if path.is_dir():
        return path
    if not path.exists():
        raise CsptError(f"{path}: no such run directory or checkpoint to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or needs unpickling code: certainly not a cspt training state
        state = None
    if not isinstance(state, dict) or state.get("format") != "cspt-train-state":
        raise CsptError(f"{path}: a weights-only checkpoint cannot be resumed (no optimizer state, "
                        "schedule or data position); to start from its weights use --init")
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint to resume from."""
    return bool(CheckpointManager(run_dir / "checkpoints", 0).candidates())


def config_for_resume(cls: type[C], run_dir: Path, overrides: dict[str, Any]) -> C:
    """The saved config of ``run_dir`` with the changes a continued run may make."""
    saved_path = run_dir / CONFIG_NAME
    if not saved_path.is_file() or not has_checkpoint(run_dir):
        raise CsptError(f"{run_dir}: no checkpoint to resume from (needs {CONFIG_NAME} and checkpoints/)")
    saved = read_yaml(saved_path)
    config = make_config(cls, {**saved, **overrides, "output": str(run_dir)}, str(saved_path))
    check_same_run(saved, config, run_dir)
    return config


def check_same_run(saved: dict[str, Any], config: TrainConfig, run_dir: Path) -> None:
    """Refuse to continue a run under settings that would make it a different run."""
    new = config_to_dict(config)
    defaults = config_to_dict(type(config)())
    derived = {k for k in DERIVED_KEYS if k not in saved}  # what older releases did not record
    try:  # the saved values as this release reads them (a band number in YAML is a band's name now)
        saved = config_to_dict(make_config(type(config), saved, str(run_dir / CONFIG_NAME)))
    except CsptError:
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}  # options added since
    changed = sorted(k for k in set(saved) | set(new)
                     if k not in RESUMABLE_KEYS and k not in derived and saved.get(k) != new.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        raise CsptError(f"{run_dir}: holds a run with other settings ({detail}); "
                        "use a new --output, or continue it with --resume and the same settings")


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run saved in its directory, as a dict; None when it has none."""
    path = run_dir / CONFIG_NAME
    return read_yaml(path) if path.is_file() else None



@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` exclusively while a process trains into ``run_dir``.

    A second process (a double launch, a scheduler's requeue while the first still runs)
    is refused in one line naming the holder. The kernel drops the lock when its process
    ends, however it ends, so a crash never leaves a stale lock behind.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CsptError(f"{run_dir}: another process trains into this run directory ({holder}); "
                        "wait for it to end, or give another --output") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
