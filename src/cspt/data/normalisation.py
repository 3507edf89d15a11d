"""Per-band input statistics: the defaults, and the one rule that picks a stage's mean/std."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cspt.errors import CsptError

log = logging.getLogger("cspt")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_normalisation(bands: int) -> tuple[list[float], list[float]]:
    """ImageNet statistics for RGB; a neutral 0.5 / 0.25 per band otherwise."""
    if bands == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [0.5] * bands, [0.25] * bands


def resolve_normalisation(mean: Sequence[float] | None, std: Sequence[float] | None, bands: int,
                          recorded: tuple[list[float], list[float]] | None = None,
                          recorded_with: str | Path | None = None) -> tuple[list[float], list[float]]:
    """The per-band mean/std a stage feeds its encoder (every stage and tool asks here).

    ``--mean``/``--std`` when given; else ``recorded``, the statistics the weights were
    trained with (a cspt run's ``encoder.json`` records them), when they are for ``bands``
    bands; else ImageNet's for RGB and 0.5/0.25 otherwise.
    """
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) != bands:
            raise CsptError(f"{flag}: {len(values)} value(s) for a model of {bands} band(s) (--in-chans, --bands "
                            "or --sensor say how many)")
    if recorded and len(recorded[0]) != bands:
        log.warning("normalisation: %s records %d-band statistics, the model has %d bands: not used",
                    recorded_with, len(recorded[0]), bands)
        recorded = None
    fallback = recorded or default_normalisation(bands)
    return list(mean if mean is not None else fallback[0]), list(std if std is not None else fallback[1])


def log_normalisation(mean: Sequence[float], std: Sequence[float],
                      recorded: tuple[list[float], list[float]] | None = None,
                      recorded_with: str | Path | None = None) -> None:
    """Say which statistics a stage normalises with, and where they come from."""
    if recorded and (list(mean), list(std)) == (list(recorded[0]), list(recorded[1])):
        source = f"the statistics recorded with {recorded_with}"
    elif (list(mean), list(std)) == default_normalisation(len(mean)):
        source = "ImageNet's (the RGB default)" if len(mean) == 3 else "the default 0.5/0.25 per band"
    else:
        source = "--mean/--std"
    log.info("normalisation: mean %s, std %s, from %s", [round(v, 4) for v in mean], [round(v, 4) for v in std],
             source)
