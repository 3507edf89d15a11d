"""Growing a patch embedding (and an MAE's pixel prediction) from one set of bands to another.

Every method is a mixing matrix ``M`` (target bands x source bands): the new filter of target band
``t`` is ``sum_s M[t, s] * filter[s]``; a row of NaN keeps the model's fresh filter.

- ``wavelength``: each source band keeps its filter on the target band nearest to it in wavelength
  (within ``CLAIM_UM``), so a target with the source's bands and zeros elsewhere gives the source
  model's tokens exactly; every other optical band is interpolated linearly in wavelength between
  the two source filters around it (the nearest one beyond the source's range); thermal, radar and
  unknown bands start from the mean filter. :func:`matched_scale` then scales the whole filter so its
  tokens spread on the target data as the source model's tokens spread on the target's own
  counterparts of the source bands.
- ``cyclic``: timm's ``adapt_input_conv`` rule, the source filters repeated and scaled by
  source/target bands (one target band: their sum). Band metadata is not needed.
- ``random``: the source bands' filters as for ``wavelength``, every other band a fresh filter.

The MAE decoder's prediction layer grows by the same rows, each normalised to sum 1 (a prediction is
a value, not a sum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cspt.data.bands import Band, claims

#: a source band keeps its filter on a target band at most this far in wavelength (um): Sentinel-2's red
#: (0.665) and an RGB camera's (0.640) are the same band to a patch embedding
CLAIM_UM = 0.05
#: the least and the most :func:`matched_scale` changes a patch embedding by
SCALE_RANGE = (0.1, 10.0)


@dataclass(frozen=True)
class BandPlan:
    """How target bands start from source bands."""

    method: str
    mixing: torch.Tensor  #: (target, source); NaN rows: fresh filters
    claimed: dict[int, int]  #: source band -> the target band that keeps its filter

    @property
    def identity(self) -> bool:
        return self.mixing.shape[0] == self.mixing.shape[1] and bool(
            torch.equal(self.mixing, torch.eye(self.mixing.shape[0])))

    def describe(self, source: Sequence[Band] | None, target: Sequence[Band] | None) -> str:
        """One line: which target band starts from which source filters."""
        if self.method == "cyclic" or source is None or target is None:
            return f"{self.method}: {self.mixing.shape[1]} band filters repeated for {self.mixing.shape[0]} bands"
        parts = []
        for t, row in enumerate(self.mixing):
            if torch.isnan(row).any():
                parts.append(f"{target[t].name}=fresh")
                continue
            used = [f"{w:.2f}*{source[s].name}" if w != 1 else source[s].name
                    for s, w in enumerate(row.tolist()) if w]
            parts.append(f"{target[t].name}={'+'.join(used)}")
        return f"{self.method}: " + ", ".join(parts)


def plan_bands(source: Sequence[Band] | None, target: Sequence[Band] | None, method: str,
               source_chans: int, target_chans: int) -> BandPlan:
    """The mixing for ``method``; ``wavelength`` and ``random`` without wavelengths on both sides fall back to
    ``cyclic``."""
    known = source is not None and target is not None and all(b.kind != "unknown" for b in source) and any(
        b.kind != "unknown" for b in target)
    if method == "cyclic" or not known:
        mixing = torch.zeros(target_chans, source_chans)
        for t in range(target_chans):
            mixing[t, t % source_chans] = 1.0
        mixing = mixing * (source_chans / target_chans) if target_chans > 1 else torch.ones(1, source_chans)
        return BandPlan("cyclic", mixing, {})
    claimed = claims(source, target, CLAIM_UM)
    mixing = torch.full((target_chans, source_chans), float("nan"))
    for s, t in claimed.items():
        mixing[t] = F.one_hot(torch.tensor(s), source_chans).float()
    for t, band in enumerate(target):
        if t in claimed.values() or method == "random":
            continue
        mixing[t] = _interpolated(source, band) if band.kind == "optical" else torch.full((source_chans,),
                                                                                         1 / source_chans)
    return BandPlan(method, mixing, claimed)


def _interpolated(source: Sequence[Band], band: Band) -> torch.Tensor:
    """Weights on the source filters for an optical band: linear in wavelength between its two neighbours,
    the nearest one alone beyond the source's range."""
    optical = sorted((b.wavelength, s) for s, b in enumerate(source) if b.kind == "optical")
    weights = torch.zeros(len(source))
    if not optical:
        return weights.fill_(1 / len(source))
    below = [(w, s) for w, s in optical if w <= band.wavelength]
    above = [(w, s) for w, s in optical if w > band.wavelength]
    if not below or not above:
        weights[(below or above)[-1 if below else 0][1]] = 1.0
        return weights
    (w0, s0), (w1, s1) = below[-1], above[0]
    share = (band.wavelength - w0) / (w1 - w0)
    weights[s0], weights[s1] = 1 - share, share
    return weights


