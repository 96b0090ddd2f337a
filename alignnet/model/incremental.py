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

Written by hand in numpy: no library runs a U-Net incrementally (ONNX Runtime and TorchScript run whole graphs), and
the service stays free of torch. Weights come from ``stream_weights`` (batch norm folded into the convolutions) and
are stored in the artifact as ``decode_stream.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
                                "lif": np.array([c.tau, c.v_threshold, c.v_reset], np.float64)}
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


def save_weights(path: str | Path, weights: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **weights)


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---- the stream (numpy) -------------------------------------------------------------------------------------------
def _conv3(taps: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A causal 3x3 convolution's newest column. ``taps`` (3, N, in, H): the column and the two before it, oldest
    first; ``w``: the kernel as one (3 H * out, 3 in) matrix, time taps side by side (``_conv_matrices``); H padded
    by zeros on each side as in training. -> (N, out, H). The three time taps and each tap's three kernel rows are
    one matrix product; the rows above and below are then added shifted by one (no 9x copy of the input)."""
    _, n, c, h = taps.shape
    z = w @ taps.transpose(0, 2, 1, 3).reshape(3 * c, n * h)  # (3 * out, N * H), over every row and column
    z = z.reshape(3, -1, n, h)
    out = z[1] + b[:, None, None]  # (out, N, H)
    out[..., 1:] += z[0, :, :, :-1]  # the kernel's first row reads the channel row above
    out[..., :-1] += z[2, :, :, 1:]  # its last row, the one below
    return out.transpose(1, 0, 2)


def _conv_matrices(w: np.ndarray) -> np.ndarray:
    """(out, in, 3 H, 3 time) -> (3 H * out, 3 time * in): rows by kernel row then output, columns by time tap then
    input."""
    return np.ascontiguousarray(w.transpose(2, 0, 3, 1).reshape(3 * w.shape[0], -1))


def _pool(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x2 max-pool of two time columns (..., H) -> (..., H/2)."""
    m = np.maximum(a, b)
    return np.maximum(m[..., 0::2], m[..., 1::2])


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
    bin: every phase of the pooling blocks), gathered by each row's own clock."""

    def __init__(self, weights: dict[str, np.ndarray], window_bins: int, batch: int = 1) -> None:
        self.w = weights
        n_ch, d_out, steps, depth, h0, history = (int(v) for v in weights["meta"])
        self.n_channels, self.behavior_dims, self.steps, self.depth, self.h0 = n_ch, d_out, steps, depth, h0
        self.history, self.window = history, int(window_bins)
        self.tau, self.v_th, self.v_reset = (float(v) for v in weights["lif"])
        self.n_in = int(weights["read_in.w"].shape[1]) if "read_in.w" in weights else n_ch
        self.mats = {k: _conv_matrices(weights[k]) for k in weights
                     if k.endswith(".w") and k.startswith(("enc", "dec"))}
        for i in range(depth):  # the transposed conv's two kernel columns as (in, out * 2 H) matrices, for _up
            up = weights[f"up{i}.w"]
            self.mats[f"up{i}"] = [np.ascontiguousarray(up[..., b].reshape(len(up), -1)) for b in (0, 1)]
        # columns kept per level: a level-i decoder column reads back 2 of its blocks and its upsampling one more
        # coarse block, so a newest bin reads at most about 4 * 2**depth bins back
        self.keep = max(6 * 2**depth + 2, history + 1)
        self.capacity, self.rows_open = 0, np.zeros(0, bool)
        self.t = np.zeros(0, np.int64)  # each row's clock: bins seen, the first real one at 0
        self.rings: dict[str, np.ndarray] = {}
        self._primed: dict[str, np.ndarray] | None = None
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
                self._encode(r, zero)
            self._primed = {k: v[:, r[0]].copy() for k, v in self.rings.items()}
        for k, v in self.rings.items():
            v[:, rows] = self._primed[k][:, None]
        self.t[rows] = 0

    # ---- layers ------------------------------------------------------------------------------------------------
    def _lif(self, x: np.ndarray, steps: int | None = None) -> np.ndarray:
        """Multi-step LIF over axis 1 of (N, Ts, ...) as ``model.lif.PlainLIF``, with the same float32 results (the
        terms it skips are exact: v - 0, 0 + y); with ``steps``, x (N, ...) is one input repeated that many steps."""
        tau, v_th, v_reset = np.float32(self.tau), np.float32(self.v_th), np.float32(self.v_reset)
        n = steps or x.shape[1]
        out = np.empty((x.shape[0], n, *x.shape[(1 if steps else 2):]), np.float32)
        v = None
        for t in range(n):
            xt = x if steps else x[:, t]
            if v is None:  # v starts at v_reset
                h = xt / tau if v_reset == 0 else v_reset + xt / tau
            else:
                h = v + (xt - (v - v_reset if v_reset else v)) / tau
            fired = h >= v_th
            out[:, t] = fired
            v = np.where(fired, v_reset, h)  # PlainLIF's h * (1 - s) + v_reset * s, for finite h
        return out

    @staticmethod
    def _mean(s: np.ndarray, axis: int) -> np.ndarray:
        """Over the step axis, as numpy's mean computes it (without its Python overhead)."""
        return np.add.reduce(s, axis) / np.float32(s.shape[axis])

    def _at(self, name: str, rows: np.ndarray, back) -> np.ndarray:
        """Ring ``name`` at ``back`` bins before each row's newest (an int: (N, ...); a tuple: (len, N, ...))."""
        t = self.t[rows] - 1  # the newest bin's clock
        if isinstance(back, tuple):
            return self.rings[name][(t[None] - np.asarray(back)[:, None]) % self.keep, rows[None]]
        return self.rings[name][(t - back) % self.keep, rows]

    def _encode(self, rows: np.ndarray, x: np.ndarray) -> None:
        """A new bin for each row into every level: at level i, the column of the 2**i-bin block that ends at it;
        at the bottom, the latent of the coarsest block that ends at it."""
        w, r = self.w, self.rings
        slot = self.t[rows] % self.keep
        self.t[rows] += 1
        if "read_in.w" in w:
            x = x @ w["read_in.w"].T + w["read_in.b"]
        r["readin"][slot, rows] = x
        if "spike_in.w" in w:  # (out, in, history) on the last `history` bins, oldest first
            hist = self._at("readin", rows, tuple(range(self.history - 1, -1, -1)))  # (history, N, C)
            u = np.einsum("knc,ock->no", hist, w["spike_in.w"], optimize=False) + w["spike_in.b"]
        else:
            u = x
        col = np.zeros((len(rows), 1, self.h0), np.float32)
        col[:, 0, :self.n_channels] = u
        for i in range(self.depth):
            size, n = 1 << i, len(rows)
            r[f"cols{i}"][slot, rows] = col
            taps = self._at(f"cols{i}", rows, (2 * size, size, 0))  # (3, N, [Ts,] c, H), oldest first
            if i == 0:  # direct encoding: the same input every step
                s = self._lif(_conv3(taps, self.mats["enc0.w"], w["enc0.b"]), self.steps)
            else:  # steps folded into the batch for the convolution
                z = _conv3(taps.reshape(3, n * self.steps, *taps.shape[3:]), self.mats[f"enc{i}.w"], w[f"enc{i}.b"])
                s = self._lif(z.reshape(n, self.steps, *z.shape[1:]))
            r[f"spikes{i}"][slot, rows], r[f"rates{i}"][slot, rows] = s, self._mean(s, 1)
            pooled = _pool(self._at(f"spikes{i}", rows, size), s)  # the block of 2 ** (i + 1) ending here
            if i + 1 < self.depth:
                col = pooled
            else:  # bottleneck: rates, 1x1 conv, ReLU
                lat = np.einsum("nch,lc->nlh", self._mean(pooled, 1), w["bottleneck.w"], optimize=False)
                r["latent"][slot, rows] = np.maximum(lat + w["bottleneck.b"][None, :, None], 0)

    def _up(self, rows: np.ndarray, i: int, back: int, memo: dict) -> np.ndarray:
        """Level i's upsampled column ending ``back`` bins before the newest, in the newest bin's window: the
        coarser decoder column one block before its parent block, through the transposed conv's kernel column for
        its half of the parent. Which half depends only on ``back`` (the window's blocks start at its first bin).
        -> (N, w_i, H_i)."""
        if ("up", i, back) in memo:
            return memo["up", i, back]
        size = 1 << i
        second = (self.window - back) % (2 * size) == 0
        src = back + (2 * size if second else size)
        coarse = self._at("latent", rows, src) if i == self.depth - 1 else self._decode(rows, i + 1, src, memo)
        n, _, hc = coarse.shape
        up = coarse.transpose(0, 2, 1) @ self.mats[f"up{i}"][int(second)]  # (N, H/2, out * 2)
        up = up.reshape(n, hc, -1, 2).transpose(0, 2, 1, 3).reshape(n, -1, 2 * hc)
        memo["up", i, back] = out = np.maximum(up + self.w[f"up{i}.b"][None, :, None], 0)
        return out

    def _decode(self, rows: np.ndarray, i: int, back: int, memo: dict) -> np.ndarray:
        """Level i's decoder column ending ``back`` bins before the newest: ReLU(conv(upsampled ++ skip rates))."""
        if ("dec", i, back) in memo:
            return memo["dec", i, back]
        size = 1 << i
        backs = (back + 2 * size, back + size, back)  # oldest first
        ups = np.stack([self._up(rows, i, b, memo) for b in backs])  # (3, N, w_i, H_i)
        taps = np.concatenate([ups, self._at(f"rates{i}", rows, backs)], axis=2)
        memo["dec", i, back] = d = np.maximum(_conv3(taps, self.mats[f"dec{i}.w"], self.w[f"dec{i}.b"]), 0)
        return d

    # ---- the interface -----------------------------------------------------------------------------------------
    def step_rows(self, rows, x: np.ndarray, output: bool = True) -> np.ndarray | None:
        """One new normalised bin for each of ``rows`` (distinct), (len(rows), C_in) -> (len(rows), D) normalised
        behavior of those bins (None without ``output``: the bins only enter the history)."""
        rows = np.asarray(rows, np.int64)
        self._encode(rows, np.asarray(x, np.float32).reshape(len(rows), self.n_in))
        if not output:
            return None
        w = self.w
        d0 = self._decode(rows, 0, 0, {})  # (N, w_0, H_0)
        head = (np.einsum("nch,c->nh", d0, w["head.w"][0], optimize=False) + w["head.b"][0])[:, :self.n_channels]
        hid = np.maximum(head @ w["out0.w"].T + w["out0.b"], 0)
        return hid @ w["out1.w"].T + w["out1.b"]

    def step(self, x: np.ndarray, output: bool = True) -> np.ndarray | None:
        """(open rows, C_in) normalised bins, one per open row in row order -> (open rows, D)."""
        return self.step_rows(np.flatnonzero(self.rows_open), x, output)

    def run(self, x: np.ndarray) -> np.ndarray:
        """(open rows, C_in, T) normalised bins, streamed in order -> (open rows, D, T)."""
        return np.stack([self.step(x[..., k]) for k in range(x.shape[-1])], axis=-1)
