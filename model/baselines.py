"""Baselines of the paper's Table 1, usable in both directions: Wiener filter, GRU, MLP, ResNet, ResNet+UNet; and
the yardsticks ridge (current bin only) and LSTM.

Each holds one network per direction: ``s2b`` (spikes (B, C, T) -> behavior (B, D, T)) and ``b2s`` (behavior ->
spike rates). The Wiener filter is fitted in closed form with scikit-learn (``fit``) and stored as convolution
weights, so it saves, loads and exports like every other model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignnet.model.base import BidirectionalModel
from alignnet.model.registration import register_model


@dataclass
class BaselineConfig:
    n_channels: int = 64  # spike channels
    window_bins: int = 100  # bins per window
    behavior_dims: int = 2  # behavior variables per bin
    hidden: int = 64  # hidden width
    layers: int = 2  # recurrent layers / residual blocks / U-Net levels
    dropout: float = 0.1  # dropout between layers (training only)

    def __post_init__(self) -> None:
        for name in ("n_channels", "window_bins", "behavior_dims", "hidden", "layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class _TwoWay(BidirectionalModel):
    """A baseline as two independent networks, one per direction."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = config
        self.s2b = self.make_net(config.n_channels, config.behavior_dims, "s2b")
        self.b2s = self.make_net(config.behavior_dims, config.n_channels, "b2s")

    def make_net(self, c_in: int, c_out: int, direction: str) -> nn.Module:
        raise NotImplementedError

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.dim() != 3 or x.shape[1] != channels or x.shape[2] != self.config.window_bins:
            raise ValueError(f"{what} must be (batch, {channels}, {self.config.window_bins}), got {tuple(x.shape)}")

    def _decode(self, spikes: torch.Tensor) -> torch.Tensor:
        self._check(spikes, self.config.n_channels, "spikes")
        return self.s2b(spikes)

    def _simulate_logits(self, behavior: torch.Tensor) -> torch.Tensor:
        self._check(behavior, self.config.behavior_dims, "behavior")
        return self.b2s(behavior)


# ---- Wiener filter ---------------------------------------------------------------------------------------------
@dataclass
class WienerConfig(BaselineConfig):
    n_lags: int = 10  # history length in bins (decode is causal; simulate uses +/- n_lags around each bin)
    alphas: tuple[float, ...] = (1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6)  # ridge penalties tried; chosen on validation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_lags < 0:
            raise ValueError(f"n_lags must be >= 0, got {self.n_lags}")
        if self.n_lags >= self.window_bins:  # short windows (e.g. 100-ms bins): the history fits inside the window
            logging.getLogger(__name__).warning("Wiener filter: %d bins of history do not fit a %d-bin window; using "
                                                "%d", self.n_lags, self.window_bins, self.window_bins - 1)
            self.n_lags = self.window_bins - 1
        self.alphas = tuple(float(a) for a in self.alphas)


def _lagged(x: np.ndarray, lags: range) -> np.ndarray:
    """(N, C, T) windows -> (N*T, C*len(lags)) features x[t - lag] (zero outside the window)."""
    n, c, t = x.shape
    out = np.zeros((n, t, c * len(lags)), np.float32)
    for j, lag in enumerate(lags):
        if lag >= 0:
            out[:, lag:, j * c:(j + 1) * c] = x[:, :, : t - lag].transpose(0, 2, 1)
        else:
            out[:, : t + lag, j * c:(j + 1) * c] = x[:, :, -lag:].transpose(0, 2, 1)
    return out.reshape(n * t, -1)


