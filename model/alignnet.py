"""AlignNet (paper §3.2): a spiking U-Net autoencoder for spikes, a ReLU U-Net autoencoder for behavior, and
projection heads into one latent space of dimension D for a symmetric InfoNCE loss.

Shapes: spikes (B, C, T) and behavior (B, D_beh, T) in the contract's normalised space. Inside the U-Nets a window is
an image (B, 1, C, T) padded to a multiple of 2**depth; spiking layers carry a leading step axis (Ts, B, ...).
Cross-modal paths: decode = behavior decoder on the spike encoder's latent and skip features (the spike encoder runs
Ts steps, the ANN decoder one); simulate = spike decoder (Ts steps) on the behavior encoder's latent and skips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alignnet.model.base import BidirectionalModel
from alignnet.model.lif import LIFConfig, reset_states
from alignnet.model.registration import register_model
from alignnet.model.unet import Bottleneck, HistoryConv1d, Projection, UDecoder, UEncoder


@dataclass
class AlignNetConfig:
    n_channels: int = 64  # channels of the model's spike space (a per-day read-in maps other counts to it)
    window_bins: int = 100  # bins per window
    behavior_dims: int = 2  # behavior variables per bin
    widths: tuple[int, ...] = (8, 16, 32)  # conv channels per U-Net level; depth = len(widths)
    latent_channels: int = 8  # channels of the 1x1-conv bottleneck (the latent map)
    latent_dim: int = 64  # D: dimension of the shared latent vectors
    proj_hidden: int = 128  # hidden width of the projection MLPs
    behavior_hidden: int = 64  # hidden width of the per-bin behavior <-> channel MLPs
    time_steps: int = 4  # Ts: SNN simulation steps per window
    channel_mixing: bool = True  # per-bin linear maps into / out of the spike U-Net's channel axis (see below)
    tau: float = 2.0  # LIF membrane time constant (paper)
    v_threshold: float = 0.3  # LIF threshold (paper)
    v_reset: float = 0.0  # LIF reset potential (paper)
    surrogate_alpha: float = 2.0  # ATan surrogate sharpness
    temperature: float = 0.1  # InfoNCE temperature
    # causal: convolutions pad time on the past side only, and every upsampling of a coarser level is shifted by
    # one of its blocks, so the output at bin t depends on no bin after t (a live decoder's newest bin loses nothing)
    causal: bool = False
    # where a causal model's pooling blocks sit in time. 'start' (the first causal variant): blocks begin at the
    # window's first bin and every upsampling is shifted one whole coarse block, so the newest bin reads level-i
    # columns up to 1.5 blocks old (12 bins at depth 3). 'end': the window is padded on its past side, so blocks end
    # at the newest bin, and each fine column reads the coarse column of its own block when it is the block's last
    # (that block ends at it) and the one before otherwise: causal at every bin, and the newest bin reads its own
    # blocks at every level (no staleness). 'start' stays the default: on the default cross-day protocol 'end'
    # scored lower at the newest bin (docs/results.md, "Blocks at the window's end"); saved artifacts load as 'start'
    block_alignment: str = "start"
    # bins of history the per-bin input maps see (1: the paper's per-bin maps). Above 1 they are causal temporal
    # convolutions: each bin enters the U-Net with a summary of its own recent past, as a Wiener filter's lags are
    input_history: int = 1
    # training only: each skip level the served decode reads (spike encoder -> behavior decoder) is zeroed for a
    # window with this probability, so the decoder must also decode from the latent alone (0: never)
    skip_dropout: float = 0.0
    lif_impl: str = "spikingjelly"  # 'spikingjelly' (training) or 'plain' (export; same weights, same spikes)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        for name in ("n_channels", "window_bins", "behavior_dims", "latent_channels", "latent_dim", "proj_hidden",
                     "behavior_hidden", "time_steps", "input_history"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if self.tau <= 1.0:
            raise ValueError(f"tau must be > 1 for a leaky neuron, got {self.tau}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.block_alignment not in ("start", "end"):
            raise ValueError(f"block_alignment must be 'start' or 'end', got {self.block_alignment!r}")
        if not 0.0 <= self.skip_dropout < 1.0:
            raise ValueError(f"skip_dropout must be in [0, 1), got {self.skip_dropout}")
        if self.lif_impl not in ("spikingjelly", "plain"):
            raise ValueError(f"lif_impl must be 'spikingjelly' or 'plain', got {self.lif_impl!r}")

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def padded(self) -> tuple[int, int]:
        f = 2**self.depth
        return (-(-self.n_channels // f) * f, -(-self.window_bins // f) * f)

    @property
    def latent_hw(self) -> tuple[int, int]:
        f = 2**self.depth
        h, w = self.padded
        return (h // f, w // f)

    @property
    def live_latent_columns(self) -> int:
        """Latent time columns that reach some output bin of the window. Blocks at the window's start: the causal
        upsampling's shifts move the last columns past the window, so they inform no bin (2 of 13 at 100-bin
        windows; at 8-bin windows and depth 3 the only column: the latent carries nothing). Blocks at the end, or
        a model that is not causal: every column."""
        columns = self.latent_hw[1]
        if not self.causal or self.block_alignment == "end":
            return columns
        # the shifts of all levels delay latent column j (bins B j .. B j + B - 1, B = 2**depth) to bin
        # B j + 2 B - 2 at the earliest (B + B/2 + ... + 2); the columns whose earliest reader is in the window
        block = 2**self.depth
        return max(0, (self.window_bins + 1) // block - 1)

    @property
    def lif(self) -> LIFConfig:
        return LIFConfig(self.tau, self.v_threshold, self.v_reset, self.surrogate_alpha)


@register_model("alignnet")
@register_model("alignnet-causal", causal=True, input_history=10)
@register_model("alignnet-paper", widths=(16, 32, 64, 128), latent_channels=16, latent_dim=128, proj_hidden=256)
@register_model("test-alignnet", n_channels=16, window_bins=20, widths=(4, 8), latent_channels=4, latent_dim=16,
                proj_hidden=32, behavior_hidden=16, time_steps=2)
@register_model("test-alignnet-causal", n_channels=16, window_bins=20, widths=(4, 8), latent_channels=4,
                latent_dim=16, proj_hidden=32, behavior_hidden=16, time_steps=2, causal=True,
                input_history=3)
class AlignNet(BidirectionalModel):
    config_class = AlignNetConfig

    @property
    def causal_decode(self) -> bool:
        return self.config.causal

    def __init__(self, config: AlignNetConfig) -> None:
        super().__init__()
        self.config = c = config
        # probes of what the served decode reads (never saved; training/probes.py sets them for one scoring):
        # a fixed latent map (L, h, w) in place of every window's, and skip features replaced by zeros
        self.latent_override: torch.Tensor | None = None
        self.zero_skips = False
        lif, impl = c.lif, c.lif_impl
        latent_features = c.latent_channels * c.latent_hw[0] * c.latent_hw[1]
        # spike autoencoder (SNN). 3x3 kernels see three neighbouring channels, and electrode order carries no
        # meaning, so (like the behavior side's MLPs) a per-bin linear map arranges channels for the convolutions
        # and another maps the decoder's channel grid back; channel_mixing=False is the paper's plain U-Net
        self.spike_in = HistoryConv1d(c.n_channels, c.n_channels, c.input_history) \
            if c.channel_mixing or c.input_history > 1 else nn.Identity()
        self.spike_out = nn.Conv1d(c.n_channels, c.n_channels, 1) if c.channel_mixing else nn.Identity()
        self.spike_encoder = UEncoder(c.widths, True, lif, impl, causal=c.causal)
        self.spike_bottleneck = Bottleneck(c.widths[-1], c.latent_channels)
        self.spike_decoder = UDecoder(c.widths, c.latent_channels, True, lif, impl, causal=c.causal,
                                      block_alignment=c.block_alignment)
        # behavior autoencoder (ANN): per-bin MLPs to and from the spike shape around the same U-shape
        self.behavior_in = nn.Sequential(HistoryConv1d(c.behavior_dims, c.behavior_hidden, c.input_history), nn.ReLU(),
                                         nn.Conv1d(c.behavior_hidden, c.n_channels, 1))
        self.behavior_encoder = UEncoder(c.widths, False, lif, impl, causal=c.causal)
        self.behavior_bottleneck = Bottleneck(c.widths[-1], c.latent_channels)
        self.behavior_decoder = UDecoder(c.widths, c.latent_channels, False, lif, impl, causal=c.causal,
                                         block_alignment=c.block_alignment)
        self.behavior_out = nn.Sequential(nn.Conv1d(c.n_channels, c.behavior_hidden, 1), nn.ReLU(),
                                          nn.Conv1d(c.behavior_hidden, c.behavior_dims, 1))
        # projection heads into the shared latent space
        self.spike_projection = Projection(latent_features, c.proj_hidden, c.latent_dim)
        self.behavior_projection = Projection(latent_features, c.proj_hidden, c.latent_dim)

    # ---- shape plumbing ----------------------------------------------------------------------------------------
    @property
    def _time_pad(self) -> tuple[int, int]:
        """Zero bins (before, after) the window in the U-Nets' image: after it, or before it where the blocks end
        at the newest bin."""
        extra = self.config.padded[1] - self.config.window_bins
        return (extra, 0) if self.config.causal and self.config.block_alignment == "end" else (0, extra)

    def _to_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, 1, H, W) zero-padded to a multiple of 2**depth."""
        h = self.config.padded[0]
        return F.pad(x, (*self._time_pad, 0, h - x.shape[-2])).unsqueeze(1)

    def _from_image(self, img: torch.Tensor) -> torch.Tensor:
        before = self._time_pad[0]
        return img[:, 0, : self.config.n_channels, before: before + self.config.window_bins]

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.dim() != 3 or x.shape[1] != channels or x.shape[2] != self.config.window_bins:
            raise ValueError(f"{what} must be (batch, {channels}, {self.config.window_bins}), got {tuple(x.shape)}")

    # ---- encoders ----------------------------------------------------------------------------------------------
    def encode_spikes(self, spikes: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, T) -> latent map (B, L, h, w) and skip spikes [(Ts, B, w_i, H_i, W_i)]."""
        self._check(spikes, self.config.n_channels, "spikes")
        reset_states(self.spike_encoder)
        h, skips = self.spike_encoder(self._to_image(self.spike_in(spikes)), self.config.time_steps)
        return self.spike_bottleneck(h), skips

    def encode_behavior(self, behavior: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, D, T) -> latent map (B, L, h, w) and skip features [(1, B, w_i, H_i, W_i)]."""
        self._check(behavior, self.config.behavior_dims, "behavior")
        h, skips = self.behavior_encoder(self._to_image(self.behavior_in(behavior)), 1)
        return self.behavior_bottleneck(h), skips

    # ---- decoders ----------------------------------------------------------------------------------------------
    def decode_behavior(self, latent: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """ANN behavior decoder, one step; spiking skips are averaged into rates. -> (B, D, T)."""
        return self.behavior_out(self._from_image(self.behavior_decoder(latent, skips, 1)))

    def decode_spike_logits(self, latent: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """SNN spike decoder, Ts steps. -> (B, C, T) pre-softplus."""
        reset_states(self.spike_decoder)
        return self.spike_out(self._from_image(self.spike_decoder(latent, skips, self.config.time_steps)))

    # ---- the two directions and pretraining --------------------------------------------------------------------
    def _decode(self, spikes: torch.Tensor) -> torch.Tensor:
        latent, skips = self.encode_spikes(spikes)
        if self.latent_override is not None:  # the latent-mean probe (training/probes.py)
            latent = self.latent_override.to(latent).expand_as(latent)
        if self.zero_skips:  # the skip probe: the decode reads the latent alone
            skips = [torch.zeros_like(s) for s in skips]
        return self.decode_behavior(latent, self._drop_skips(skips))

    def _drop_skips(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Training: each spike skip level (Ts, B, ...) zeroed per window with probability ``skip_dropout``."""
        p = self.config.skip_dropout
        if not self.training or p == 0:
            return skips
        keep = [(torch.rand(1, s.shape[1], *[1] * (s.dim() - 2), device=s.device) >= p).to(s.dtype) for s in skips]
        return [s * k for s, k in zip(skips, keep)]

    def _simulate_logits(self, behavior: torch.Tensor) -> torch.Tensor:
        return self.decode_spike_logits(*self.encode_behavior(behavior))

    def pretrain_outputs(self, spikes: torch.Tensor, behavior: torch.Tensor, day: str | None = None,
                         cross_modal: bool = False) -> dict:
        """Both reconstructions and both latent vectors for pretraining (spikes in the day's channels). With
        ``cross_modal`` also the two paths that serving uses, so pretraining trains them too: behavior decoded from
        the spike encoder's latent and skips ('behavior_from_spikes', what ``decode`` serves) and spikes from the
        behavior encoder's ('spikes_from_behavior', what ``simulate`` serves)."""
        adapter = self._adapter(day)
        x = adapter.read_in(spikes) if adapter is not None else spikes
        s_lat, s_skips = self.encode_spikes(x)
        b_lat, b_skips = self.encode_behavior(behavior)

        def spikes_out(logits: torch.Tensor) -> torch.Tensor:
            return F.softplus(adapter.read_out(F.softplus(logits)) if adapter is not None else logits)

        out = {
            "spike_recon": spikes_out(self.decode_spike_logits(s_lat, s_skips)),
            "behavior_recon": self.decode_behavior(b_lat, b_skips),
            "z_spike": self.spike_projection(s_lat),
            "z_behavior": self.behavior_projection(b_lat),
        }
        if cross_modal:
            out["behavior_from_spikes"] = self.decode_behavior(s_lat, self._drop_skips(s_skips))
            out["spikes_from_behavior"] = spikes_out(self.decode_spike_logits(b_lat, b_skips))
        return out

    def latent_map(self, spikes: torch.Tensor, day: str | None = None) -> torch.Tensor:
        """(B, C_day, T) -> (B, L, h, w): the spike latent map the decode reads (and the projection aligns)."""
        adapter = self._adapter(day)
        return self.encode_spikes(adapter.read_in(spikes) if adapter is not None else spikes)[0]

    def spike_embedding(self, spikes: torch.Tensor, day: str | None = None) -> torch.Tensor:
        """(B, C_day, T) -> (B, D) latent vectors (for analysis and alignment checks)."""
        return self.spike_projection(self.latent_map(spikes, day))

    def firing_rates(self, spikes: torch.Tensor) -> list[float]:
        """Mean firing probability per step of each spiking encoder level (a health check)."""
        with torch.no_grad():
            _, skips = self.encode_spikes(spikes)
        return [s.mean().item() for s in skips]
