"""AlignNet's building blocks: the (spiking or ReLU) U-Net encoder and decoder, causal convolutions and
upsampling, the 1x1 bottleneck and the projection heads. Spiking layers carry a leading step axis (Ts, B, ...)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignnet.model.lif import LIFConfig, make_lif


# ---- sequence helpers: (Ts, B, ...) through per-frame layers -----------------------------------------------------
def seq_apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame layer to (Ts, B, ...) by folding steps into the batch."""
    ts, b = x.shape[:2]
    y = module(x.reshape(ts * b, *x.shape[2:]))
    return y.reshape(ts, b, *y.shape[1:])


def match_steps(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Bring (Ts', B, ...) to Ts = steps: average spikes into rates for an ANN (steps=1), repeat a static map for
    an SNN."""
    if x.shape[0] == steps:
        return x
    if steps == 1:
        return x.mean(0, keepdim=True)
    if x.shape[0] == 1:
        return x.expand(steps, *x.shape[1:])
    raise ValueError(f"cannot match {x.shape[0]} steps to {steps}")


class Conv3x3(nn.Conv2d):
    """3x3 convolution over (channel, time) images; ``causal``: time padded on the past side only (2 bins), so an
    output bin sees itself and the two before it."""

    def __init__(self, c_in: int, c_out: int, causal: bool) -> None:
        super().__init__(c_in, c_out, 3, padding=0 if causal else 1, bias=False)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (2, 0, 1, 1)) if self.causal else x)


class HistoryConv1d(nn.Conv1d):
    """Per-bin linear map that also sees the ``history - 1`` bins before each bin (zeros before the window):
    (B, C_in, T) -> (B, C_out, T), causal. history=1 is the plain per-bin map."""

    def __init__(self, c_in: int, c_out: int, history: int = 1) -> None:
        super().__init__(c_in, c_out, history)
        self.history = history

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.history - 1, 0)) if self.history > 1 else x)


def shift_one_block(h: torch.Tensor) -> torch.Tensor:
    """(..., W) -> the same shifted one step later in time (zeros first): a coarse block summarises bins up to its
    end, so before upsampling it may only inform the bins after that end."""
    return F.pad(h, (1, 0))[..., :-1]


def upsample_at_block_ends(up: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Causal 2x upsampling with the least delay, for blocks that end at the window's newest bin: the second
    (later) half of each fine pair reads the coarse column of its own block, which ends at it; the first half reads
    the column before, which ends just before it. ``up`` is a stride-2 transposed convolution over (M, C, H, W)."""
    now, before = up(h), up(shift_one_block(h))
    first_half = torch.arange(now.shape[-1], device=now.device) % 2 == 0
    return torch.where(first_half, before, now)


class Activation(nn.Module):
    """ReLU, or a multi-step LIF over (Ts, B, ...)."""

    def __init__(self, spiking: bool, lif: LIFConfig, impl: str) -> None:
        super().__init__()
        self.spiking = spiking
        self.lif = make_lif(lif, impl) if spiking else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(x) if self.spiking else F.relu(x)


class UEncoder(nn.Module):
    """Encoder blocks of 3x3 conv -> batch norm -> activation (LIF or ReLU) -> 2x2 max-pool."""

    def __init__(self, widths: tuple[int, ...], spiking: bool, lif: LIFConfig, impl: str, in_ch: int = 1,
                 causal: bool = False) -> None:
        super().__init__()
        chans = (in_ch, *widths)
        self.convs = nn.ModuleList(Conv3x3(chans[i], chans[i + 1], causal) for i in range(len(widths)))
        self.norms = nn.ModuleList(nn.BatchNorm2d(w) for w in widths)
        self.acts = nn.ModuleList(Activation(spiking, lif, impl) for _ in widths)

    def forward(self, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, in_ch, H, W), static. Returns the pooled output (Ts, B, w_last, H/2^k, W/2^k) and the skip
        features of every level (Ts, B, w_i, H/2^i, W/2^i)."""
        # direct encoding: the first conv sees the same static input every step, so compute it once
        h = self.norms[0](self.convs[0](x)).unsqueeze(0).expand(steps, *x.shape[:1], -1, -1, -1)
        skips = []
        for i in range(len(self.convs)):
            if i > 0:
                h = seq_apply(lambda z, i=i: self.norms[i](self.convs[i](z)), h)
            s = self.acts[i](h.contiguous())
            skips.append(s)
            h = seq_apply(lambda z: F.max_pool2d(z, 2), s)
        return h, skips


class UDecoder(nn.Module):
    """Transposed-conv upsampling -> batch norm -> activation, concatenation with the skip, 3x3 conv -> batch norm
    -> activation, per level; a 1x1 conv head on the (step-averaged) output."""

    def __init__(self, widths: tuple[int, ...], latent_ch: int, spiking: bool, lif: LIFConfig, impl: str,
                 out_ch: int = 1, causal: bool = False, block_alignment: str = "start") -> None:
        super().__init__()
        self.causal, self.at_ends = causal, causal and block_alignment == "end"
        ins = (*widths[1:], latent_ch)  # input channels of level i's upsampling
        self.ups = nn.ModuleList(nn.ConvTranspose2d(ins[i], widths[i], 2, stride=2, bias=False)
                                 for i in range(len(widths)))
        self.up_norms = nn.ModuleList(nn.BatchNorm2d(w) for w in widths)
        self.up_acts = nn.ModuleList(Activation(spiking, lif, impl) for _ in widths)
        self.convs = nn.ModuleList(Conv3x3(2 * w, w, causal) for w in widths)
        self.norms = nn.ModuleList(nn.BatchNorm2d(w) for w in widths)
        self.acts = nn.ModuleList(Activation(spiking, lif, impl) for _ in widths)
        self.head = nn.Conv2d(widths[0], out_ch, 1)

    def forward(self, latent: torch.Tensor, skips: list[torch.Tensor], steps: int) -> torch.Tensor:
        """latent (B, L, h, w) static; skips as UEncoder returns them (any step count). Returns (B, out, H, W)."""
        h = match_steps(latent.unsqueeze(0), steps)
        for i in reversed(range(len(self.ups))):
            if self.at_ends:
                h = seq_apply(lambda z, i=i: self.up_norms[i](upsample_at_block_ends(self.ups[i], z)), h)
            else:
                if self.causal:
                    h = shift_one_block(h)
                h = seq_apply(lambda z, i=i: self.up_norms[i](self.ups[i](z)), h)
            h = self.up_acts[i](h.contiguous())
            h = torch.cat([h, match_steps(skips[i], steps)], dim=2)
            h = seq_apply(lambda z, i=i: self.norms[i](self.convs[i](z)), h)
            h = self.acts[i](h.contiguous())
        return self.head(h.mean(0))


class Bottleneck(nn.Module):
    """Average over steps (rates), 1x1 conv and ReLU: the latent map (B, L, h, w)."""

    def __init__(self, in_ch: int, latent_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, latent_ch, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(h.mean(0)))


class Projection(nn.Module):
    """Projection MLP from the flattened latent map to the shared latent vector (B, D)."""

    def __init__(self, in_features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)