def adapt_filters(weight: torch.Tensor, plan: BandPlan, fresh: torch.Tensor) -> torch.Tensor:
    """A ``(dim, source, p, p)`` patch-embedding weight as ``(dim, target, p, p)``; NaN rows from ``fresh``."""
    mixed = torch.einsum("ts,dshw->dthw", torch.nan_to_num(plan.mixing), weight.float())
    keep = torch.isnan(plan.mixing).any(1)
    mixed[:, keep] = fresh.float()[:, keep]
    return mixed.to(fresh.dtype)


def adapt_prediction(weight: torch.Tensor, bias: torch.Tensor, plan: BandPlan, fresh_weight: torch.Tensor,
                     fresh_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An MAE's ``decoder_pred`` (``(p*p*source, dim)`` weight, its bias; pixels, then bands, as
    :meth:`~cspt.models.mae.MaskedAutoencoderViT.patchify` orders them) for the target bands: each target
    band's rows the mixing's row normalised to sum 1; fresh rows where the mixing says."""
    source, target = plan.mixing.shape[1], plan.mixing.shape[0]
    rows = torch.nan_to_num(plan.mixing)
    rows = rows / rows.sum(1, keepdim=True).clamp_min(1e-12)
    keep = torch.isnan(plan.mixing).any(1)
    pixels = weight.shape[0] // source
    w = torch.einsum("ts,psd->ptd", rows, weight.float().reshape(pixels, source, -1))
    b = torch.einsum("ts,ps->pt", rows, bias.float().reshape(pixels, source))
    w[:, keep] = fresh_weight.float().reshape(pixels, target, -1)[:, keep]
    b[:, keep] = fresh_bias.float().reshape(pixels, target)[:, keep]
    return w.reshape(pixels * target, -1).to(fresh_weight.dtype), b.reshape(-1).to(fresh_bias.dtype)


@torch.no_grad()
def matched_scale(source_weight: torch.Tensor, adapted_weight: torch.Tensor, plan: BandPlan,
                  images: torch.Tensor, bands: Sequence[int] | None = None) -> float:
    """The factor that gives the adapted filters' tokens on ``images`` (normalised target crops, ``(B, target,
    H, W)``) the spread of the source filters' tokens on the same crops seen as the source's bands: each
    source band its claimed target band, an unclaimed one the mean of the target bands. With ``bands`` (a
    spectral band group), the tokens of those bands' filters alone.

    1 when the target bands beyond the claimed ones are zero: the tokens are then the source model's. Kept
    within ``SCALE_RANGE``; 1 where crops without spread cannot say (constant or empty crops)."""
    patch = source_weight.shape[-1]
    counterpart = images.mean(1)
    seen = torch.stack([images[:, plan.claimed[s]] if s in plan.claimed else counterpart
                        for s in range(source_weight.shape[1])], 1)
    reference = F.conv2d(seen.float(), source_weight.float(), stride=patch)
    chosen = list(bands) if bands is not None else list(range(images.shape[1]))
    adapted = F.conv2d(images[:, chosen].float(), adapted_weight[:, chosen].float(), stride=patch)
    ratio = float((reference.var(dim=(0, 2, 3)).mean() / adapted.var(dim=(0, 2, 3)).mean()).sqrt())
    return min(max(ratio, SCALE_RANGE[0]), SCALE_RANGE[1]) if math.isfinite(ratio) and ratio > 0 else 1.0
