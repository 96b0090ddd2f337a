"""Two measurements behind the live path's design (docs/benchmarks.md, "One bin at a time"):

1. Incremental steps from many threads at 50 Hz, each thread stepping its own decoder with no shared lock, against
   the service's way (one pool of rows, every waiting bin stepped in one batch under one lock): per-step time
   p50/p99 as each thread sees it.
2. The drift gauge's matrix square roots: ``scipy.linalg.sqrtm`` (the textbook W2 formula) against the symmetric
   eigensolver the gauge uses, on 64-dimensional covariances.

    .venv/bin/python scripts/live_step_checks.py [--threads 16] [--seconds 5]
"""

import argparse
import threading
import time

import numpy as np
from scipy import linalg

from alignnet.model.drift import gaussian_w2
from alignnet.service.engines import load_engine
from alignnet.service.http.settings import DEFAULT_ARTIFACT


def threads_at_50hz(engine, n: int, seconds: float, pooled: bool) -> np.ndarray:
    """Per-call times (ms) of n threads each pushing one bin every 20 ms."""
    from alignnet.model.incremental import IncrementalDecoder, load_weights

    bins = np.random.default_rng(0).poisson(0.8, (1000, engine.contract.n_channels)).astype(np.float32)
    weights = load_weights(engine.folder / "decode_stream.npz")
    times: list[list[float]] = [[] for _ in range(n)]

    def run(i: int) -> None:
        if pooled:
            live = engine.open_stream()
            step = live.push
        else:  # a decoder of its own, no lock
            dec = IncrementalDecoder(weights, engine.contract.window_bins)
            step = lambda x: dec.step(engine.contract.scale_counts(x.T[None])[..., 0])  # noqa: E731
        t0 = time.perf_counter()
        for k in range(int(seconds * 50)):
            t = time.perf_counter()
            step(bins[k % len(bins)][None])
            times[i].append(time.perf_counter() - t)
            time.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.perf_counter()))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.concatenate(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    engine = load_engine(DEFAULT_ARTIFACT)
    for pooled in (False, True):
        ms = threads_at_50hz(engine, args.threads, args.seconds, pooled)
        print(f"{args.threads} threads at 50 Hz, {'one pool, batched steps' if pooled else 'a decoder each, no lock'}:"
              f" p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms per step")
    rng = np.random.default_rng(0)
    a, b = np.cov(rng.standard_normal((200, 64)).T), np.cov(rng.standard_normal((60, 64)).T * 1.3)
    ma, mb = np.zeros(64), np.full(64, 0.1)
    for name, fn in (("scipy.linalg.sqrtm", lambda: np.sum((ma - mb) ** 2) + np.trace(
            a + b - 2 * np.real(linalg.sqrtm(linalg.sqrtm(a) @ b @ linalg.sqrtm(a))))),
                     ("eigh (as the gauge)", lambda: gaussian_w2(ma, a, mb, b))):
        fn()
        t = time.perf_counter()
        for _ in range(50):
            value = fn()
        print(f"W2 by {name}: {(time.perf_counter() - t) / 50 * 1e3:.2f} ms, value {value:.6f}")


if __name__ == "__main__":
    main()
