"""Incremental decoding: the causal AlignNet run as a stream, one new bin at a time, from cached activations.

The window decoder re-runs a whole window every hop although one bin is new. In the causal AlignNet every layer is
local in time: causal 3x3 convolutions (the bin and the two before it), a causal input-history filter, LIF neurons
that integrate over SNN steps (not over bins), 2x2 max-pooling blocks, and transposed-conv upsampling shifted one
coarse block later. So a stream can keep, per U-Net level, the newest columns each layer reads, and a new bin costs
a few columns per level instead of a whole window.

The numbers are the window decoder's, for the newest bin of the window ending at each bin: a window's pooling blocks
start at its first bin, so the newest bin always sits in the same place of its blocks. The stream therefore keeps
every phase of the encoder's columns (at level i, the column of the 2**i-bin block ending at each bin: one column per
level per bin) and reads the decoder's coarse columns on the grid of the window that ends at the new bin; which
columns those are depends only on how far back they lie, so the decoder's columns are computed afresh for each new
bin. Export checks the stream against the exported window graph (``training/export.py``).

Written here: no library runs a U-Net incrementally (ONNX Runtime and TorchScript run whole graphs). The rings of
cached columns are numpy arrays kept by ``IncrementalDecoder``; a step is one ONNX graph built from the weights
(``stream_graph.py``) and run by ONNX Runtime, so the service stays free of torch. Weights come from
``stream_weights`` (batch norm folded into the convolutions) and are stored in the artifact as ``decode_stream.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignnet.model.stream_graph import step_graph

STREAM_FILE = "decode_stream.npz"


# ---- weights from the torch model (export time) -------------------------------------------------------------------
def stream_weights(model, day: str | None = None) -> dict[str, np.ndarray]:
    """The arrays the stream needs from a causal AlignNet in eval mode: batch norm folded into each convolution."""
    import torch

    c = model.config
    if not getattr(c, "causal", False):
        raise ValueError("only a causal AlignNet can decode incrementally")
    if model.training:
        raise ValueError("stream_weights folds batch norm's running statistics: put the model in eval mode first")

    def arr(t) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    def folded(conv_w, norm) -> tuple[np.ndarray, np.ndarray]:
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return arr(conv_w * scale.reshape(-1, *([1] * (conv_w.dim() - 1)))), arr(norm.bias - norm.running_mean * scale)

    w: dict[str, np.ndarray] = {"meta": np.array([c.n_channels, c.behavior_dims, c.time_steps, c.depth,
                                                  c.padded[0], c.input_history], np.int64),
                                "lif": np.array([c.tau, c.v_threshold, c.v_reset], np.float64),
                                # 1: pooling blocks end at the newest bin (a stream saved without it: 0, at the start)
                                "blocks_end": np.array([c.block_alignment == "end"], np.int64)}
    adapter = model._adapter(day)
    if adapter is not None:
        w["read_in.w"], w["read_in.b"] = arr(adapter.read_in.weight[..., 0]), arr(adapter.read_in.bias)
    if isinstance(model.spike_in, torch.nn.Conv1d):
        w["spike_in.w"], w["spike_in.b"] = arr(model.spike_in.weight), arr(model.spike_in.bias)
    enc, dec = model.spike_encoder, model.behavior_decoder
    for i in range(c.depth):
        w[f"enc{i}.w"], w[f"enc{i}.b"] = folded(enc.convs[i].weight, enc.norms[i])
        # ConvTranspose2d weight (in, out, 2, 2): batch norm scales its output channels (dim 1)
        scale = dec.up_norms[i].weight / torch.sqrt(dec.up_norms[i].running_var + dec.up_norms[i].eps)
        w[f"up{i}.w"] = arr(dec.ups[i].weight * scale.reshape(1, -1, 1, 1))
        w[f"up{i}.b"] = arr(dec.up_norms[i].bias - dec.up_norms[i].running_mean * scale)
        w[f"dec{i}.w"], w[f"dec{i}.b"] = folded(dec.convs[i].weight, dec.norms[i])
    w["bottleneck.w"], w["bottleneck.b"] = arr(model.spike_bottleneck.conv.weight[..., 0, 0]), \
        arr(model.spike_bottleneck.conv.bias)
    w["head.w"], w["head.b"] = arr(dec.head.weight[:, :, 0, 0]), arr(dec.head.bias)
    out = model.behavior_out
    w["out0.w"], w["out0.b"] = arr(out[0].weight[..., 0]), arr(out[0].bias)
    w["out1.w"], w["out1.b"] = arr(out[2].weight[..., 0]), arr(out[2].bias)
    return w


def _session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def save_weights(path: str | Path, weights: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **weights)


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class IncrementalDecoder:
    """The causal AlignNet's newest bin, computed incrementally, for up to ``capacity`` streams (rows) side by side.

    ``step(x)`` takes one new normalised bin for every open row (rows, C) and returns the normalised behavior
    (rows, D) that the window decoder gives for the newest bin of the window ending there; ``step_rows(rows, x)``
    steps some rows only. Each row keeps its own clock, so rows whose bins arrive at different times still step
    together: the columns a window's newest bin reads lie at fixed offsets behind it (the window decoder is the same
    function of the last ``window_bins`` bins at every hop), so one batched computation serves rows at any phase.
    ``open()`` adds a row and ``reset(rows)`` restarts rows, as the live path's ring buffer starts: a history of
    ``window_bins - 1`` bins without spikes.

    State per level is a ring of the last ``keep`` columns (the column of the block of 2**i bins ending at each
    bin: every phase of the pooling blocks), gathered by each row's own clock. ``threads``: ONNX Runtime's threads
    for a step (one: a second was slower at every batch size measured, ``docs/benchmarks.md``)."""

    def __init__(self, weights: dict[str, np.ndarray], window_bins: int, batch: int = 1, threads: int = 1) -> None:
        self.w = weights
        n_ch, d_out, steps, depth, h0, history = (int(v) for v in weights["meta"])
        self.n_channels, self.behavior_dims, self.steps, self.depth, self.h0 = n_ch, d_out, steps, depth, h0
        self.history, self.window = history, int(window_bins)
        self.n_in = int(weights["read_in.w"].shape[1]) if "read_in.w" in weights else n_ch
        # columns kept per level: a level-i decoder column reads back 2 of its blocks and its upsampling one more
        # coarse block, so a newest bin reads at most about 4 * 2**depth bins back
        self.keep = max(6 * 2**depth + 2, history + 1)
        self.capacity, self.rows_open = 0, np.zeros(0, bool)
        self.t = np.zeros(0, np.int64)  # each row's clock: bins seen, the first real one at 0
        self.rings: dict[str, np.ndarray] = {}
        self._primed: dict[str, np.ndarray] | None = None
        self._names = list(self._shapes())
        self.session = _session(step_graph(weights, self.window, self.keep, self._shapes()), threads)
        self._grow(max(1, int(batch)))
        for _ in range(int(batch)):
            self.open()

    # ---- rows --------------------------------------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[int, ...]]:
        w, ts = self.w, self.steps
        shapes = {"readin": (self.n_channels,), "latent": (w["bottleneck.w"].shape[0], self.h0 >> self.depth)}
        for i in range(self.depth):
            c_in, width, h = w[f"enc{i}.w"].shape[1], w[f"enc{i}.w"].shape[0], self.h0 >> i
            shapes[f"cols{i}"] = (c_in, h) if i == 0 else (ts, c_in, h)
            shapes[f"spikes{i}"], shapes[f"rates{i}"] = (ts, width, h), (width, h)
        return shapes

    def _grow(self, capacity: int) -> None:
        """Room for ``capacity`` rows (the open ones keep their state)."""
        old = self.capacity
        for name, shape in self._shapes().items():
            ring = np.zeros((self.keep, capacity, *shape), np.float32)
            if old:
                ring[:, :old] = self.rings[name]
            self.rings[name] = ring
        self.t = np.concatenate([self.t, np.zeros(capacity - old, np.int64)])
        self.rows_open = np.concatenate([self.rows_open, np.zeros(capacity - old, bool)])
        self.capacity = capacity

    def open(self) -> int:
        """A new row, primed: returns its index."""
        free = np.flatnonzero(~self.rows_open)
        if not len(free):
            self._grow(2 * self.capacity)
            free = np.flatnonzero(~self.rows_open)
        row = int(free[0])
        self.rows_open[row] = True
        self.reset([row])
        return row

    def close(self, row: int) -> None:
        self.rows_open[row] = False

    def reset(self, rows=None) -> None:
        """Restart rows (all open rows by default) from ``window_bins - 1`` bins without spikes."""
        rows = np.flatnonzero(self.rows_open) if rows is None else np.asarray(rows, np.int64)
        if not len(rows):
            return
        if self._primed is None:  # computed once, in row ``rows[0]``, then copied
            r = rows[:1]
            self.t[r] = -(self.window - 1)
            for ring in self.rings.values():
                ring[:, r] = 0
            zero = np.zeros((1, self.n_in), np.float32)
            while self.t[r[0]] < 0:
                self.step_rows(r, zero, output=False)
            self._primed = {k: v[:, r[0]].copy() for k, v in self.rings.items()}
        for k, v in self.rings.items():
            v[:, rows] = self._primed[k][:, None]
        self.t[rows] = 0

    # ---- the interface -----------------------------------------------------------------------------------------
    def step_rows(self, rows, x: np.ndarray, output: bool = True) -> np.ndarray | None:
        """One new normalised bin for each of ``rows`` (distinct), (len(rows), C_in) -> (len(rows), D) normalised
        behavior of those bins (None without ``output``: the bins only enter the history)."""
        rows = np.asarray(rows, np.int64)
        x = np.ascontiguousarray(x, np.float32).reshape(len(rows), self.n_in)
        t = self.t[rows]
        out = self.session.run(None, {"x": x, "t": t, "rows": rows, **self.rings})  # the step graph
        slot = t % self.keep
        for name, new in zip(self._names, out[1:]):  # each ring's new column at its slot
            self.rings[name][slot, rows] = new
        self.t[rows] = t + 1
        return out[0] if output else None

    def step(self, x: np.ndarray, output: bool = True) -> np.ndarray | None:
        """(open rows, C_in) normalised bins, one per open row in row order -> (open rows, D)."""
        return self.step_rows(np.flatnonzero(self.rows_open), x, output)

    def run(self, x: np.ndarray) -> np.ndarray:
        """(open rows, C_in, T) normalised bins, streamed in order -> (open rows, D, T)."""
        return np.stack([self.step(x[..., k]) for k in range(x.shape[-1])], axis=-1)
