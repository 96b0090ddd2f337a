"""The live path in one run (issue: 2 ms decode, 5 ms end to end, 32 streams on one small machine), on three copies
of the default model: "window" without ``decode_tail.onnx`` or ``decode_stream.npz`` (the whole 2-s window decoded
every hop), "receptive field" without ``decode_stream.npz`` (the newest bins from the last 60 bins), and the artifact
as shipped, "incremental" (each new bin from cached columns, ``model/incremental.py``).

    .venv/bin/python scripts/live_path_bench.py --out runs/live [--stream-seconds 10] [--http-seconds 0]

Measures on a quiet machine: the newest bin's decode at batch 1 on one thread (p50/p99 over 2,000 calls each, all
three in one process, interleaved in blocks of 100 calls, then each alone for 2,000 calls back to back); then, for
"receptive field" (before) and "incremental" (after): LSL end to end for one stream (`alignnet bench lsl`); the most
50-Hz streams one service holds with every stream's p99 under 20 ms and nothing dropped (`alignnet bench streams
--find-max`); 64 HTTP clients with ``--http-seconds`` > 0 (`alignnet bench load`, whole windows: unchanged by
either); and the replay's online = offline check on an unseen day. Writes OUT/live.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from alignnet.model.artifacts import read_config, write_config
from alignnet.service.http.settings import DEFAULT_ARTIFACT

TIMER = """
import json, sys, time
import numpy as np
from alignnet.service.engines import load_engine
engines = [load_engine(a, "onnx", threads=1) for a in sys.argv[1:]]
c = engines[0].contract
bins = np.random.default_rng(0).poisson(0.8, (4000, c.n_channels)).astype(np.float32)
x = np.ascontiguousarray(bins[:c.window_bins].T[None])
calls = [lambda e=e: e.decode_newest(x, 1) for e in engines[:-1]]  # a window's newest bin, from the graphs
live = engines[-1].open_stream()
calls.append(lambda: live.push(bins[np.random.randint(len(bins))][None]))  # one new bin, from cached columns
times = [[] for _ in calls]
for round_ in range(21):  # interleaved blocks, so all see the same machine; the first round is warm-up
    for call, ts in zip(calls, times):
        for _ in range(100):
            t = time.perf_counter(); call(); dt = time.perf_counter() - t
            if round_:
                ts.append(dt)
alone = []
for call in calls:  # then each on its own, 2,000 calls back to back (as one busy stream sees it)
    for _ in range(200):
        call()
    ts = []
    for _ in range(2000):
        t = time.perf_counter(); call(); ts.append(time.perf_counter() - t)
    alone.append(ts)
ms = lambda ts, q: float(np.percentile(np.asarray(ts) * 1e3, q))
print(json.dumps([{"p50_ms": ms(ts, 50), "p99_ms": ms(ts, 99), "alone_p50_ms": ms(a, 50), "alone_p99_ms": ms(a, 99)}
                  for ts, a in zip(times, alone)]))
