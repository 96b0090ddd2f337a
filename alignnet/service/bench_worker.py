"""One engine's latency figures, measured in a process of its own (``python -m alignnet.service.bench_worker``).

torch and ONNX Runtime in one process were seen to slow each other, so ``alignnet bench latency`` starts one of these
per engine and reads the JSON it prints."""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("artifact")
    p.add_argument("engine")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--batches", default="1,8,64")
    a = p.parse_args(argv)
    from alignnet.service.engines import load_engine

    eng = load_engine(a.artifact, a.engine, a.threads)
    c = eng.contract
    rng = np.random.default_rng(0)
    res = {"engine": a.engine, "threads": a.threads, "repeats": a.repeats}
    for path, make in (("decode", lambda b: rng.poisson(0.5, (b, c.n_channels, c.window_bins)).astype(np.float32)),
                       ("simulate", lambda b: rng.standard_normal((b, c.behavior_dims, c.window_bins))
                        .astype(np.float32))):
        fn = eng.decode if path == "decode" else eng.simulate
        lat = measure(fn, make(1), a.repeats)
        res[f"{path}_p50_ms"], res[f"{path}_p99_ms"] = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        for b in map(int, a.batches.split(",")):
            n = max(5, a.repeats // max(b, 1) * 2)
            t = measure(fn, make(b), n)
            res[f"{path}_windows_per_s_b{b}"] = float(b / (np.median(t) / 1000))
    json.dump(res, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
