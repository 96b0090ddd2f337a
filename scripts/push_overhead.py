"""What a live stream's step costs over the bare incremental step it wraps (docs/benchmarks.md, "One live pipeline
and the root layout"): the default model, one BLAS thread, 3,000 single bins through
``IncrementalDecoder.step_rows`` (on bins normalised beforehand), through ``RowGroup.step_lone`` (a lone LSL
source's step: the contract's per-bin maps and the row group's lock) and through ``LiveStream.push`` (the batcher's
flat combining on top), the first 500 of each dropped as warm-up.

    .venv/bin/python scripts/push_overhead.py
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from alignnet.service.engines import load_engine
from alignnet.service.http.settings import DEFAULT_ARTIFACT


def percentiles(f, x: np.ndarray) -> tuple[float, float]:
    times = []
    for i in range(len(x)):
        t = time.perf_counter()
        f(x[i:i + 1])
        times.append(time.perf_counter() - t)
    p50, p99 = np.percentile(np.array(times[500:]) * 1e3, [50, 99])
    return float(p50), float(p99)


def main() -> None:
    threadpool_limits(1, user_api="blas")
    engine = load_engine(DEFAULT_ARTIFACT)
    stream = engine.open_stream()
    rows, c = stream.rows, engine.contract
    x = np.random.default_rng(0).poisson(0.5, (3000, c.n_channels)).astype(np.float32)
    step = percentiles(lambda b: rows.decoder.step_rows([stream.row], b), np.log1p(x) / rows.scale)
    lone = percentiles(lambda b: rows.step_lone(stream.row, b), x)
    push = percentiles(stream.push, x)
    print(f"step_rows  p50 {step[0]:.3f}  p99 {step[1]:.3f} ms")
    for name, (p50, p99) in (("step_lone", lone), ("push", push)):
        print(f"{name:10} p50 {p50:.3f}  p99 {p99:.3f} ms   (+{p50 - step[0]:.3f} ms at p50)")


if __name__ == "__main__":
    main()
