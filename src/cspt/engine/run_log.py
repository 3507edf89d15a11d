"""The run's log: ``log.jsonl`` lines, TensorBoard scalars when installed, console lines."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("cspt")


class RunLog:
    """Appends one JSON object per record to ``RUN_DIR/log.jsonl`` (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "log.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                self.writer = None

    def write(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None and step is not None:
            group = record.get("event", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "step", "epoch"):
                    self.writer.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``log.jsonl``."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log_after(run_dir: str | Path, step: int) -> None:
    """Drop records of steps after ``step`` (they are trained again after a resume)."""
    path = Path(run_dir) / "log.jsonl"
    if path.is_file():
        kept = [r for r in read_log(run_dir) if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
