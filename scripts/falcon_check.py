"""FALCON's own evaluator on a synthetic M2 session: the embedded simulator's cortex (96 channels, 4 days with drift
between them) written in FALCON M2's file layout, imported the documented way (`alignnet data import --format
falcon-m2`), trained (`alignnet train`: the Wiener filter, and the causal AlignNet of the default model's recipe),
exported, and scored by `alignnet falcon` (FalconEvaluator, phase minival:
FALCON's 7 held-in sessions, one prediction per 20-ms bin, the newest bin of each session's ring buffer).

    .venv/bin/python scripts/falcon_check.py --out runs/falcon [--models wiener alignnet] [--trials 200]

Writes OUT/falcon.json and prints a markdown table: FALCON's R² and normalised latency, and the adapter's per-bin
latency (one predict call for the batch of 7 sessions) per model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from alignnet.recordings.build import sim_config
from alignnet.recordings.falcon import m2_name, write_falcon_m2
from alignnet.recordings.importers import simday_to_day
from alignnet.recordings.simulator import simulate_days

HELD_IN = [("2020-10-19", 1), ("2020-10-19", 2), ("2020-10-20", 1), ("2020-10-20", 2), ("2020-10-27", 1),
           ("2020-10-27", 2), ("2020-10-28", 1)]
WIENER = "model: wiener\nmodel_config: {}\ntrain: {val_fraction: 0.1, days: all, seed: 0, device: cpu}\nfinetune: {}\n"
CONFIGS = {"wiener": None, "alignnet": Path("configs/quick.yaml")}
# the default served model's recipe (scripts/build_default_models.sh): the causal AlignNet, which sees only the past
SETS = {"alignnet": ["--set", "model=alignnet-causal", "--set", "pretrain.lr=0.01", "--set", "finetune.lr=0.01"]}


def alignnet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "alignnet", *args], check=True)


def write_session(root: Path, trials: int, seed: int) -> list[Path]:
    """Each held-in session (a day, a run): its first 70 % of trials for training, the rest as FALCON's minival."""
    cfg = sim_config(days=4, trials=trials, seed=seed)
    cfg.neural.n_channels = 96
    days = [simday_to_day(sd, 0.02, 0.04) for sd in simulate_days(cfg, progress=True)]
    train = []
    for k, (date, run) in enumerate(HELD_IN):
        day = days[min(k // 2, len(days) - 1)]
        ids = np.unique(day.trial_id)
        half = ids[:len(ids) // 2] if run == 1 else ids[len(ids) // 2:]
        cut = half[int(0.7 * len(half))]
        for part, keep in (("held-in-calib", np.isin(day.trial_id, half) & (day.trial_id < cut)),
                           ("held-in-minival", np.isin(day.trial_id, half) & (day.trial_id >= cut))):
            folder = root / "m2" / ("held_in_calib" if part.endswith("calib") else "minival")
            path = write_falcon_m2(folder / m2_name(date, run, part), day.counts[keep], day.vel[keep],
                                   day.trial_id[keep])
            if part.endswith("calib"):
                train.append(path)
    return train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/falcon"))
    p.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--trials", type=int, default=200, help="trials per simulated day (default: 200)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train = write_session(out / "falcon", args.trials, args.seed)
    alignnet("data", "import", *map(str, train), "--format", "falcon-m2", "--out", str(out / "data"), "--behavior",
             "vel", "--units-matched", "--overwrite")
    rows = {}
    for model in args.models:
        config = CONFIGS[model]
        if config is None:
            config = out / "wiener.yaml"
            config.write_text(WIENER)
        run = out / f"run-{model}"
        alignnet("train", str(config), "--data", str(out / "data"), "--out", str(run), *SETS.get(model, []))
        alignnet("export", str(run / "artifact"), "--formats", "onnx")
        alignnet("falcon", str(run / "artifact"), "--split", "m2", "--data", str(out / "falcon"), "--json",
                 str(out / f"falcon-{model}.json"))
        rows[model] = json.loads((out / f"falcon-{model}.json").read_text())
    (out / "falcon.json").write_text(json.dumps(rows, indent=2))
    print("| model | FALCON held-in R² (mean ± std over 7 sessions) | normalised latency | per-bin predict p50 / p99 "
          "(batch 7) |\n|---|---|---|---|")
    for model, r in rows.items():
        s, lat = r["scores"], r["per_bin_latency_ms"]
        print(f"| {model} | {s['Held In R2 Mean']:.3f} ± {s['Held In R2 Std.']:.3f} | {s['Normalized Latency']:.4f} "
              f"| {lat['p50']:.2f} / {lat['p99']:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