class LaggedLinear(nn.Module):
    """A linear filter over lags: y[t] = b + sum_lag W_lag x[t - lag], as a Conv1d (exportable)."""

    def __init__(self, c_in: int, c_out: int, lags: range) -> None:
        super().__init__()
        self.lags = lags
        self.pad_left, self.pad_right = max(lags.stop - 1, 0), max(-lags.start, 0)
        self.conv = nn.Conv1d(c_in, c_out, len(lags))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.pad_left, self.pad_right)))

    def set_from_ridge(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """coef (c_out, c_in * n_lags) in the column order of ``_lagged``."""
        c_out, c_in, k = self.conv.weight.shape
        w = coef.reshape(c_out, k, c_in)  # [out, lag index, in]
        # conv tap j multiplies x[t - pad_left + j]; lag = pad_left - j
        taps = [self.pad_left - lag for lag in self.lags]
        weight = np.zeros((c_out, c_in, k), np.float32)
        weight[:, :, taps] = w.transpose(0, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(weight))
            self.conv.bias.copy_(torch.from_numpy(np.asarray(intercept, np.float32)))


@register_model("wiener")
@register_model("test-wiener", n_channels=16, window_bins=20, n_lags=3)
@register_model("ridge", n_lags=0)  # the current bin only: the plain ridge yardstick
@register_model("test-ridge", n_channels=16, window_bins=20, n_lags=0)
class WienerFilter(_TwoWay):
    config_class = WienerConfig
    causal_decode = True  # decodes from the current bin and n_lags past ones
    needs_gradients = False

    def make_net(self, c_in: int, c_out: int, direction: str) -> nn.Module:
        k = self.config.n_lags
        # decoding is causal (history of spikes); simulation may look both ways in behavior
        return LaggedLinear(c_in, c_out, range(0, k + 1) if direction == "s2b" else range(-k, k + 1))

    def _to_rates(self, logits: torch.Tensor) -> torch.Tensor:
        # a linear fit of non-negative targets: clip at zero instead of the softplus of the learned models
        return F.relu(logits)

    def fit(self, spikes: np.ndarray, behavior: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None = None,
            ) -> dict[str, float]:
        """Fit both directions by ridge regression on windows (N, C, T) / (N, D, T) in normalised space.

        The penalty is chosen on ``val`` when given (by R² for decoding, by mean squared error for simulation),
        else by efficient leave-one-out on the training bins."""
        from sklearn.linear_model import Ridge, RidgeCV

        chosen = {}
        for name, net, x, y in (("s2b", self.s2b, spikes, behavior), ("b2s", self.b2s, behavior, spikes)):
            xf = _lagged(np.asarray(x, np.float32), net.lags)
            yf = np.asarray(y, np.float32).transpose(0, 2, 1).reshape(-1, y.shape[1])
            if val is None:
                model = RidgeCV(alphas=self.config.alphas).fit(xf, yf)
                alpha = float(model.alpha_)
            else:
                vx, vy = (val[0], val[1]) if name == "s2b" else (val[1], val[0])
                vxf = _lagged(np.asarray(vx, np.float32), net.lags)
                vyf = np.asarray(vy, np.float32).transpose(0, 2, 1).reshape(-1, vy.shape[1])
                scores = {a: float(((Ridge(alpha=a).fit(xf, yf).predict(vxf) - vyf) ** 2).mean())
                          for a in self.config.alphas}
                alpha = min(scores, key=scores.get)
                model = Ridge(alpha=alpha).fit(xf, yf)
            net.set_from_ridge(model.coef_, model.intercept_)
            chosen[f"{name}_alpha"] = alpha
        return chosen


# ---- GRU -------------------------------------------------------------------------------------------------------
class GRUNet(nn.Module):
    def __init__(self, c_in: int, c_out: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(c_in, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x.transpose(1, 2))
        return self.out(h).transpose(1, 2)


@register_model("gru", hidden=128)
@register_model("test-gru", n_channels=16, window_bins=20, hidden=8, layers=1)
class GRUBaseline(_TwoWay):
    config_class = BaselineConfig
    causal_decode = True  # one direction over time

    def make_net(self, c_in: int, c_out: int, direction: str) -> nn.Module:
        c = self.config
        return GRUNet(c_in, c_out, c.hidden, c.layers, c.dropout)


class LSTMNet(GRUNet):
    def __init__(self, c_in: int, c_out: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__(c_in, c_out, hidden, layers, dropout)
        self.gru = nn.LSTM(c_in, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)


@register_model("lstm", hidden=128)
@register_model("test-lstm", n_channels=16, window_bins=20, hidden=8, layers=1)
class LSTMBaseline(GRUBaseline):
    """The LSTM yardstick (Neural_Decoding's recurrent decoder): the GRU baseline with LSTM cells."""

    def make_net(self, c_in: int, c_out: int, direction: str) -> nn.Module:
        c = self.config
        return LSTMNet(c_in, c_out, c.hidden, c.layers, c.dropout)


# ---- MLP -------------------------------------------------------------------------------------------------------
class MLPNet(nn.Module):
    """The whole window as one vector (C*T) -> hidden layers -> (C_out*T)."""

    def __init__(self, c_in: int, c_out: int, t: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        dims = [c_in * t] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(nn.Flatten(), *body, nn.Linear(dims[-1], c_out * t))
        self.c_out, self.t = c_out, t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).reshape(x.shape[0], self.c_out, self.t)


@register_model("mlp", hidden=256)
@register_model("test-mlp", n_channels=16, window_bins=20, hidden=16, layers=1)
class MLPBaseline(_TwoWay):
    config_class = BaselineConfig

    def make_net(self, c_in: int, c_out: int, direction: str) -> nn.Module:
        c = self.config
        return MLPNet(c_in, c_out, c.window_bins, c.hidden, c.layers, c.dropout)


# ---- ResNet and ResNet+UNet (1-D over time) -----------------------------------------------------------------------
class ResBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv1d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.bn1(self.conv1(x))))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNetNet(nn.Module):
    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.Sequential(ResBlock1d(c_in, hidden, dropout),
                                    *[ResBlock1d(hidden, hidden, dropout) for _ in range(blocks - 1)])
        self.head = nn.Conv1d(hidden, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class ResUNetNet(nn.Module):
    """Residual encoder at several time scales, U-Net decoder with skip connections."""

    def __init__(self, c_in: int, c_out: int, hidden: int, levels: int, dropout: float) -> None:
        super().__init__()
        widths = [hidden * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.enc = nn.ModuleList([ResBlock1d(c_in, widths[0], dropout)]
                                 + [ResBlock1d(widths[i], widths[i + 1], dropout) for i in range(levels)])
        self.ups = nn.ModuleList(nn.ConvTranspose1d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels))
        self.dec = nn.ModuleList(ResBlock1d(2 * widths[i], widths[i]) for i in range(levels))
        self.head = nn.Conv1d(widths[0], c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        f = 2**self.levels
        x = F.pad(x, (0, (-t) % f))
        skips = []
        h = self.enc[0](x)
        for i in range(self.levels):
            skips.append(h)
            h = self.enc[i + 1](F.max_pool1d(h, 2))
        for i in reversed(range(self.levels)):
            h = self.dec[i](torch.cat([self.ups[i](h), skips[i]], dim=1))
        return self.head(h)[..., :t]


@register_model("resnet", hidden=64, layers=4)
@register_model("test-resnet", n_channels=16, window_bins=20, hidden=8, layers=2)
class ResNetBaseline(_TwoWay):
    config_class = BaselineConfig

    def make_net(self, c_in: int, c_out: int, direction: str) -> nn.Module:
        c = self.config
        return ResNetNet(c_in, c_out, c.hidden, c.layers, c.dropout)


@register_model("resnet-unet", hidden=32, layers=3)
@register_model("test-resnet-unet", n_channels=16, window_bins=20, hidden=4, layers=2)
class ResNetUNetBaseline(_TwoWay):
    config_class = BaselineConfig

    def make_net(self, c_in: int, c_out: int, direction: str) -> nn.Module:
        c = self.config
        return ResUNetNet(c_in, c_out, c.hidden, c.layers, c.dropout)
