"""Bounded load on loopback against a service: ``http_load`` (N concurrent clients posting batch-1 windows to
/decode for T seconds, or requests offered open-loop at R a second) and ``lsl_latency`` (a spike outlet at the bin
rate into the service's LSL bridge, every decoded sample timed against its input stamp). ``alignnet bench load``
and ``alignnet bench lsl`` drive them; each starts ``alignnet serve`` in a subprocess (one engine thread) unless
given a URL."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import numpy as np

from alignnet.service.http.codec import NPY, to_npy
from alignnet.service.http.launcher import serving
from alignnet.service.live.consumer import DecodedStream


def percentiles(x: list[float]) -> dict[str, float]:
    """Seconds -> n, p50/p90/p99/max in ms."""
    a = np.asarray(x, np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p90_ms": round(float(np.percentile(a, 90)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3)}


def served_contract(url: str) -> dict:
    """The data contract of the model a service serves (GET /model)."""
    import httpx

    return httpx.get(url + "/model", timeout=5).json()["contract"]


def _bodies(fmt: str, shape: tuple[int, int]) -> list[dict]:
    """32 seeded batch-1 windows as /decode request bodies."""
    windows = np.random.default_rng(0).poisson(0.4, (32, *shape)).astype(np.float32)
    if fmt == "npy":
        return [{"content": to_npy(w), "headers": {"content-type": NPY, "accept": NPY}} for w in windows]
    return [{"json": {"spikes": w.tolist()}} for w in windows]


async def _open_loop(url: str, rate: float, seconds: float, fmt: str, shape: tuple[int, int],
                     connections: int = 256) -> dict:
    """Requests offered at ``rate`` a second for ``seconds``, each sent at its own time whether or not the ones
    before it were answered (open loop: users do not wait for each other). Latency runs from when a request was
    due, so time spent waiting for a connection or behind a slow answer counts (no coordinated omission)."""
    import httpx

    bodies = _bodies(fmt, shape)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    n = int(rate * seconds)

    async def one(i: int, due: float, http: httpx.AsyncClient) -> None:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await _post(http, url, bodies[i % len(bodies)], due, latencies, errors)

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
        await http.get(url + "/health")  # one connection open before the clock starts
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(one(i, t0 + i / rate, http) for i in range(n)))
        wall = time.perf_counter() - t0
    return {"mode": "open loop", "offered_rps": rate, "seconds": seconds, "format": fmt, "offered": n,
            "requests": len(latencies), "errors": errors, "error_count": sum(errors.values()),
            "throughput_rps": round(len(latencies) / wall, 1), "latency": percentiles(latencies)}


async def _post(http, url: str, body: dict, since: float, latencies: list[float], errors: dict[str, int]) -> None:
    """One POST /decode: its latency from ``since`` when it answers 200, else its status (or error) counted."""
    import httpx

    try:
        r = await http.post(url + "/decode", **body)
        ok, key = r.status_code == 200, str(r.status_code)
    except httpx.HTTPError as e:
        ok, key = False, type(e).__name__
    if ok:
        latencies.append(time.perf_counter() - since)
    else:
        errors[key] = errors.get(key, 0) + 1


async def _load(url: str, clients: int, seconds: float, fmt: str, shape: tuple[int, int]) -> dict:
    import httpx

    bodies = _bodies(fmt, shape)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.perf_counter() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < end:
            await _post(http, url, bodies[i % len(bodies)], time.perf_counter(), latencies, errors)
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 2), "format": fmt, "requests": len(latencies),
            "errors": errors, "error_count": sum(errors.values()), "throughput_rps": round(len(latencies) / wall, 1),
            "latency": percentiles(latencies)}


def http_load(artifact: Path, clients: int = 8, seconds: float = 20.0, fmt: str = "json",
              url: str | None = None, rate: float | None = None) -> dict:
    """N concurrent clients against POST /decode of ``url`` (or of a service started on ``artifact``), each sending
    its next request when its last is answered (closed loop: the service's capacity); with ``rate``, requests
    offered at that rate instead, open loop (``_open_loop``: the latency users see at a given load)."""
    if clients < 1 or seconds <= 0:
        raise ValueError("--clients must be >= 1 and --seconds > 0")
    if rate is not None and not 0 < rate <= 10_000:
        raise ValueError(f"--rate must be in (0, 10000] requests/s, got {rate:g}")
    with serving(artifact, url=url) as url:
        c = served_contract(url)
        shape = (c["n_channels"], c["window_bins"])
        if rate is not None:
            return asyncio.run(_open_loop(url, rate, seconds, fmt, shape))
        return asyncio.run(_load(url, clients, seconds, fmt, shape))


def _stream_and_time(url: str, source: str, seconds: float, n_channels: int, bin_s: float) -> dict:
    """Stream counts at the bin rate from an outlet named ``source``; time each decoded sample."""
    import httpx
    import pylsl

    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(source, "Spikes", n_channels, 1.0 / bin_s, "float32", source))
    decoded = DecodedStream(f"{source}-decoded")
    rng = np.random.default_rng(0)
    sent = 0
    start = pylsl.local_clock()
    t_next = time.monotonic()
    while pylsl.local_clock() - start < seconds:
        outlet.push_sample(rng.poisson(0.4, n_channels).astype(np.float32), pylsl.local_clock())
        sent += 1
        t_next += bin_s
        decoded.receive(t_next)  # until the next bin is due
    end = time.monotonic() + 1.0
    while decoded.received < sent and time.monotonic() < end:
        decoded.receive(time.monotonic() + 0.1)
    bridge = httpx.get(url + "/health", timeout=5).json()["lsl"]  # while the source still runs
    return {"seconds": seconds, "rate_hz": 1.0 / bin_s, "sent": sent, "received": decoded.received,
            "latency": percentiles(decoded.latencies), "bridge": bridge}


def lsl_latency(artifact: Path, seconds: float = 30.0) -> dict:
    """Start ``alignnet serve --lsl`` on ``artifact``, stream spikes for ``seconds``; end-to-end latency."""
    source = f"alignnet-bench-{uuid.uuid4().hex[:6]}"
    with serving(artifact, ["--lsl", "--lsl-source", source]) as url:
        c = served_contract(url)
        return _stream_and_time(url, source, seconds, c["n_channels"], c["bin_s"])
