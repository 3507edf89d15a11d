"""Progress bars of inference over scenes: one for the scenes, one for the windows of the current scene, each
with its count and an ETA. Quiet when stderr is not a terminal (logs, CI, pipes: tqdm's ``disable=None``) and
in every process but the main one of a process group."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

from cspt.engine.distributed import is_main_process

T = TypeVar("T")


def scenes_progress(items: Iterable[T], total: int | None = None, what: str = "scenes") -> Iterator[T]:
    """``items``, counted on a bar named ``what`` that stays when done."""
    yield from tqdm(items, total=total, desc=what, unit=what.rstrip("s"), disable=_quiet(), dynamic_ncols=True)


def windows_progress(total: int) -> tqdm:
    """A bar of a scene's ``total`` windows (``update(n)`` as they run), cleared when the scene is done."""
    return tqdm(total=total, desc="windows", unit="window", leave=False, disable=_quiet(), dynamic_ncols=True)


def _quiet() -> bool | None:
    return None if is_main_process() else True
