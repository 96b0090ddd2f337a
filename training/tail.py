"""The newest bins of a causal decoder from a shorter window: its receptive field, not the whole 2-s buffer.

A live decoder needs only the newest ``hop`` bins of each window. In the causal AlignNet an output bin sees a bounded
past (causal 3x3 convolutions at each level of the U-Net, the input history filter), so the bins before its
receptive field cannot change it. The window it is decoded from may therefore be cut to the receptive field, as
long as the cut keeps the bins' phase inside the pooling blocks (its length equal to the full window's modulo
``2**depth``): the newest bins then see exactly the same inputs through the same weights.

``tail_plan`` measures the receptive field (the earliest input bin with a non-zero gradient on the newest output
bins, surrogate gradients being non-zero wherever a path exists) and picks the window; ``tail_model`` builds the
same weights for that window. Export writes it as ``decode_tail.onnx`` after a parity check against the full
window's graph on the newest bins (``training/export.py``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from alignnet.model.base import model_device

TAIL_HOPS = 2  # newest bins the tail graph serves (the bridge's hop; a longer hop uses the full window)


def receptive_field(model, day: str | None, n_in: int, hops: int = TAIL_HOPS, windows: int = 8) -> int:
    """Bins of input that the newest ``hops`` output bins depend on (from the newest bin backwards)."""
    c = model.config
    gen = torch.Generator().manual_seed(0)
    x = (torch.poisson(torch.full((windows, n_in, c.window_bins), 0.8), generator=gen).log1p()).requires_grad_(True)
    with torch.enable_grad():
        y = model.decode(x, day)
        (grad,) = torch.autograd.grad(y[..., -hops:].abs().sum(), x)
    used = np.flatnonzero(grad.abs().sum(dim=(0, 1)).numpy() > 0)
    return int(c.window_bins - used.min()) if used.size else 1


def tail_plan(model, day: str | None, n_in: int, hops: int = TAIL_HOPS) -> dict[str, Any] | None:
    """{'bins': the shorter window, 'receptive_field', 'hops'} for a causal model that can use one, else None."""
    c = getattr(model, "config", None)
    if not getattr(model, "causal_decode", False) or not hasattr(c, "depth") or not hasattr(c, "window_bins"):
        return None
    rf = receptive_field(model, day, n_in, hops)
    block = 2 ** c.depth
    bins = rf + (c.window_bins - rf) % block  # the shortest window >= rf with the full window's block phase
    if bins >= c.window_bins:
        return None
    return {"bins": int(bins), "receptive_field": rf, "hops": hops}


def tail_model(model, bins: int):
    """The same weights (and days' read-ins) on a window of ``bins`` (the projection heads, sized by the window and
    unused by decode, keep their fresh values), on the model's device, in its mode."""
    twin = type(model)(replace(model.config, window_bins=int(bins)))
    twin.model_name = getattr(model, "model_name", "?")
    for name, adapter in model.days.items():
        twin.add_day(name, int(adapter.read_in.in_channels))
    own = twin.state_dict()
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if own[k].shape == v.shape}, strict=False)
    return twin.to(model_device(model)).train(model.training)
