"""Latency benchmarks: eager forward time of every registered model, and each runtime engine of an artifact in a
process of its own (``alignnet bench models`` and ``alignnet bench latency`` drive them)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from alignnet.bench.worker import measure
from alignnet.model import create_model, list_models
from alignnet.model.base import n_params


def model_kind(model) -> str:
    if not model.needs_gradients:
        return "closed form (ridge)"
    return "hybrid SNN-ANN" if hasattr(model, "pretrain_outputs") else "ANN"


def bench_models(names: list[str] | None = None, batch: int = 1, repeats: int = 30, threads: int = 1) -> list[dict]:
    """Eager PyTorch forward time per call of each model (random weights, eval mode), decode and simulate."""
    torch.set_num_threads(threads)
    rows = []
    for name in names or [n for n in list_models() if not n.startswith("test-")]:
        m = create_model(name).eval()
        c = m.config
        spikes = torch.rand(batch, c.n_channels, c.window_bins)
        behavior = torch.randn(batch, c.behavior_dims, c.window_bins)
        with torch.inference_mode():
            dec, sim = measure(m.decode, spikes, repeats), measure(m.simulate, behavior, repeats)
        rows.append({"model": name, "parameters": n_params(m), "batch": batch,
                     "decode_ms_median": float(np.median(dec)), "decode_ms_p90": float(np.percentile(dec, 90)),
                     "simulate_ms_median": float(np.median(sim)), "simulate_ms_p90": float(np.percentile(sim, 90))})
    return rows


def engine_latency(folder: Path, engine: str, threads: int, repeats: int) -> dict:
    """One engine's figures from ``python -m alignnet.bench.worker`` (torch and ONNX Runtime in one process
    were seen to slow each other)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    spec = json.dumps({"artifact": str(folder), "engine": engine, "threads": threads, "repeats": repeats})
    proc = subprocess.run([sys.executable, "-m", "alignnet.bench.worker", spec], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_latency(folder: Path, engines: list[str], threads: int = 1, repeats: int = 300, data: Path | None = None,
                  steps: list[int] = (1, 2, 3, 4), progress=None) -> dict:
    """Batch-1 latency and throughput of each engine; with ``data`` also accuracy against fewer SNN steps.
    ``progress(row)`` is called after each engine."""
    from alignnet.service.engines import check_artifact

    for engine in engines:  # clear errors here, not a traceback from a worker process
        check_artifact(folder, engine)
    out = {"artifact": str(folder), "threads": threads, "machine": platform.processor() or platform.machine(),
           "engines": []}
    for engine in engines:
        out["engines"].append(engine_latency(folder, engine, threads, repeats))
        if progress:
            progress(out["engines"][-1])
    by = {r["engine"]: r for r in out["engines"]}
    if "onnx" in by and "eager" in by:
        out["onnx_over_eager_decode_p50"] = by["onnx"]["decode_p50_ms"] / by["eager"]["decode_p50_ms"]
    if data:
        out["snn_steps"] = steps_tradeoff(folder, data, list(steps), threads, repeats)
    return out


def steps_tradeoff(folder: Path, data: Path, steps: list[int], threads: int, repeats: int) -> list[dict]:
    """Decode R² on the last day's last 20 % of trials and ONNX latency with fewer SNN steps at inference (same
    weights)."""
    from alignnet.model.artifacts import load_artifact, save_artifact
    from alignnet.model.metrics import r2
    from alignnet.service.engines import OnnxEngine
    from alignnet.training.export import export_artifact
    from alignnet.training.windows import held_out_windows

    base, contract, config = load_artifact(folder)
    if "time_steps" not in config["model_config"]:
        raise ValueError(f"{config['model']} has no SNN steps to vary")
    counts, beh = held_out_windows(data, contract, n=256)
    out = []
    for ts in steps:
        with tempfile.TemporaryDirectory() as tmp:
            model = create_model(config["model"], **{**config["model_config"], "time_steps": ts})
            model.load_state_dict(base.state_dict())
            save_artifact(Path(tmp) / "a", model.eval(), contract)
            export_artifact(Path(tmp) / "a", ("onnx",), spikes=contract.preprocess_spikes(counts[:32]),
                            behavior=contract.preprocess_behavior(beh[:32]))
            pred = OnnxEngine(Path(tmp) / "a", threads).decode(counts)
            lat = engine_latency(Path(tmp) / "a", "onnx", threads, repeats)
            out.append({"time_steps": ts, "r2": r2(beh, pred, 1), "p50_ms": lat["decode_p50_ms"],
                        "p99_ms": lat["decode_p99_ms"]})
            shutil.rmtree(Path(tmp) / "a", ignore_errors=True)
    return out
