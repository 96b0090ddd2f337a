"""The training loss of a stage (pretraining, decode, simulate, both) as one module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignnet.model.base import BidirectionalModel
from alignnet.model.losses import overlapping, pretrain_loss


class Objective(nn.Module):
    """The training loss of a stage as a module, so DDP sees the forward that produces it (gradient sync) and
    torch.compile can compile it whole. forward -> (loss, parts)."""

    def __init__(self, model: BidirectionalModel, stage: str, contrastive_weight: float,
                 cross_modal_weight: float = 0.0) -> None:
        super().__init__()
        self.model, self.stage = model, stage
        self.contrastive_weight, self.cross_modal_weight = contrastive_weight, cross_modal_weight

    def forward(self, spikes: torch.Tensor, behavior: torch.Tensor, day: str | None,
                starts: torch.Tensor | None = None):
        """``starts``: the windows' first bins (one day per batch); windows that overlap are no InfoNCE negatives."""
        if self.stage == "pretrain":
            out = self.model.pretrain_outputs(spikes, behavior, day, cross_modal=self.cross_modal_weight > 0)
            exclude = None if starts is None else overlapping(starts, spikes.shape[-1])
            return pretrain_loss(out, spikes, behavior, self.model.config.temperature, self.contrastive_weight,
                                 exclude=exclude, cross_modal_weight=self.cross_modal_weight)
        parts, loss = {}, torch.zeros((), device=spikes.device)
        if self.stage in ("decode", "both"):
            dec = F.mse_loss(self.model.decode(spikes, day), behavior)
            loss = loss + dec
            parts["decode_mse"] = dec.detach()
        if self.stage in ("simulate", "both"):
            sim = F.mse_loss(self.model.simulate(behavior, day), spikes)
            loss = loss + sim
            parts["simulate_mse"] = sim.detach()
        parts["loss"] = loss.detach()
        return loss, parts
