"""``alignnet bench streams``: how many live sources one service decodes in real time.

N simulated sources (64 channels of spike counts at the bin rate, 50 Hz for 20-ms bins) are pushed from one
generator process (``python -m alignnet.bench.streams``: 32 sources at 50 Hz are 1,600 small pushes a
second, a few percent of a core), outside the service's process. One ``alignnet serve --lsl --lsl-source …`` serves
them all; this process reads every ``SOURCE-decoded`` stream and times each sample against its input stamp (one
host, one clock). Reported per stream: hops decoded, bins dropped (the service's own count: a backlog skipped), and
end-to-end latency p50/p99; and the service's peak RSS. ``find_max`` searches the largest N whose every stream
holds p99 under one bin with nothing dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from alignnet.bench.load import served_contract
from alignnet.service.http.launcher import ServiceUnavailable, serving

WARMUP_S = 2.0  # streaming before the timed part (connections settle, the first windows fill)


def generate(names: list[str], channels: int, rate: float, seconds: float, seed: int = 0) -> None:
    """Push Poisson counts on one outlet per name at ``rate`` for ``seconds``, each sample stamped when sent."""
    import pylsl

    rng = np.random.default_rng(seed)
    outlets = [pylsl.StreamOutlet(pylsl.StreamInfo(n, "Spikes", channels, rate, "float32", f"gen-{n}"))
               for n in names]
    print("ready", flush=True)
    period, t_next, end = 1.0 / rate, time.monotonic(), time.monotonic() + seconds
    block = rng.poisson(0.8, (256, len(names), channels)).astype(np.float32)  # recycled: drawing is not measured
    k = 0
    while time.monotonic() < end:
        row = block[k % len(block)]
        for outlet, x in zip(outlets, row):
            outlet.push_sample(x, pylsl.local_clock())
        k += 1
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))


def _bridges(url: str) -> tuple[dict[str, dict], dict]:
    """The bridges in ``/health`` by source name, and the whole answer."""
    import httpx

    h = httpx.get(url + "/health", timeout=10).json()
    return {b["source"]["name"]: b for b in h["lsl"].get("bridges", []) if b.get("source")}, h


def _wait_streaming(url: str, streams: int, gen) -> None:
    end = time.monotonic() + 60
    while True:
        bridges = _bridges(url)[0]
        if len(bridges) >= streams and all(b.get("state") == "streaming" for b in bridges.values()):
            return
        if time.monotonic() > end or gen.poll() is not None:
            raise ServiceUnavailable(f"the service did not stream all {streams} sources within 60 s")
        time.sleep(0.2)


def _open_outputs(names: list[str]) -> list:
    import pylsl

    inlets = []
    for n in names:
        found = pylsl.resolve_byprop("name", f"{n}-decoded", 1, 10.0)
        if not found:
            raise ServiceUnavailable(f"{n}-decoded not found")
        inlet = pylsl.StreamInlet(found[0], max_buflen=10, processing_flags=pylsl.proc_none)
        inlet.open_stream(timeout=10.0)
        inlets.append(inlet)
    return inlets


def _time_outputs(inlets: list, seconds: float) -> list[list[float]]:
    """Receive every decoded sample for ``seconds``; the latency of each (receipt - input stamp, s) per stream. A
    thread per inlet blocks in liblsl until a sample is there (the GIL released): polling 32 inlets every half
    millisecond took a third of a core on the two cores the service runs on."""
    import threading

    import pylsl

    lat: list[list[float]] = [[] for _ in inlets]
    stop = time.monotonic() + seconds

    def receive(k: int, inlet) -> None:
        while time.monotonic() < stop:
            _, ts = inlet.pull_chunk(timeout=0.1, max_samples=256, min_samples=1)
            if ts:
                now = pylsl.local_clock()
                lat[k] += [now - t for t in ts]

    threads = [threading.Thread(target=receive, args=(k, inlet), daemon=True) for k, inlet in enumerate(inlets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat


def bench_streams(artifact: Path, streams: int, seconds: float, batch_wait_ms: float | None = None) -> dict:
    """One run: ``streams`` sources for ``seconds`` (after a warm-up) through one service."""
    if streams < 1 or seconds <= 0:
        raise ValueError("--streams must be >= 1 and --seconds > 0")
    tag = uuid.uuid4().hex[:6]
    names = [f"bench-{tag}-{i}" for i in range(streams)]
    extra = ["--lsl", *[a for n in names for a in ("--lsl-source", n)]]
    if batch_wait_ms is not None:
        extra += ["--lsl-batch-wait-ms", str(batch_wait_ms)]
    with serving(artifact, extra, timeout=120) as url:
        c = served_contract(url)
        spec = json.dumps({"names": names, "channels": c["n_channels"], "rate": 1.0 / c["bin_s"],
                           "seconds": seconds + WARMUP_S + 30})
        gen = subprocess.Popen([sys.executable, "-m", "alignnet.bench.streams", spec], stdout=subprocess.PIPE,
                               text=True)
        try:
            gen.stdout.readline()  # "ready"
            _wait_streaming(url, streams, gen)
            inlets = _open_outputs(names)
            time.sleep(WARMUP_S)
            for inlet in inlets:
                inlet.flush()
            before, _ = _bridges(url)
            lat = _time_outputs(inlets, seconds)
            after, health = _bridges(url)
            peak_mb = _peak_rss_mb(health.get("pid"))
            for inlet in inlets:
                inlet.close_stream()
        finally:
            gen.terminate()
            gen.wait(10)
    return _report(names, lat, before, after, c["bin_s"], seconds) | {
        "service_peak_rss_mb": peak_mb, "batching": health["lsl"].get("batching"),
        "incremental": health["lsl"].get("incremental")}


def _report(names, lat, before, after, bin_s: float, seconds: float) -> dict:
    rows = []
    for k, n in enumerate(names):
        ms = np.asarray(lat[k]) * 1e3
        rows.append({"stream": n, "hops": after[n]["hops"] - before[n]["hops"],
                     "dropped": after[n]["dropped"] - before[n]["dropped"], "received": int(ms.size),
                     "p50_ms": round(float(np.percentile(ms, 50)), 2) if ms.size else None,
                     "p99_ms": round(float(np.percentile(ms, 99)), 2) if ms.size else None})
    every = np.concatenate([np.asarray(x) for x in lat]) * 1e3 if any(lat) else np.zeros(0)
    return {"streams": len(names), "seconds": seconds, "bin_ms": bin_s * 1e3,
            "dropped": sum(r["dropped"] for r in rows),
            "received_fraction": round(sum(r["received"] for r in rows) / (seconds / bin_s * len(names)), 3),
            "p50_ms": round(float(np.percentile(every, 50)), 2) if every.size else None,
            "p99_ms": round(float(np.percentile(every, 99)), 2) if every.size else None,
            "worst_stream_p99_ms": max((r["p99_ms"] or 1e9) for r in rows), "per_stream": rows}


def _peak_rss_mb(pid: int | None) -> float | None:
    """The service's peak resident memory (Linux /proc; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def holds(r: dict) -> bool:
    """Every stream under one bin at p99, nothing dropped, (almost) every bin received."""
    return r["dropped"] == 0 and r["worst_stream_p99_ms"] < r["bin_ms"] and r["received_fraction"] >= 0.98


def find_max(artifact: Path, seconds: float, start: int = 4, limit: int = 128, progress=print, **kw) -> dict:
    """The largest N that ``holds``: doubling from ``start``, then bisecting between the last N that held and the
    first that did not."""
    runs, good, bad, n = [], 0, None, start
    while n <= limit and bad is None:
        r = bench_streams(artifact, n, seconds, **kw)
        runs.append(r)
        progress(r)
        good, bad, n = (n, None, n * 2) if holds(r) else (good, n, n)
    while bad is not None and bad - good > 1:
        n = (good + bad) // 2
        r = bench_streams(artifact, n, seconds, **kw)
        runs.append(r)
        progress(r)
        good, bad = (n, bad) if holds(r) else (good, n)
    return {"max_streams": good, "first_failing": bad, "seconds": seconds,
            "runs": [{k: v for k, v in r.items() if k != "per_stream"} for r in runs]}


if __name__ == "__main__":
    generate(**json.loads(sys.argv[1]))
