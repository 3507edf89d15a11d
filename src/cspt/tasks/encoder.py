"""What every stage does with the ViT encoder's settings: resolve them, and load ``--init``."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from cspt.checkpoints import Checkpoint, load_checkpoint, load_into_model
from cspt.config import EncoderConfig
from cspt.data.unlabelled import default_normalisation
from cspt.models.vit import ArchConfig, resolve_arch

log = logging.getLogger("cspt")

ARCH_KEYS = [f.name for f in dataclasses.fields(ArchConfig)]


def resolved_encoder_fields(config: EncoderConfig, init: Checkpoint | None) -> dict[str, Any]:
    """Architecture (flags > preset > ``init`` shapes) and mean/std, as config field values."""
    explicit = {k: getattr(config, k, None) for k in ARCH_KEYS}
    arch = resolve_arch(explicit, config.model, init.arch if init else {})
    mean, std = default_normalisation(arch.in_chans)
    names = {f.name for f in dataclasses.fields(config)}
    fields = {k: v for k, v in arch.to_dict().items() if k in names}
    fields["mean"] = config.mean if config.mean is not None else mean
    fields["std"] = config.std if config.std is not None else std
    return fields


def arch_of(config: EncoderConfig) -> ArchConfig:
    """The architecture a resolved config describes (decoder fields default when absent)."""
    return ArchConfig.from_dict(dataclasses.asdict(config))


def load_init_weights(model: nn.Module, config: EncoderConfig, init: Checkpoint | None,
              drop: tuple[str, ...] = ()) -> None:
    """Load ``--init`` (already read, or read now) into ``model`` and log the report.

    Keys starting with a prefix in ``drop`` (e.g. a decoder or an old head) are left out.
    """
    if not config.init:
        return
    init = init or load_checkpoint(config.init, config.trust_checkpoint)
    if drop:
        state = {k: v for k, v in init.state_dict.items() if not k.startswith(drop)}
        init = dataclasses.replace(init, state_dict=state)
    for line in load_into_model(model, init).lines():
        log.info("init: %s", line)
