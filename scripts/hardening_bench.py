"""The hardening figures of docs/benchmarks.md, from one run on one machine, the service of this tree beside (with
``--baseline TREE``) the service of another checkout (e.g. a `git worktree` of the commit before), same default
model, same load:

- fuzz: schemathesis cases (random and valid-shape bodies) and how many got a 5xx;
- 64 clients x 60 s against /decode: errors, throughput, p99;
- /health latency while 256-window simulates (with sampling) run back to back;
- peak RSS of the service after the worst requests allowed (256-window decode and sampled simulate, a body at the
  size limit);
- a frozen LSL source (SIGSTOP): time until /health says "stalled", and until a new source of its name streams.

    .venv/bin/python scripts/hardening_bench.py --out runs/hardening [--baseline /tmp/base] [--quick]
    .venv/bin/python scripts/hardening_bench.py --out runs/hardening --only-fuzz --fuzz-examples 1500 1000 200
    .venv/bin/python scripts/hardening_bench.py --out runs/hardening --only-health --baseline /tmp/base
    .venv/bin/python scripts/hardening_bench.py --out runs/hardening --engine-choices
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignnet.bench.load import _load, percentiles  # noqa: E402
from alignnet.service.http.launcher import free_port  # noqa: E402


@contextmanager
def server(tree: Path, extra: list[str] = (), env: dict | None = None):
    """`alignnet serve` of the package in ``tree`` (PYTHONPATH), its URL and pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "alignnet", "serve", "--port", str(port), *extra],
                            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).json().get("model_loaded"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # still busy with a request it cannot finish
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # noqa: E731
    return {"rss_mb": round(get("VmRSS"), 1), "peak_mb": round(get("VmHWM"), 1)}


def health_during_simulate(url: str, seconds: float) -> dict:
    behavior = np.random.default_rng(0).standard_normal((256, 2, 100)).tolist()
    stop, done = threading.Event(), []

    def big() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            r = httpx.post(url + "/simulate", json={"behavior": behavior, "sample": True}, timeout=120)
            done.append((r.status_code, time.perf_counter() - t))

    worker = threading.Thread(target=big)
    worker.start()
    time.sleep(0.5)
    lat = []
    end = time.monotonic() + seconds
    with httpx.Client(timeout=30) as client:  # one kept-alive connection, as a monitor polls (a new client per
        while time.monotonic() < end:         # call costs ~20 ms of its own here)
            t = time.perf_counter()
            client.get(url + "/health")
            lat.append(time.perf_counter() - t)
            time.sleep(0.02)
    stop.set()
    worker.join()
    return {"health": percentiles(lat), "simulates": len(done), "simulate_status": sorted({s for s, _ in done}),
            "simulate_s_median": round(float(np.median([d for _, d in done])), 2)}


def peak_rss(url: str, pid: int, max_body: int) -> dict:
    idle = rss_mb(pid)
    rng = np.random.default_rng(0)
    decode = {"spikes": rng.poisson(1.0, (256, 64, 100)).astype(float).tolist()}
    simulate = {"behavior": rng.standard_normal((256, 2, 100)).tolist(), "sample": True}
    codes = []
    for _ in range(3):
        codes.append(httpx.post(url + "/decode", json=decode, timeout=120).status_code)
        codes.append(httpx.post(url + "/simulate", json=simulate, timeout=120).status_code)
    # a body at the size limit holding 8 million numbers where rows of numbers are expected
    body = b'{"spikes": [' + b"0.5," * ((max_body - 20) // 4) + b"0]}"
    t = time.perf_counter()
    try:
        codes.append(httpx.post(url + "/decode", content=body, headers={"content-type": "application/json"},
                                timeout=120).status_code)
    except httpx.TimeoutException:
        codes.append("no answer in 120 s")
    return {"idle": idle, "after": rss_mb(pid), "statuses": sorted(set(map(str, codes))),
            "big_body_s": round(time.perf_counter() - t, 2)}


SOURCE = """
import sys, time
import numpy as np, pylsl
out = pylsl.StreamOutlet(pylsl.StreamInfo(sys.argv[1], "Spikes", 64, 50.0, "float32", sys.argv[2]))
t = time.monotonic()
while True:
    out.push_sample(np.random.poisson(0.4, 64).astype(np.float32))
    t += 0.02
    time.sleep(max(0.0, t - time.monotonic()))
"""


def frozen_source(tree: Path) -> dict:
    name = f"bench-frozen-{os.getpid()}"
    src = [subprocess.Popen([sys.executable, "-c", SOURCE, name, sid]) for sid in ("first",)]
    try:
        with server(tree, ["--lsl", "--lsl-source", name]) as (url, _):
            def bridge():
                return httpx.get(url + "/health", timeout=5).json()["lsl"]["bridges"][0]

            while bridge()["state"] != "streaming":
                time.sleep(0.05)
            time.sleep(1.0)
            os.kill(src[0].pid, signal.SIGSTOP)
            t = time.monotonic()
            while bridge()["state"] != "stalled":
                time.sleep(0.02)
            detected = time.monotonic() - t
            src.append(subprocess.Popen([sys.executable, "-c", SOURCE, name, "second"]))
            t = time.monotonic()
            while not ((b := bridge())["state"] == "streaming" and (b["source"] or {}).get("source_id") == "second"):
                time.sleep(0.02)
            recovered = time.monotonic() - t
            return {"detected_s": round(detected, 2), "new_source_streaming_s": round(recovered, 2),
                    "stalls": bridge()["stalls"]}
    finally:
        for p in src:
            p.kill()
            p.wait()


def fuzz(url: str, examples: dict[str, int]) -> dict:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    runs = {"random": ["--mode", "all", "--checks", "all", "--exclude-path", "/calibrate"],
            "valid-shape": ["--mode", "positive", "--checks", "all", "--include-path", "/decode", "--include-path",
                            "/simulate"],
            "calibrate": ["--checks", "all", "--exclude-checks", "positive_data_acceptance", "--include-path",
                          "/calibrate"]}
    out = {}
    for name, args in runs.items():
        # the default model's windows are 64 x 100 numbers: larger than schemathesis likes by default
        r = subprocess.run([exe, "run", url + "/openapi.json", *args, "-n", str(examples[name]), "--seed", "1",
                            "--suppress-health-check", "data_too_large"], capture_output=True, text=True)
        cases = re.search(r"(\d+) generated", r.stdout)
        out[name] = {"cases": int(cases.group(1)) if cases else None, "exit": r.returncode,
                     "server_errors": len(re.findall(r"ST101", r.stdout)) // 2,
                     "summary": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]}
    return out


def batch_cost(repeats: int = 5) -> dict:
    """Decode time per window of the default model by batch size: ONNX Runtime, one thread, in this process."""
    from alignnet.service.engines import load_engine
    from alignnet.service.http.settings import DEFAULT_ARTIFACT

    engine = load_engine(DEFAULT_ARTIFACT, chunk=64)
    x = np.random.default_rng(0).poisson(0.4, (64, 64, 100)).astype(np.float32)
    out = {}
    for b in (1, 8, 16, 32, 64):
        engine.decode(x[:b])
        t = time.perf_counter()
        for _ in range(repeats):
            engine.decode(x[:b])
        out[b] = round((time.perf_counter() - t) / repeats / b * 1e3, 2)
    return {"ms_per_window": out}


def workers_compare(tree: Path, seconds: float) -> dict:
    """64 clients against services with one and two engine worker threads."""
    out = {}
    for workers in (1, 2):
        with server(tree, env={"ALIGNNET_WORKERS": str(workers)}) as (url, _):
            r = __import__("asyncio").run(_load(url, 64, seconds, "json", (64, 100)))
        out[workers] = {"throughput_rps": r["throughput_rps"], "p99_ms": r["latency"].get("p99_ms"),
                        "errors": r["error_count"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/hardening"))
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to measure beside this one")
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test of the script)")
    ap.add_argument("--fuzz-examples", type=int, nargs=3, default=(400, 60, 40), metavar=("RANDOM", "VALID", "CAL"),
                    help="schemathesis examples per operation of the three fuzz runs (default: 400 60 40)")
    ap.add_argument("--only-fuzz", action="store_true", help="run the fuzz part alone")
    ap.add_argument("--only-health", action="store_true", help="run the /health-during-simulate part alone")
    ap.add_argument("--engine-choices", action="store_true",
                    help="alone: decode cost per window by batch size, and 64 clients with 1 vs 2 engine workers")
    args = ap.parse_args()
    seconds = 5 if args.quick else 60
    trees = {"now": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    result = {}
    if args.engine_choices:
        result = {"batch_cost": batch_cost(), "workers": workers_compare(ROOT, 15)}
        print(json.dumps(result, indent=1), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "engine_choices.json").write_text(json.dumps(result, indent=1))
        return
    for label, tree in trees.items():
        r = {}
        if args.only_health:
            with server(tree) as (url, _):
                result[label] = {"health_during_simulate": health_during_simulate(url, 20)}
            print(label, json.dumps(result[label], indent=1), flush=True)
            continue
        if args.only_fuzz:
            with server(tree) as (url, _):
                result[label] = {"fuzz": fuzz(url, dict(zip(("random", "valid-shape", "calibrate"),
                                                            args.fuzz_examples)))}
            print(label, json.dumps(result[label], indent=1), flush=True)
            break
        with server(tree) as (url, pid):
            r["load_64"] = __import__("asyncio").run(_load(url, 64, seconds, "json", (64, 100)))
            r["health_during_simulate"] = health_during_simulate(url, 5 if args.quick else 20)
        with server(tree) as (url, pid):
            r["memory"] = peak_rss(url, pid, 32 * 1024 * 1024)
        if label == "now":
            r["frozen_source"] = frozen_source(tree)
            with server(tree) as (url, _):
                r["fuzz"] = fuzz(url, {"random": 20, "valid-shape": 5, "calibrate": 5} if args.quick else
                                 dict(zip(("random", "valid-shape", "calibrate"), args.fuzz_examples)))
        result[label] = r
        print(label, json.dumps(r, indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "fuzz.json" if args.only_fuzz else "health.json" if args.only_health else "hardening.json"
    (args.out / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
