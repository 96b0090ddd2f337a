"""Probes of what AlignNet's served decode reads, scored at the newest bin like the model itself:

- ``latent-mean``: every window's spike latent map replaced by its mean over (at most 2,000 of) the training
  windows. If the newest-bin R² barely moves, the aligned latent carries none of the decode: it flows through the
  U-Net's skip connections, and the contrastive alignment (and the drift gauge that watches the latent) has no say.
- ``skips-zero``: the spike encoder's skip features replaced by zeros, so the decoder reads the latent alone.

A probe changes nothing saved: it sets ``AlignNet.latent_override`` / ``zero_skips`` for one scoring and clears them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from alignnet.model.base import BidirectionalModel, run_batched
from alignnet.model.contract import DataContract
from alignnet.training.windows import DayWindows

PROBES = ("latent-mean", "skips-zero")
MEAN_WINDOWS = 2000  # training windows the mean latent is taken over (evenly spread; the mean settles well before)


def probeable(model: BidirectionalModel) -> bool:
    """Models the probes apply to: those with a spike latent and skips (AlignNet)."""
    return hasattr(model, "latent_override") and hasattr(model, "latent_map")


def check_probes(probes: list[str]) -> None:
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        raise ValueError(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")


@torch.no_grad()
def mean_latent(model: BidirectionalModel, windows: list[DayWindows], contract: DataContract,
                use_day: bool) -> torch.Tensor:
    """The spike latent map (L, h, w) averaged over the windows (each day through its own read-in where
    ``use_day``), weighting every window alike."""
    model.eval()
    total = sum(len(w) for w in windows)
    sums, count = None, 0
    for w in windows:
        share = max(1, round(MEAN_WINDOWS * len(w) / total))
        idx = np.unique(np.linspace(0, len(w) - 1, min(share, len(w))).round().astype(int))
        part = w.take(idx)
        lat = run_batched(model.latent_map, model, contract.preprocess_spikes(part.counts),
                          part.day if use_day else None)
        sums = lat.sum(0) if sums is None else sums + lat.sum(0)
        count += len(lat)
    return torch.from_numpy(sums / count)


@contextmanager
def probing(model: BidirectionalModel, probe: str, latent: torch.Tensor | None = None) -> Iterator[None]:
    """The model with one probe applied (``latent``: the mean latent map for 'latent-mean'); cleared on exit."""
    check_probes([probe])
    if probe == "latent-mean" and latent is None:
        raise ValueError("the latent-mean probe needs the mean latent map (probes.mean_latent)")
    try:
        if probe == "latent-mean":
            model.latent_override = latent.to(next(model.parameters()).device)
        else:
            model.zero_skips = True
        yield
    finally:
        model.latent_override, model.zero_skips = None, False


def probe_scores(model: BidirectionalModel, probes: list[str], score: Callable[[], float],
                 train: list[DayWindows], contract: DataContract, use_day: bool) -> dict[str, float]:
    """``score()`` (the newest-bin R²) under each probe: {probe: R²}. Empty for a model the probes do not apply to."""
    if not probes or not probeable(model):
        return {}
    latent = mean_latent(model, train, contract, use_day) if "latent-mean" in probes else None
    out = {}
    for probe in probes:
        with probing(model, probe, latent):
            out[probe] = float(score())
    return out
