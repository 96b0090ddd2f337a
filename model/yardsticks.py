"""CEBRA as an in-repository yardstick: its own estimator and training (the ``cebra`` package, an optional extra:
``pip install 'alignnet-bci[cebra]'``), read out by k-nearest-neighbour regression as in the CEBRA paper.

CEBRA-Behavior embeds spikes with a convolutional encoder trained contrastively with behavior as the auxiliary
variable (``conditional="time_delta"``), then a kNN regressor maps the embedding to behavior. It is decode-only:
CEBRA has no generative direction, so it reports no B->S score. Its default encoder (``offset10-model``) sees 5 bins
on either side of a bin, so it is not causal. It fits through the same ``fit()`` as the Wiener filter (CEBRA runs
its own optimiser), with its learning rate searched like every other model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alignnet.model.base import BidirectionalModel
from alignnet.model.metrics import r2
from alignnet.model.registration import register_model


@dataclass
class CebraConfig:
    n_channels: int = 64  # spike channels
    window_bins: int = 100  # bins per window
    behavior_dims: int = 2  # behavior variables per bin
    architecture: str = "offset10-model"  # CEBRA encoder (receptive field 10 bins, centred)
    output_dimension: int = 8  # embedding dimension
    max_iterations: int = 500  # CEBRA training steps (its behavior-conditioned sampling costs ~0.4 s a step on 2
    #                             CPU cores with 20k bins: 500 steps is about AlignNet's quick training time)
    batch_size: int = 512  # samples per step
    learning_rate: float = 3e-3  # Adam learning rate (searched like every model's)
    temperature: float = 1.0  # InfoNCE temperature
    time_offsets: int = 10  # positive pairs this many bins apart (time_delta conditional)
    n_neighbors: int = 32  # kNN read-out
    max_readout_samples: int = 50_000  # bins kept for the kNN read-out (a random subset beyond)

    def __post_init__(self) -> None:
        for name in ("n_channels", "window_bins", "behavior_dims", "output_dimension", "max_iterations",
                     "batch_size", "n_neighbors", "time_offsets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@register_model("cebra")
@register_model("test-cebra", n_channels=16, window_bins=20, output_dimension=3, max_iterations=30, batch_size=128,
                n_neighbors=8)
class CebraYardstick(BidirectionalModel):
    config_class = CebraConfig
    needs_gradients = False  # CEBRA trains itself inside fit()
    causal_decode = False  # the encoder sees 5 bins after the decoded one
    simulates = False  # decode-only: no B->S
    servable = False  # an evaluation yardstick: `alignnet train` and export do not take it

    def __init__(self, config: CebraConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder: torch.nn.Module | None = None  # CEBRA's trained encoder, once fitted
        self.readout = None  # sklearn KNeighborsRegressor
        self._offset = (0, 0)

    def fit(self, spikes: np.ndarray, behavior: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None = None,
            ) -> dict[str, float]:
        """Train CEBRA-Behavior on the windows' bins (N, C, T) / (N, D, T) in normalised space, then the kNN."""
        try:
            import cebra
        except ImportError as e:
            raise RuntimeError("the CEBRA yardstick needs the cebra package: pip install 'alignnet-bci[cebra]'") from e
        from sklearn.neighbors import KNeighborsRegressor

        c = self.config
        # overlapping training windows repeat bins: keep each bin once, in time order (the first occurrences of
        # consecutive overlapping windows are the recording's bins in order), as CEBRA's time offsets expect
        xy = np.concatenate([_bins(spikes), _bins(behavior)], axis=1)
        _, first = np.unique(xy, axis=0, return_index=True)
        xy = xy[np.sort(first)]
        x, y = xy[:, :spikes.shape[1]], xy[:, spikes.shape[1]:]
        est = cebra.CEBRA(model_architecture=c.architecture, output_dimension=c.output_dimension,
                          max_iterations=c.max_iterations, batch_size=c.batch_size, learning_rate=c.learning_rate,
                          temperature=c.temperature, time_offsets=c.time_offsets, conditional="time_delta",
                          distance="cosine", device="cpu", verbose=False)
        est.fit(x, y)
        self.encoder = est.model_.eval()
        offset = self.encoder.get_offset()
        self._offset = (offset.left, offset.right - 1)
        emb = self._embed(torch.from_numpy(np.ascontiguousarray(spikes, np.float32)))
        ex, ey = _bins(emb.numpy()), _bins(behavior)
        if len(ex) > c.max_readout_samples:
            keep = np.random.default_rng(0).choice(len(ex), c.max_readout_samples, replace=False)
            ex, ey = ex[keep], ey[keep]
        self.readout = KNeighborsRegressor(n_neighbors=min(c.n_neighbors, len(ex)), weights="distance").fit(ex, ey)
        out = {"cebra_loss": float(est.state_dict_["loss"][-1]) if "loss" in est.state_dict_ else float("nan")}
        if val is not None:
            pred = self.decode(torch.from_numpy(np.ascontiguousarray(val[0], np.float32))).numpy()
            out["val_r2"] = r2(val[1], pred, feature_axis=1)
        return out

    @torch.no_grad()
    def _embed(self, spikes: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, E, T): the encoder over each window, its edges padded by replication as CEBRA's own
        ``transform`` pads them (the same numbers, batched)."""
        x = F.pad(spikes.float(), self._offset, mode="replicate")
        return self.encoder(x)

    def _decode(self, spikes: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise RuntimeError("the CEBRA yardstick is not fitted")
        b, _, t = spikes.shape
        emb = self._embed(spikes).numpy()
        pred = self.readout.predict(_bins(emb)).astype(np.float32)
        return torch.from_numpy(pred.reshape(b, t, -1).transpose(0, 2, 1).copy())

    def _simulate_logits(self, behavior: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("CEBRA is decode-only: it has no B->S direction")


def _bins(windows: np.ndarray) -> np.ndarray:
    """(N, F, T) windows -> (N*T, F) bins."""
    w = np.asarray(windows, np.float32)
    return w.transpose(0, 2, 1).reshape(-1, w.shape[1])
