"""The incremental step as one ONNX graph: a new bin per row in, its decoded bin and its new cached columns out.

``IncrementalDecoder`` (``incremental.py``) keeps each level's ring of columns; this graph reads the columns a new
bin needs from those rings (a Gather by each row's clock and row), computes the new bin's column at every encoder
level and the decoder columns its window's newest bin reads, and returns them. ONNX Runtime runs the whole step in
one call with the GIL released, so the LSL bridges' threads keep running while a batch of sources steps. (The step
was numpy before: about 150 small calls, each holding the GIL, and slower.)

The graph is built here from the stream weights (``stream_weights``: batch norm folded) with ``onnx.helper`` when a
decoder is made, so an artifact needs no file beyond ``decode_stream.npz`` and the service no torch. Built by hand:
no exporter turns the cached-column recurrence into a graph (torch's exporters trace whole windows).

Graph inputs: ``x`` (N, C_in) normalised bins; ``t`` (N,) int64 each row's clock of the new bin; ``rows`` (N,) int64
their rows; and every ring by name, (keep, capacity, ...). Outputs: ``y`` (N, D) and ``new.<ring>`` (N, ...), the new
bin's column of each ring, which the caller stores at slot ``t % keep``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Graph:
    """A small node writer: unique names, constants as initializers."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, value, dtype=np.float32) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


