"""The service's live and HTTP figures for two checkouts in one run: this one ("now") and ``--baseline TREE`` (e.g. a
`git worktree` of the commit before), alternating, each service started fresh from its own tree, the load generator
and timing always this checkout's (``ALIGNNET_BENCH_SERVE_FROM``):

    git worktree add /tmp/base HEAD~1
    .venv/bin/python scripts/service_ab.py --baseline /tmp/base --out runs/service-ab          # ~15 min

Per tree: ``alignnet bench streams --find-max`` (the most 50-Hz sources one service holds: every stream's p99 under
one bin, nothing dropped), ``alignnet bench load --clients 64 --seconds 60`` (JSON bodies), and
``alignnet bench lsl --seconds 30`` (one stream end to end). Writes ``OUT/service_ab.json``; ``--quick`` runs each
at toy sizes (a check that the script works, not a measurement).

``--parts step`` times each tree's incremental step (``IncrementalDecoder.step``, default model, one BLAS thread)
at batch 1/8/20/32 in a process of its own, then at batch 32 beside a second thread running Python (as the LSL
bridges do): each time a step hands the GIL over it may wait CPython's switch interval (5 ms) to get it back.

``--engine-batches`` (no baseline needed) times the default model's whole-window decode per window at batch
1/4/16/64 with 1 and 2 ONNX Runtime threads: what batching concurrent HTTP requests could save
(``OUT/engine_batches.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(tree: Path, args: list[str], out: Path) -> dict:
    """``alignnet bench ARGS --json OUT``: this checkout's load generator and timing, ``tree``'s service."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALIGNNET_BENCH_SERVE_FROM": str(tree)}
    cmd = [sys.executable, "-m", "alignnet", "bench", *args, "--json", str(out)]
    t = time.monotonic()
    out.unlink(missing_ok=True)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if not out.exists():  # a bench that found errors exits 1 with its figures written: those are a result
        raise SystemExit(f"{' '.join(cmd)} (in {tree}) failed:\n{r.stderr[-3000:]}")
    return {"wall_s": round(time.monotonic() - t, 1), "exit_code": r.returncode, **json.loads(out.read_text())}