"""


def ort_choices(artifact: Path, data: Path) -> list[dict]:
    """The receptive-field graph under other ONNX Runtime settings, and statically quantised to int8 (QDQ, weights
    int8, activations uint8, calibrated on 120 windows of day 5): newest-bin decode p50/p99 (interleaved, one
    process) and, for int8, the newest-bin R² on day 6 against the float graph's."""
    import time

    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from alignnet.model.metrics import r2
    from alignnet.model.streaming import offline_twin
    from alignnet.recordings.dataset import Dataset
    from alignnet.service.engines import load_engine

    c = load_engine(artifact).contract
    src = artifact / "decode_tail.onnx"
    bins = load_engine(artifact).tail_bins
    ds = Dataset(data)
    cal = np.lib.stride_tricks.sliding_window_view(ds.day(5).counts[:3000].astype(np.float32), bins, axis=0)[::25]
    cal = c.scale_counts(np.ascontiguousarray(cal))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"spikes": cal[i:i + 1]} for i in range(len(cal))])

        def get_next(self):
            return next(self.it, None)

    tmp = Path(tempfile.mkdtemp())
    quantize_static(str(src), str(tmp / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

    def session(path: Path, threads: int, level: str):
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    choices = {"1 thread, ORT_ENABLE_ALL (as served)": session(src, 1, "ORT_ENABLE_ALL"),
               "1 thread, ORT_ENABLE_EXTENDED": session(src, 1, "ORT_ENABLE_EXTENDED"),
               "1 thread, ORT_ENABLE_BASIC": session(src, 1, "ORT_ENABLE_BASIC"),
               "2 threads, ORT_ENABLE_ALL": session(src, 2, "ORT_ENABLE_ALL"),
               "int8 static (QDQ), 1 thread": session(tmp / "int8.onnx", 1, "ORT_ENABLE_ALL")}
    x = c.scale_counts(np.random.default_rng(0).poisson(0.8, (1, c.n_channels, bins)).astype(np.float32))
    times = {k: [] for k in choices}
    for round_ in range(21):
        for k, sess in choices.items():
            for _ in range(100):
                t = time.perf_counter()
                sess.run(None, {"spikes": x})
                if round_:
                    times[k].append(time.perf_counter() - t)
    day = ds.day(6)
    counts, beh = day.counts[:3000].astype(np.float32), day.behavior(c.behavior_kind)[:3000]
    rows = []
    for k, sess in choices.items():
        ms = np.asarray(times[k]) * 1e3
        row = {"choice": k, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
        if k.startswith(("int8", "1 thread, ORT_ENABLE_ALL")):
            def dec(w, sess=sess):
                z = sess.run(None, {"spikes": c.scale_counts(np.ascontiguousarray(w[..., -bins:]))})[0]
                return c.postprocess_behavior(z)
            row["newest_bin_r2_day6"] = r2(beh, offline_twin(dec, counts, c.window_bins))
        rows.append(row)
    return rows


def without(src: Path, dst: Path, names: tuple[str, ...]) -> Path:
    """A copy of the artifact without some of its optional files: the live path as it was before them."""
    shutil.copytree(src, dst)
    config = read_config(dst)
    for name in names:
        (dst / name).unlink(missing_ok=True)
        config["files"].pop(name, None)
        config.get("export", {}).get("parity", {}).pop(name, None)
    config.get("export", {}).pop("tail" if "decode_tail.onnx" in names else "", None)
    config.get("export", {}).pop("stream", None)
    config.pop("integrity", None)
    write_config(dst, config)
    return dst


def run_json(cmd: list[str], out: Path) -> dict:
    """A benchmark command's JSON (a load test exits 1 when it saw errors; its figures still count)."""
    out.unlink(missing_ok=True)
    proc = subprocess.run(cmd)
    if not out.is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}) without figures")
    return json.loads(out.read_text())


def measure(artifact: Path, out: Path, label: str, args) -> dict:
    a = [sys.executable, "-m", "alignnet"]
    r = {}
    r["lsl"] = run_json([*a, "bench", "lsl", "--artifact", str(artifact), "--seconds", str(args.lsl_seconds),
                         "--json", str(out / f"lsl-{label}.json")], out / f"lsl-{label}.json")
    r["streams"] = run_json([*a, "bench", "streams", "--artifact", str(artifact), "--streams", "4", "--find-max",
                             "--seconds", str(args.stream_seconds), "--json", str(out / f"streams-{label}.json")],
                            out / f"streams-{label}.json")
    if args.http_seconds > 0:
        r["http"] = run_json([*a, "bench", "load", "--artifact", str(artifact), "--clients", "64", "--seconds",
                              str(args.http_seconds), "--json", str(out / f"http-{label}.json")],
                             out / f"http-{label}.json")
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/live"))
    p.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    p.add_argument("--lsl-seconds", type=float, default=30.0)
    p.add_argument("--stream-seconds", type=float, default=10.0)
    p.add_argument("--http-seconds", type=float, default=0.0)
    p.add_argument("--replay-data", type=Path, default=Path("data/sim-7"), help="dataset with an unseen day 6")
    p.add_argument("--only-decode", action="store_true", help="only the interleaved decode timings: before/after, "
                   "ONNX Runtime settings and int8 quantisation of the receptive-field graph")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        window = without(args.artifact, Path(tmp) / "window", ("decode_tail.onnx", "decode_stream.npz"))
        before = without(args.artifact, Path(tmp) / "before", ("decode_stream.npz",))
        decode = json.loads(subprocess.run([sys.executable, "-c", TIMER, str(window), str(before), str(args.artifact)],
                                           check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        result["decode"] = dict(zip(("window", "receptive field", "incremental"), decode))
        print("| newest-bin decode, batch 1, 1 thread | interleaved p50 / p99 ms | p99 / window's | back to back p50 / "
              "p99 ms | p99 / window's |\n|---|---|---|---|---|")
        for name, r in result["decode"].items():
            print(f"| {name} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['p99_ms'] / decode[0]['p99_ms']:.2f} | "
                  f"{r['alone_p50_ms']:.2f} / {r['alone_p99_ms']:.2f} | "
                  f"{r['alone_p99_ms'] / decode[0]['alone_p99_ms']:.2f} |")
        if args.only_decode:
            for r in ort_choices(args.artifact, args.replay_data):
                r2_txt = f" | {r['newest_bin_r2_day6']:.4f}" if "newest_bin_r2_day6" in r else " | –"
                print(f"| {r['choice']} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f}{r2_txt} |")
            return 0
        result["before"] = measure(before, args.out, "before", args)
    result["after"] = measure(args.artifact, args.out, "after", args)
    if args.replay_data.is_dir():
        result["replay"] = run_json([sys.executable, "-m", "alignnet", "replay", str(args.replay_data), "--day", "6",
                                     "--serve", str(args.artifact), "--score", "--offline-check", "--seconds", "30",
                                     "--json", str(args.out / "replay.json")], args.out / "replay.json")
    (args.out / "live.json").write_text(json.dumps(result, indent=2))
    b, f = result["before"], result["after"]
    rows = [("LSL end to end p50 / p90 / p99, one stream (ms)", lambda r: " / ".join(
                f"{r['lsl']['latency'][k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms"))),
            ("50-Hz streams held (p99 < 20 ms, 0 dropped)", lambda r: str(r["streams"]["max_streams"]))]
    if "http" in b:
        rows.append(("64 HTTP clients: req/s, p99 (ms), errors", lambda r: f"{r['http']['throughput_rps']}, "
                     f"{r['http']['latency']['p99_ms']:.0f}, {r['http']['error_count']}"))
    print("\n| measure | before (receptive field) | after (incremental) |\n|---|---|---|")
    for name, fmt in rows:
        print(f"| {name} | {fmt(b)} | {fmt(f)} |")
    if "replay" in result:
        r = result["replay"]
        print(f"\nreplay day 6: online R² {r['r2']:.4f}, offline {r['offline_r2_same_bins']:.4f}, max |online - "
              f"offline| {r['max_abs_diff_online_offline']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
