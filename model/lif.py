"""LIF neurons: spikingjelly's for training, and a plain-op twin with the same maths for export.

Both take multi-step input ``(Ts, B, ...)`` and return spikes of the same shape. spikingjelly's multi-step CPU path
is a custom op (``sj_lif::forward``) that ONNX (legacy exporter) and ``torch.jit.script`` cannot export; the plain
version below uses only elementwise torch ops, exports to ONNX and TorchScript, and gives identical spikes for the
same input. It has no surrogate gradient: it is for inference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LIFConfig:
    tau: float = 2.0  # membrane time constant (paper: 2)
    v_threshold: float = 0.3  # firing threshold (paper: 0.3)
    v_reset: float = 0.0  # hard reset potential (paper: 0)
    surrogate_alpha: float = 2.0  # sharpness of the ATan surrogate gradient


class PlainLIF(nn.Module):
    """Stateless multi-step LIF in plain torch ops: h = v + (x - (v - v_reset)) / tau; s = h >= v_th; hard reset."""

    def __init__(self, cfg: LIFConfig) -> None:
        super().__init__()
        self.tau = float(cfg.tau)
        self.v_threshold = float(cfg.v_threshold)
        self.v_reset = float(cfg.v_reset)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = torch.full_like(x_seq[0], self.v_reset)
        out = []
        for t in range(x_seq.shape[0]):  # Ts is a small constant: unrolled by tracing/export
            h = v + (x_seq[t] - (v - self.v_reset)) / self.tau
            s = (h >= self.v_threshold).to(x_seq.dtype)
            v = h * (1.0 - s) + self.v_reset * s
            out.append(s)
        return torch.stack(out)


def make_lif(cfg: LIFConfig, impl: str) -> nn.Module:
    """'spikingjelly' (trainable, surrogate gradient) or 'plain' (exportable, inference)."""
    if impl == "plain":
        return PlainLIF(cfg)
    if impl == "spikingjelly":
        # spikingjelly's import probes for triton and torch logs a warning per probe on CPU-only machines
        logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
        from spikingjelly.activation_based import neuron, surrogate

        return neuron.LIFNode(
            tau=cfg.tau, decay_input=True, v_threshold=cfg.v_threshold, v_reset=cfg.v_reset,
            surrogate_function=surrogate.ATan(alpha=cfg.surrogate_alpha), detach_reset=True, step_mode="m",
        )
    raise ValueError(f"lif_impl must be 'spikingjelly' or 'plain', got {impl!r}")


def reset_states(module: nn.Module) -> None:
    """Reset the membrane state of every spikingjelly neuron (plain LIFs are stateless)."""
    for m in module.modules():
        if hasattr(m, "reset") and m.__class__.__module__.startswith("spikingjelly"):
            m.reset()
