"""Atomic checkpoint files in ``RUN_DIR/checkpoints``: step-numbered ones and ``last.pt``."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from cspt.atomic import atomic_torch_save, atomic_write

log = logging.getLogger(__name__)

LAST = "last.pt"


class CheckpointManager:
    """Writes ``step_XXXXXXXX.pt`` files (keeping the newest ``keep``) and ``last.pt``."""

    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory)
        self.keep = max(0, keep)

    def step_path(self, step: int) -> Path:
        return self.directory / f"step_{step:08d}.pt"

    def save(self, state: dict, step: int) -> Path:
        """Write the state as ``last.pt`` and (if kept) ``step_N.pt``; prune the oldest."""
        last = self.directory / LAST
        atomic_torch_save(state, last)
        if self.keep:
            target = self.step_path(step)
            atomic_write(target, lambda tmp: _link_or_copy(last, tmp))
            for old in self.step_files()[: -self.keep]:
                old.unlink(missing_ok=True)
        return last

    def step_files(self) -> list[Path]:
        return sorted(self.directory.glob("step_*.pt"))

    def candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first."""
        files = [self.directory / LAST] if (self.directory / LAST).is_file() else []
        return files + self.step_files()[::-1]

    def load_latest(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads (a damaged one is reported and passed over)."""
        for path in self.candidates():
            try:
                return path, torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a damaged file: fall back to an older one
                log.warning("cannot load %s (%s); trying an older checkpoint", path, err)
        return None


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
