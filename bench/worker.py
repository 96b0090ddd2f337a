"""One engine's latency figures, measured in a process of its own
(``python -m alignnet.bench.worker '{"artifact": ..., "engine": "onnx", "threads": 1, "repeats": 300}'``).

torch and ONNX Runtime in one process were seen to slow each other, so ``alignnet bench latency`` starts one of these
per engine (``alignnet.bench.engines.engine_latency``), passing its settings as one JSON argument, and reads the
JSON it prints."""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def measure(fn, x: np.ndarray, repeats: int) -> np.ndarray:
    for _ in range(min(20, repeats)):  # warm-up
        fn(x)
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn(x)
        out[i] = (time.perf_counter() - t) * 1000
    return out


def engine_figures(artifact: str, engine: str, threads: int = 1, repeats: int = 300,
                   batches: tuple[int, ...] = (1, 8, 64)) -> dict:
    """Batch-1 latency p50/p99 and windows/s at each batch size, decode and simulate, of one engine."""
    from alignnet.service.engines import load_engine

    eng = load_engine(artifact, engine, threads)
    c = eng.contract
    rng = np.random.default_rng(0)
    res = {"engine": engine, "threads": threads, "repeats": repeats}
    for path, make in (("decode", lambda b: rng.poisson(0.5, (b, c.n_channels, c.window_bins)).astype(np.float32)),
                       ("simulate", lambda b: rng.standard_normal((b, c.behavior_dims, c.window_bins))
                        .astype(np.float32))):
        fn = eng.decode if path == "decode" else eng.simulate
        lat = measure(fn, make(1), repeats)
        res[f"{path}_p50_ms"], res[f"{path}_p99_ms"] = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        for b in batches:
            t = measure(fn, make(b), max(5, repeats // max(b, 1) * 2))
            res[f"{path}_windows_per_s_b{b}"] = float(b / (np.median(t) / 1000))
    return res


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    json.dump(engine_figures(**spec), sys.stdout)
    return 0

if __name__ == "__main__":
    sys.exit(main())
