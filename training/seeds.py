"""``alignnet evaluate --seeds N``: the protocols once per training seed, each run in OUT/seed-K (a finished one
with the same request is reused), and every score reported as the mean over seeds with its sd and per-seed values."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from alignnet.recordings.dataset import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

SCORES = ("s2b_r2", "online_r2", "b2s_r", "rate_r", "psth_r", "train_s")  # what --seeds reports as mean ± sd


def request(ecfg, data: Path, protocols: list[str], models: list[str]) -> dict[str, Any]:
    """What a run was asked for (JSON-able): a seed's finished run is reused only for the same request."""
    return json.loads(json.dumps({"config": asdict(ecfg), "data": str(Path(data).resolve()),
                                  "protocols": list(protocols), "models": list(models)}))


def same_request(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two requests ask for the same run: a pretraining setting equal to what it would be without it (the
    training section's, else TrainConfig's default) is a no-op, so ``pretrain.contrastive_weight: 1.0`` and no such
    key are the same request."""
    return _resolved(a) == _resolved(b)


def _resolved(req: dict[str, Any]) -> dict[str, Any]:
    from alignnet.training.trainer import TrainConfig

    cfg = dict(req.get("config") or {})
    own = {k for per in (cfg.get("model_train") or {}).values() for k in (per or {})}  # these override pretrain
    under = {**{k: f.default for k, f in TrainConfig.__dataclass_fields__.items()}, **(cfg.get("train") or {})}
    cfg["pretrain"] = {k: v for k, v in (cfg.get("pretrain") or {}).items()
                       if k in own or k not in under or under[k] != v}
    return {**req, "config": cfg}


def evaluate_seeds(cfg: dict[str, Any], data: Path, out: Path, protocols: list[str], models: list[str],
                   command: str, seeds: list[int], evaluate: Callable[..., tuple[dict[str, Any], list[Path]]]
                   ) -> tuple[dict[str, Any], list[Path]]:
    """Run (or reuse) each seed's evaluation with ``evaluate`` (``alignnet.training.run.evaluate``, passed in: it
    calls this, so importing it back would be a circle) and write the aggregate: OUT/results.json, results.md, the
    figure."""
    from alignnet.training import report
    from alignnet.training.protocols import EvalConfig

    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    EvalConfig.from_dict(cfg)  # a wrong setting is refused before the first seed trains
    runs = []
    for seed in seeds:
        folder = out / f"seed-{seed}"
        scfg = {**cfg, "seed": seed}
        want = request(EvalConfig.from_dict(scfg), data, protocols, models)
        done = folder / "results.json"
        if done.is_file():
            try:
                old = json.loads(done.read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            if isinstance(old.get("request"), dict) and same_request(old["request"], want):
                log.info("seed %d: reusing the finished run in %s", seed, folder)
                runs.append(old)
                continue
            log.info("seed %d: %s holds a run of another request; running it again", seed, folder)
        log.info("seed %d of %s", seed, seeds)
        runs.append(evaluate(scfg, data, folder, protocols, models, command=f"{command} (seed {seed})")[0])
    results = aggregate_seeds(runs)
    results.update(command=command, seed_runs=[f"seed-{s}" for s in seeds])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    figs = [report.window_vs_newest(results, out / "fig_window_vs_newest_bin.png")]
    md = (report.markdown(results, command) + "\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figs) + "\n\n"
          + "Each seed's own table and figures: " + ", ".join(f"[{s}]({s}/results.md)" for s in results["seed_runs"])
          + ".\n")
    atomic_write_bytes(out / "results.md", md.encode())
    return results, figs


def aggregate_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several seeds' results (same protocols and models): each score of each row is the mean over
    seeds, with ``sd`` (sample standard deviation, ddof 1) and ``values`` (per seed) beside it."""
    first = runs[0]
    out = {k: v for k, v in first.items() if k not in ("protocols", "request", "command", "ceilings")}
    out["seeds"] = [r["config"]["seed"] for r in runs]
    out["ceilings"] = first.get("ceilings")  # the recorded counts' own scores: the same for every seed
    out["protocols"] = {}
    for p, rows in first["protocols"].items():
        merged = []
        for i, row in enumerate(rows):
            per_seed = [r["protocols"][p][i] for r in runs]
            if any(s["model"] != row["model"] for s in per_seed):
                raise ValueError(f"{p}: the seeds' runs list other models; aggregate runs of one request")
            m = {"model": row["model"], "causal": row["causal"], "parameters": row["parameters"], "sd": {},
                 "values": {}}
            for key in SCORES:
                vals = [s.get(key) for s in per_seed]
                if any(v is None for v in vals):
                    m[key] = None
                    continue
                arr = np.asarray(vals, np.float64)
                m[key] = float(arr.mean())
                m["sd"][key] = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
                m["values"][key] = [float(v) for v in arr]
            merged.append(m)
        out["protocols"][p] = merged
    return out