def engine_batches(out: Path, quick: bool = False) -> dict:
    """ms per window of ``Engine.decode`` by batch size and engine threads (median of repeated calls)."""
    import numpy as np

    from alignnet.service.engines import load_engine
    from alignnet.service.http.settings import DEFAULT_ARTIFACT

    result = {"command": " ".join(sys.argv), "ms_per_window": {}}
    for threads in (1, 2):
        engine = load_engine(DEFAULT_ARTIFACT, threads=threads, chunk=64)
        c = engine.contract
        for batch in (1, 4, 16, 64):
            x = np.random.default_rng(0).poisson(0.8, (batch, c.n_channels, c.window_bins)).astype(np.float32)
            engine.decode(x)
            times = []
            for _ in range(3 if quick else max(10, 400 // batch)):
                t = time.perf_counter()
                engine.decode(x)
                times.append((time.perf_counter() - t) / batch)
            result["ms_per_window"][f"threads {threads}, batch {batch}"] = round(float(np.median(times)) * 1e3, 3)
    (out / "engine_batches.json").write_text(json.dumps(result, indent=1))
    return result


STEP_WORKER = """
import collections, json, os, sys, threading, time
import numpy as np
from threadpoolctl import threadpool_limits
from alignnet.model.incremental import IncrementalDecoder, load_weights
from alignnet.service.http.settings import DEFAULT_ARTIFACT

quick = sys.argv[1] == "1"
window = json.loads((DEFAULT_ARTIFACT / "config.json").read_text())["contract"]["window_bins"]
weights = load_weights(DEFAULT_ARTIFACT / "decode_stream.npz")
out = {"ms_per_step": {}}


def ms(times):
    return [round(float(np.percentile(times, q)) * 1e3, 3) for q in (50, 99)]


def timed(dec, x):  # p50, p99 ms of dec.step(x) after a warm-up
    for _ in range(20):
        dec.step(x)
    times = []
    for _ in range(20 if quick else 600):
        t = time.perf_counter()
        dec.step(x)
        times.append(time.perf_counter() - t)
    return ms(times)


def spin(seconds, stop=None):
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop and stop.is_set()):
        n += 1
    return n


with threadpool_limits(1, user_api="blas"):
    for batch in (1, 8, 20, 32):
        dec = IncrementalDecoder(weights, window, batch=batch)
        x = np.random.default_rng(0).normal(size=(batch, dec.n_in)).astype(np.float32)
        out["ms_per_step"][f"batch {batch}"] = timed(dec, x)
    seconds = 0.3 if quick else 3.0
    alone = spin(seconds)
    counted, stop, times = [], threading.Event(), []
    other = threading.Thread(target=lambda: counted.append(spin(seconds, stop)))
    other.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        dec.step(x)
        times.append(time.perf_counter() - t)
    stop.set()
    other.join()
    out["batch 32 beside a busy Python thread"] = {
        "ms_per_step": ms(times),
        "that_threads_progress": round(counted[0] / alone, 3)}
    if hasattr(dec, "session"):  # the ONNX Runtime step: two threads, and where a step's time goes
        import onnxruntime as ort
        from alignnet.model.stream_graph import step_graph
        out["batch 32, 2 ONNX Runtime threads"] = timed(IncrementalDecoder(weights, window, batch=32, threads=2), x)
        dec = IncrementalDecoder(weights, window, batch=20)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.enable_profiling = 1, True
        options.profile_file_prefix = "/tmp/alignnet-step-profile"
        dec.session = ort.InferenceSession(step_graph(weights, window, dec.keep, dec._shapes()).SerializeToString(),
                                           options, providers=["CPUExecutionProvider"])
        x20, n = x[:20], 20 if quick else 300
        for _ in range(n):
            dec.step(x20)
        by_op, profile = collections.Counter(), dec.session.end_profiling()
        events = json.load(open(profile))
        os.remove(profile)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by_op[e["args"]["op_name"]] += e["dur"] / n
        out["batch 20 profile, us per step by op (ONNX Runtime's profiler)"] = {
            "total": round(sum(by_op.values())), **{k: round(v) for k, v in by_op.most_common(8)}}
print(json.dumps(out))
"""


def step_times(tree: Path, quick: bool) -> dict:
    """The incremental step of ``tree`` (its own package), timed in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, "-c", STEP_WORKER, "1" if quick else "0"], cwd=tree, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"the step timing in {tree} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="the other checkout (needed unless --engine-batches)")
    ap.add_argument("--engine-batches", action="store_true", help="only the engine's ms per window by batch size")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "service-ab")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    ap.add_argument("--parts", default="streams,http64,lsl", help="which parts (comma-separated); the others' "
                    "figures already in OUT/service_ab.json are kept")
    args = ap.parse_args()
    args.out = args.out.resolve()  # the benches run in each tree's folder
    args.out.mkdir(parents=True, exist_ok=True)
    if args.engine_batches:
        print(json.dumps(engine_batches(args.out, args.quick), indent=1))
        return
    if args.baseline is None:
        ap.error("--baseline is needed (or --engine-batches)")
    trees = {"baseline": args.baseline.resolve(), "now": ROOT}
    q = args.quick
    parts = {
        "streams": ["streams", "--find-max", "--streams", "2" if q else "8", "--seconds", "3" if q else "20"],
        "http64": ["load", "--clients", "4" if q else "64", "--seconds", "3" if q else "60"],
        "lsl": ["lsl", "--seconds", "3" if q else "30"],
        "step": None,
    }
    saved = args.out / "service_ab.json"
    result: dict = json.loads(saved.read_text()) if saved.exists() else {}
    result |= {"trees": {k: str(v) for k, v in trees.items()}}
    result.setdefault("commands", []).append(" ".join(sys.argv))
    for part in args.parts.split(","):
        cmd = parts[part]
        for name, tree in trees.items():  # alternating, so drift of a noisy machine falls on both
            print(f"{part}: {name} ...", flush=True)
            r = step_times(tree, q) if part == "step" else bench(tree, cmd, args.out / f"{part}-{name}.json")
            result.setdefault(part, {})[name] = r
            (args.out / "service_ab.json").write_text(json.dumps(result, indent=1))
    for part in [p for p in parts if p in result]:
        for name in [n for n in trees if n in result[part]]:
            r = result[part][name]
            brief = {"streams": lambda r: {"max_streams": r["max_streams"]},
                     "http64": lambda r: {"rps": r["throughput_rps"], "errors": r["error_count"], **r["latency"]},
                     "lsl": lambda r: {"sent": r["sent"], "received": r["received"], **r["latency"]},
                     "step": lambda r: r}[part](r)
            print(part, name, brief)
    print("wrote", args.out / "service_ab.json")


if __name__ == "__main__":
    main()