class _StepBuilder:
    """Mirrors the window decoder's causal layers for the newest bin (see ``incremental.py`` for why each column is
    where it is)."""

    def __init__(self, w: dict[str, np.ndarray], window_bins: int, keep: int, shapes: dict[str, tuple]) -> None:
        self.w, self.window, self.keep, self.shapes = w, int(window_bins), int(keep), shapes
        n_ch, _, self.steps, self.depth, self.h0, self.history = (int(v) for v in w["meta"])
        self.n_channels = n_ch
        self.tau, self.v_th, self.v_reset = (np.float32(v) for v in w["lif"])
        self.blocks_end = bool(w["blocks_end"][0]) if "blocks_end" in w else False
        self.g = _Graph()
        self.new: dict[str, str] = {}  # ring -> the new bin's column
        self._taps: dict = {}
        self._flat: dict[str, str] = {}
        self._backs: dict[int, int] = {}

    # ---- reading the rings -----------------------------------------------------------------------------------------
    def _index(self, backs: tuple[int, ...]) -> str:
        """Flat ring indices (slot * capacity + row) of the columns ``backs`` bins before each row's new bin: (N,)
        for one back, (N, B) for several. Every back the graph reads is one column of ``flat`` (built last, in
        ``finish``)."""
        pos = [self._backs.setdefault(b, len(self._backs)) for b in backs]
        return self.g.op("Gather", "flat", self.g.const(pos[0] if len(pos) == 1 else pos, np.int64), axis=1)

    def _columns(self, ring: str) -> str:
        """The ring as one list of columns, (keep * capacity, ...)."""
        if ring not in self._flat:
            self._flat[ring] = self.g.op("Reshape", ring, self.g.const([-1, *self.shapes[ring]], np.int64))
        return self._flat[ring]

    def col(self, ring: str, back: int) -> str:
        """The column of ``ring`` ``back`` bins before each row's new bin, (N, ...); back 0 is the new column (not
        yet in the ring)."""
        if back == 0:
            return self.new[ring]
        if (ring, back) not in self._taps:
            self._taps[ring, back] = self.g.op("Gather", self._columns(ring), self._index((back,)), axis=0)
        return self._taps[ring, back]

    def history_of(self, ring: str, n: int) -> str:
        """The last ``n`` columns of ``ring``, the new one last, (N, n, ...)."""
        old = self.g.op("Gather", self._columns(ring), self._index(tuple(range(n - 1, 0, -1))), axis=0)
        return self.g.op("Concat", old, self.g.op("Unsqueeze", self.new[ring], self.g.const([1], np.int64)), axis=1)

    def finish(self) -> None:
        """``flat`` (N, backs): every back's flat index, computed first in the graph (nodes are in order)."""
        g, nodes = self.g, self.g.nodes
        g.nodes = []
        backs = sorted(self._backs, key=self._backs.get)
        if max(backs) >= self.keep:
            raise ValueError(f"the step reads {max(backs)} bins back, but the rings keep {self.keep} columns")
        clock = g.op("Sub", g.op("Unsqueeze", "t", g.const([1], np.int64)), g.const([backs], np.int64))
        slot = g.op("Mod", clock, g.const(self.keep, np.int64))  # Python's sign: the ring's slot
        capacity = g.op("Shape", next(iter(self.shapes)), start=1, end=2)
        g.op("Add", g.op("Mul", slot, capacity), g.op("Unsqueeze", "rows", g.const([1], np.int64)), out="flat")
        g.nodes += nodes

    # ---- layers --------------------------------------------------------------------------------------------------
    def batched(self, inputs: list[str], fn) -> list[str]:
        """``fn`` once over ``inputs`` (each (N, ...)) stacked along the batch axis, split back: one kernel call."""
        if len(inputs) == 1:
            return [fn(inputs[0])]
        g = self.g
        outs = [g.name("part") for _ in inputs]
        g.nodes.append(helper.make_node("Split", [fn(g.op("Concat", *inputs, axis=0))], outs, axis=0))
        return outs

    def conv3(self, columns: list[list[str]], name: str, steps: int = 0, relu: bool = False) -> list[str]:
        """Causal 3x3 convolutions' newest columns, each from three columns (N, [Ts,] c, H), oldest first. The time
        taps become channels (tap-major) of a 1-D convolution along H, padded by one on each side as in training.
        -> one (N, [Ts,] out, H) per entry of ``columns``, all in one call."""
        g, w = self.g, self.w[f"{name}.w"]  # (out, in, 3 H, 3 time)
        out, c, h = w.shape[0], 3 * w.shape[1], self.h0 >> int(name[3:])
        kernel, bias = g.const(w.transpose(0, 3, 1, 2).reshape(out, c, 3)), g.const(self.w[f"{name}.b"])

        def conv(x: str) -> str:
            y = g.op("Conv", x, kernel, bias, pads=[1, 1])  # (M, out, H)
            return g.op("Relu", y) if relu else y

        ys = self.batched([g.op("Reshape", g.op("Concat", *taps, axis=-2), g.const([-1, c, h], np.int64))
                           for taps in columns], conv)
        return [g.op("Reshape", y, g.const([-1, steps, out, h], np.int64)) for y in ys] if steps else ys

    def lif(self, x: str, repeat: int = 0) -> str:
        """Multi-step LIF over axis 1 of (N, Ts, ...), as ``model.lif.PlainLIF`` in float32 (with ``repeat``: x (N, ...)
        is one input repeated that many steps). -> spikes (N, Ts, ...)."""
        g = self.g
        tau, v_th = g.const(self.tau), g.const(self.v_th)
        v_reset = g.const(self.v_reset) if self.v_reset != 0 else None
        one = g.const(1.0) if self.v_reset == 0 else None
        n = repeat or self.steps
        if repeat:
            x = g.op("Unsqueeze", x, g.const([1], np.int64))
        spikes, v = [], None
        for t in range(n):
            xt = x if repeat else g.op("Gather", x, g.const([t], np.int64), axis=1)  # (N, 1, ...)
            if v is None:  # v starts at v_reset
                h = g.op("Div", xt, tau)
                if self.v_reset != 0:
                    h = g.op("Add", v_reset, h)
            else:
                leak = g.op("Sub", v, v_reset) if self.v_reset != 0 else v
                h = g.op("Add", v, g.op("Div", g.op("Sub", xt, leak), tau))
            if self.v_reset == 0:  # PlainLIF's h * (1 - s): a product by 0 or 1, exact, cheaper than Where here
                below = g.op("Cast", g.op("Less", h, v_th), to=TensorProto.FLOAT)
                spikes.append(g.op("Sub", one, below))
                v = g.op("Mul", h, below) if t + 1 < n else None
            else:
                fired = g.op("GreaterOrEqual", h, v_th)
                spikes.append(g.op("Cast", fired, to=TensorProto.FLOAT))
                v = g.op("Where", fired, v_reset, h) if t + 1 < n else None
        return g.op("Concat", *spikes, axis=1)

    def pool(self, a: str, b: str, shape: tuple[int, ...]) -> str:
        """2x2 max-pool of two time columns (N, Ts, w, H) -> (N, Ts, w, H/2)."""
        g = self.g
        m = g.op("Reshape", g.op("Max", a, b), g.const([-1, *shape[-2:]], np.int64))
        pooled = g.op("MaxPool", m, kernel_shape=[2], strides=[2])
        return g.op("Reshape", pooled, g.const([-1, *shape[:-1], shape[-1] // 2], np.int64))

    def encode(self) -> None:
        """The new bin's column at every level of the encoder, and the latent of the coarsest block ending at it."""
        g, w, new = self.g, self.w, self.new
        x = "x"
        if "read_in.w" in w:
            x = g.op("Gemm", x, g.const(w["read_in.w"]), g.const(w["read_in.b"]), transB=1)
        new["readin"] = x
        if "spike_in.w" in w:  # (out, in, history) on the last `history` bins, oldest first, as one product
            k = w["spike_in.w"]
            hist = g.op("Reshape", self.history_of("readin", self.history), g.const([0, -1], np.int64))
            mat = np.ascontiguousarray(k.transpose(2, 1, 0).reshape(-1, k.shape[0]))  # (history * in, out)
            x = g.op("Add", g.op("MatMul", hist, g.const(mat)), g.const(w["spike_in.b"]))
        col = g.op("Unsqueeze", g.op("Pad", x, g.const([0, 0, 0, self.h0 - self.n_channels], np.int64)),
                   g.const([1], np.int64))  # (N, 1, H0)
        for i in range(self.depth):
            size = 1 << i
            new[f"cols{i}"] = col
            taps = [self.col(f"cols{i}", b) for b in (2 * size, size, 0)]
            if i == 0:  # direct encoding: the same input every step
                s = self.lif(self.conv3([taps], "enc0")[0], repeat=self.steps)
            else:  # steps folded into the batch for the convolution
                s = self.lif(self.conv3([taps], f"enc{i}", steps=self.steps)[0])
            new[f"spikes{i}"] = s
            new[f"rates{i}"] = g.op("ReduceMean", s, axes=[1], keepdims=0)
            pooled = self.pool(self.col(f"spikes{i}", size), s, self.shapes[f"spikes{i}"])
            if i + 1 < self.depth:
                col = pooled
            else:  # bottleneck: rates, 1x1 conv, ReLU
                rates = g.op("ReduceMean", pooled, axes=[1], keepdims=0)
                lat = g.op("Conv", rates, g.const(w["bottleneck.w"][..., None]), g.const(w["bottleneck.b"]))
                new["latent"] = g.op("Relu", lat)

    def _parent(self, i: int, back: int) -> tuple[bool, int]:
        """Level i's upsampled column ending ``back`` bins before the newest, in the newest bin's window, through
        the transposed conv's kernel column for its half of the parent block. Which half, and how far back the
        coarser column it reads ends, depend only on ``back``: -> (second half, the coarse column's back).
        Blocks at the window's start: the coarser column one block before its parent. Blocks at the window's end:
        the second half reads its own parent (which ends with it), the first half the parent before."""
        size = 1 << i
        if self.blocks_end:
            second = back % (2 * size) == 0
            return second, back + (0 if second else size)
        second = (self.window - back) % (2 * size) == 0
        return second, back + (2 * size if second else size)

    def upsampler(self, i: int, second: bool):
        """Level i's transposed conv (stride 2 along H) through its kernel column for one half of the parent block,
        with ReLU: (M, in, H/2) -> (M, out, H). As a 1x1 convolution to both halves' channels, then interleaved:
        ONNX Runtime's ConvTranspose took about as long here as the convolutions with a hundred times its work (its
        profiler, batch 20, while this was built)."""
        g, w = self.g, self.w[f"up{i}.w"][..., int(second)]  # (in, out, 2)
        n_in, out, _ = w.shape
        h = self.h0 >> i
        kernel = g.const(w.transpose(2, 1, 0).reshape(2 * out, n_in, 1))  # (half * out, in, 1)
        bias = g.const(np.tile(self.w[f"up{i}.b"], 2))

        def up(x: str) -> str:
            y = g.op("Relu", g.op("Conv", x, kernel, bias))  # (M, 2 out, H/2): both halves of each coarse row
            y = g.op("Transpose", g.op("Reshape", y, g.const([-1, 2, out, h // 2], np.int64)), perm=[0, 2, 3, 1])
            return g.op("Reshape", y, g.const([-1, out, h], np.int64))
        return up

    def decode(self) -> str:
        """The decoder columns the newest bin reads, level by level from the coarsest, each level's in one
        convolution call: at level i, ReLU(conv(upsampled ++ skip rates)) over the three blocks ending at each
        column. -> level 0's column ending at the new bin, (N, w_0, H_0)."""
        g, need = self.g, [{0}]  # the decoder columns each level needs (static: they depend on the window only)
        for i in range(self.depth - 1):
            need.append({self._parent(i, b)[1] for back in need[i] for b in (back + 2 * (1 << i), back + (1 << i),
                                                                               back)})
        coarse = None  # back -> the level above's decoder column
        for i in reversed(range(self.depth)):
            size = 1 << i
            ups: dict[int, str] = {}
            wanted = sorted({b for back in need[i] for b in (back + 2 * size, back + size, back)})
            for second in (False, True):
                backs = [b for b in wanted if self._parent(i, b)[0] == second]
                if not backs:
                    continue
                srcs = [coarse[src] if coarse else self.col("latent", src) for src in
                        (self._parent(i, b)[1] for b in backs)]
                ups.update(zip(backs, self.batched(srcs, self.upsampler(i, second))))
            backs = sorted(need[i])
            columns = [[g.op("Concat", ups[b], self.col(f"rates{i}", b), axis=1)
                        for b in (back + 2 * size, back + size, back)] for back in backs]
            coarse = dict(zip(backs, self.conv3(columns, f"dec{i}", relu=True)))
        return coarse[0]

    def output(self) -> str:
        g, w = self.g, self.w
        d0 = self.decode()  # (N, w_0, H_0)
        head = g.op("Conv", d0, g.const(w["head.w"][..., None]), g.const(w["head.b"]))  # (N, 1, H_0)
        head = g.op("Slice", g.op("Squeeze", head, g.const([1], np.int64)), g.const([0], np.int64),
                    g.const([self.n_channels], np.int64), g.const([1], np.int64))
        hid = g.op("Relu", g.op("Gemm", head, g.const(w["out0.w"]), g.const(w["out0.b"]), transB=1))
        return g.op("Gemm", hid, g.const(w["out1.w"]), g.const(w["out1.b"]), transB=1, out="y")


def step_graph(weights: dict[str, np.ndarray], window_bins: int, keep: int,
               shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """The step's ONNX model for rings of ``keep`` columns with per-row ``shapes`` (``IncrementalDecoder._shapes``)."""
    b = _StepBuilder(weights, window_bins, keep, shapes)
    b.encode()
    b.output()
    b.finish()
    g = b.g
    rename = {b.new[r]: f"new.{r}" for r in shapes if b.new[r] not in ("x", *shapes)}
    for node in g.nodes:  # each ring's new column is a graph output as it is made (no copy)
        node.input[:] = [rename.get(v, v) for v in node.input]
        node.output[:] = [rename.get(v, v) for v in node.output]
    for r in shapes:
        if b.new[r] not in rename:
            g.op("Identity", b.new[r], out=f"new.{r}")
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    n_in = int(weights["read_in.w"].shape[1]) if "read_in.w" in weights else b.n_channels
    inputs = [helper.make_tensor_value_info("x", f32, ["N", n_in]), helper.make_tensor_value_info("t", i64, ["N"]),
              helper.make_tensor_value_info("rows", i64, ["N"])]
    inputs += [helper.make_tensor_value_info(r, f32, [keep, "capacity", *s]) for r, s in shapes.items()]
    outputs = [helper.make_tensor_value_info("y", f32, ["N", int(weights["out1.w"].shape[0])])]
    outputs += [helper.make_tensor_value_info(f"new.{r}", f32, ["N", *s]) for r, s in shapes.items()]
    graph = helper.make_graph(g.nodes, "alignnet_stream_step", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="alignnet")
    onnx.checker.check_model(model)
    return model
