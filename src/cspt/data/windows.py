"""Where sliding windows start along an axis of a scene (training tiles, inference windows, fixed crops)."""

from __future__ import annotations


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``length``; the last window ends at the edge (none when it fits)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]
