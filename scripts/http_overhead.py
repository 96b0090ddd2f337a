"""Where the time of one HTTP decode goes: engine alone, then /health, /decode (.npy) and /decode (JSON) round trips
from one synchronous httpx client against `alignnet serve` on loopback (default model, one engine thread).

Usage (from the repository root): .venv/bin/python scripts/http_overhead.py [REPEATS]
"""

import io
import sys
import time

import httpx
import numpy as np

from alignnet.service.engines import load_engine
from alignnet.service.http.launcher import serving
from alignnet.service.http.settings import DEFAULT_ARTIFACT


def timed(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e3


def main(repeats: int = 200) -> None:
    x = np.random.default_rng(0).poisson(0.4, (64, 100)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    body, npy = buf.getvalue(), {"content-type": "application/x-npy", "accept": "application/x-npy"}
    engine = load_engine(DEFAULT_ARTIFACT, "onnx")
    print(f"engine decode (this process): {timed(lambda: engine.decode(x[None]), repeats):.2f} ms")
    with serving(DEFAULT_ARTIFACT) as url, httpx.Client() as c:
        print(f"GET /health round trip: {timed(lambda: c.get(url + '/health'), repeats):.2f} ms")
        print(f"POST /decode .npy: {timed(lambda: c.post(url + '/decode', content=body, headers=npy), repeats):.2f} ms")
        server = [float(c.post(url + "/decode", content=body, headers=npy).headers["server-timing"].split("=")[1])
                  for _ in range(repeats)]
        print(f"  of which the engine inside the server (Server-Timing): {np.mean(server):.2f} ms")
        js = {"spikes": x.tolist()}
        print(f"POST /decode JSON: {timed(lambda: c.post(url + '/decode', json=js), repeats):.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
