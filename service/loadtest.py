"""``alignnet bench load`` and ``alignnet bench lsl``: bounded load on loopback against a running service.

``load``: N concurrent clients post batch-1 windows to /decode for T seconds (JSON or .npy bodies); reports errors,
throughput and latency percentiles measured by the clients. ``lsl``: a 50-Hz spike outlet feeds the service's LSL
bridge; every decoded sample's latency is the time it is received here minus the input stamp it carries.
Both start ``alignnet serve`` in a subprocess (one engine thread) unless given ``--url``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from model.atomic import atomic_write_json
from service.settings import DEFAULT_ARTIFACT


class ServiceUnavailable(RuntimeError):
    """A service or stream that should be there is not (did not start, did not answer, no stream)."""


def add_parsers(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("load", help="N concurrent clients against POST /decode for T seconds (loopback)",
                        description="Start `alignnet serve` (or use --url), run N concurrent HTTP clients posting "
                        "batch-1 windows to /decode for T seconds, and report errors, throughput and p50/p99.")
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="artifact to serve (default: default model)")
    p.add_argument("--url", default=None, help="use a running service instead of starting one")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="duration (default: %(default)s)")
    p.add_argument("--format", choices=("json", "npy"), default="json", help="request body (default: json)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.set_defaults(func=cmd_load)

    p = bsub.add_parser("lsl", help="LSL end-to-end latency: input stamp -> decoded sample received",
                        description="Start `alignnet serve --lsl`, stream 64-channel counts at the bin rate from an "
                        "LSL outlet for T seconds and time every decoded sample against its input stamp.")
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="artifact to serve (default: default model)")
    p.add_argument("--seconds", type=float, default=30.0, help="duration (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.set_defaults(func=cmd_lsl)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(artifact: Path, extra: list[str] = (), url: str | None = None, timeout: float = 60.0,
            port: int | None = None):
    """Yield the URL of a service: the given one, or `alignnet serve` started here (on ``port``, default a free
    one) and stopped afterwards."""
    import httpx

    if url:
        yield url.rstrip("/")
        return
    port = port or free_port()
    cmd = [sys.executable, "-m", "training.cli", "serve", "--artifact", str(artifact), "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ServiceUnavailable(f"alignnet serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1.0).json().get("model_loaded"):
                    break
            except (httpx.HTTPError, ValueError):  # not up yet, or something else answers on that port
                pass
            if time.monotonic() > end:
                raise ServiceUnavailable(f"alignnet serve did not answer /health within {timeout:g} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when this process dies, however it dies (no orphaned servers)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def percentiles(x: list[float]) -> dict[str, float]:
    a = np.asarray(x, np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p90_ms": round(float(np.percentile(a, 90)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3)}


async def _load(url: str, clients: int, seconds: float, fmt: str, shape: tuple[int, int]) -> dict:
    import httpx

    rng = np.random.default_rng(0)
    windows = rng.poisson(0.4, (32, *shape)).astype(np.float32)
    if fmt == "npy":
        bodies = []
        for w in windows:
            buf = io.BytesIO()
            np.save(buf, w)
            bodies.append({"content": buf.getvalue(), "headers": {"content-type": "application/x-npy",
                                                                   "accept": "application/x-npy"}})
    else:
        bodies = [{"json": {"spikes": w.tolist()}} for w in windows]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.perf_counter() + seconds

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                r = await http.post(url + "/decode", **bodies[i % len(bodies)])
                ok = r.status_code == 200
                key = str(r.status_code)
            except httpx.HTTPError as e:
                ok, key = False, type(e).__name__
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors[key] = errors.get(key, 0) + 1
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": round(wall, 2), "format": fmt, "requests": len(latencies),
            "errors": errors, "error_count": sum(errors.values()), "throughput_rps": round(len(latencies) / wall, 1),
            "latency": percentiles(latencies)}


def cmd_load(args: argparse.Namespace) -> int:
    import httpx

    if args.clients < 1 or args.seconds <= 0:
        raise ValueError("--clients must be >= 1 and --seconds > 0")
    with serving(args.artifact, url=args.url) as url:
        c = httpx.get(url + "/model", timeout=5).json()["contract"]
        result = asyncio.run(_load(url, args.clients, args.seconds, args.format, (c["n_channels"], c["window_bins"])))
    result["command"] = "alignnet " + " ".join(args.argv)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0 if result["error_count"] == 0 else 1


def lsl_latency(url: str, source: str, seconds: float, n_channels: int, bin_s: float) -> dict:
    """Stream counts at the bin rate from an outlet named ``source``; time each decoded sample."""
    import pylsl

    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(source, "Spikes", n_channels, 1.0 / bin_s, "float32", source))
    found = pylsl.resolve_byprop("name", f"{source}-decoded", 1, 30.0)
    if not found:
        raise ServiceUnavailable(f"the service's decoded stream {source}-decoded did not appear")
    inlet = pylsl.StreamInlet(found[0], max_buflen=2, processing_flags=pylsl.proc_none)
    inlet.open_stream(timeout=10.0)
    rng = np.random.default_rng(0)
    lat, sent, received = [], 0, 0
    start = pylsl.local_clock()
    t_next = time.monotonic()
    while pylsl.local_clock() - start < seconds:
        outlet.push_sample(rng.poisson(0.4, n_channels).astype(np.float32), pylsl.local_clock())
        sent += 1
        t_next += bin_s
        while True:  # receive until the next bin is due
            wait = t_next - time.monotonic()
            sample, stamp = inlet.pull_sample(timeout=max(0.0, wait))
            if sample is None:
                break
            lat.append(pylsl.local_clock() - stamp)
            received += 1
    end = time.monotonic() + 1.0
    while received < sent and time.monotonic() < end:
        sample, stamp = inlet.pull_sample(timeout=0.1)
        if sample is not None:
            lat.append(pylsl.local_clock() - stamp)
            received += 1
    import httpx

    bridge = httpx.get(url + "/health", timeout=5).json()["lsl"]  # while the source still runs
    return {"seconds": seconds, "rate_hz": 1.0 / bin_s, "sent": sent, "received": received,
            "latency": percentiles(lat), "bridge": bridge}


def cmd_lsl(args: argparse.Namespace) -> int:
    import httpx

    source = f"alignnet-bench-{uuid.uuid4().hex[:6]}"
    with serving(args.artifact, ["--lsl", "--lsl-source", source]) as url:
        c = httpx.get(url + "/model", timeout=5).json()["contract"]
        result = lsl_latency(url, source, args.seconds, c["n_channels"], c["bin_s"])
    result["command"] = "alignnet " + " ".join(args.argv)
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_json(args.json, result)
    return 0
