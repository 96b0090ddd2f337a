"""What every model offers: decode spikes into behavior and simulate spikes from behavior, in the model's normalised
space, optionally through a per-day read-in (and read-out) for days whose channels differ."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def run_batched(fn: Callable, model: nn.Module, x: np.ndarray, *args, batch: int = 256) -> np.ndarray:
    """``fn`` (a model's decode, simulate or embedding) over a numpy array in batches: each batch moved to the
    model's device, each answer brought back to the CPU as numpy. The one way evaluation code calls a model, so a
    model on a GPU gets GPU tensors everywhere."""
    device = model_device(model)
    return np.concatenate([to_numpy(fn(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device), *args))
                           for i in range(0, len(x), batch)])


def n_params(model: nn.Module) -> int:
    """Number of parameters (every tensor, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


class DayAdapter(nn.Module):
    """Per-day linear maps between a day's channels (any count) and the model's channel space, per time bin.

    read_in: (B, C_day, T) -> (B, C, T); read_out: (B, C, T) -> (B, C_day, T) pre-activation."""

    def __init__(self, day_channels: int, model_channels: int) -> None:
        super().__init__()
        self.read_in = nn.Conv1d(day_channels, model_channels, 1)
        self.read_out = nn.Conv1d(model_channels, day_channels, 1)


class BidirectionalModel(nn.Module):
    """Base class. Subclasses implement ``_decode`` (B, C, T) -> (B, D, T) and ``_simulate_logits``
    (B, D, T) -> (B, C, T) (pre-softplus). Inputs and outputs are in the data contract's normalised space."""

    config_class: type
    model_name: str = "?"
    needs_gradients: bool = True  # False for closed-form models (Wiener filter), fitted with fit()
    # True when the decoded value of bin t depends on no bin after t, so the newest bin of a window (the one a
    # live user gets) is decoded as well as any other; tests/test_models.py checks every model's claim
    causal_decode: bool = False
    simulates: bool = True  # False for a decode-only yardstick (CEBRA): no B->S score
    servable: bool = True  # False for an evaluation-only yardstick: not trained into an artifact nor exported

    def __init__(self) -> None:
        super().__init__()
        self.days = nn.ModuleDict()

    # ---- per-day channels --------------------------------------------------------------------------------------
    def add_day(self, name: str, n_channels: int) -> DayAdapter:
        """Add (or replace) the read-in/read-out of a day with its own channel count."""
        if not name or "." in name:
            raise ValueError(f"day name {name!r} must be non-empty and contain no '.'")
        adapter = DayAdapter(n_channels, self.config.n_channels)
        self.days[name] = adapter
        return adapter

    def day_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters of one day's adapter: fitted alone for a new day."""
        if name not in self.days:
            raise KeyError(f"no read-in for day {name!r}; days: {', '.join(self.days) or 'none'}")
        return list(self.days[name].parameters())

    def _adapter(self, day: str | None) -> DayAdapter | None:
        if day is None:
            return None
        if day not in self.days:
            raise KeyError(f"no read-in for day {day!r}; days: {', '.join(self.days) or 'none'}")
        return self.days[day]

    # ---- the two directions ------------------------------------------------------------------------------------
    def decode(self, spikes: torch.Tensor, day: str | None = None) -> torch.Tensor:
        """(B, C_day, T) normalised spikes -> (B, D, T) normalised behavior."""
        adapter = self._adapter(day)
        if adapter is not None:
            spikes = adapter.read_in(spikes)
        return self._decode(spikes)

    def simulate(self, behavior: torch.Tensor, day: str | None = None) -> torch.Tensor:
        """(B, D, T) normalised behavior -> (B, C_day, T) non-negative rates in the normalised spike space."""
        logits = self._simulate_logits(behavior)
        adapter = self._adapter(day)
        if adapter is not None:
            logits = adapter.read_out(self._to_rates(logits))
        return self._to_rates(logits)

    def _to_rates(self, logits: torch.Tensor) -> torch.Tensor:
        """Non-negative rates from the output layer."""
        return F.softplus(logits)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.decode(spikes)

    def _decode(self, spikes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _simulate_logits(self, behavior: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DecodePath(nn.Module):
    """``model.decode`` as a module of its own (for export and runtime engines)."""

    def __init__(self, model: BidirectionalModel, day: str | None = None) -> None:
        super().__init__()
        self.model, self.day = model, day
        # a wrapper takes the model's mode: exporters restore the wrapper's mode recursively afterwards
        self.train(model.training)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(spikes, self.day)


class EmbedPath(nn.Module):
    """AlignNet's spike latent as a module of its own (exported as ``embed.onnx`` for the drift monitor)."""

    def __init__(self, model: BidirectionalModel, day: str | None = None) -> None:
        super().__init__()
        self.model, self.day = model, day
        self.train(model.training)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.model.spike_embedding(spikes, self.day)


class SimulatePath(nn.Module):
    """``model.simulate`` as a module of its own (for export and runtime engines)."""

    def __init__(self, model: BidirectionalModel, day: str | None = None) -> None:
        super().__init__()
        self.model, self.day = model, day
        self.train(model.training)

    def forward(self, behavior: torch.Tensor) -> torch.Tensor:
        return self.model.simulate(behavior, self.day)
