"""New-day calibration of a model on later simulated days, few-shot with several seeds (docs/results.md, "A new
recording day"): each day's first S seconds fit its read-in (zero-label: closed form, no seed; few-shot: the
read-in trained on the slice's behavior, once per seed), scored on the rest of the day (whole windows).

    .venv/bin/python scripts/calibrate_days.py service/default_models/alignnet-quick data/sim-13 \
        --days 6,7,8,9,10,11,12 --seeds 3 --json runs/calibrate-days.json
    # the same as, per day d and seed s:
    #   alignnet calibrate MODEL data/sim-13 --day d --seconds 60 --zero-label --out runs/cal-zero-d
    #   alignnet calibrate MODEL data/sim-13 --day d --seconds 60 --out runs/cal-few-d-s \
    #       --set epochs=20 --set patience=5 --set seed=s
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from alignnet.training.calibrate import calibrate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--days", required=True, help="comma-separated day indices")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seeds", type=int, default=3, help="few-shot fits per day, seeds 0 .. N-1")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    few = {"epochs": 20, "patience": 5, "progress": False}
    with tempfile.TemporaryDirectory() as tmp:
        for d in [int(v) for v in args.days.split(",")]:
            zero = calibrate(args.artifact, args.data, d, Path(tmp) / "z", seconds=args.seconds, zero_label=True,
                             export=False)
            shots = [calibrate(args.artifact, args.data, d, Path(tmp) / f"f{s}", seconds=args.seconds, export=False,
                               train={**few, "seed": s})["rest_r2_after"] for s in range(args.seeds)]
            row = {"day": zero["day"], "none": zero["rest_r2_before"], "zero_label": zero["rest_r2_after"],
                   "few_shot": shots, "few_shot_mean": float(np.mean(shots)),
                   "few_shot_sd": float(np.std(shots, ddof=1)) if len(shots) > 1 else 0.0}
            row["zero_share_of_gain"] = (row["zero_label"] - row["none"]) / (row["few_shot_mean"] - row["none"])
            row["zero_over_few"] = row["zero_label"] / row["few_shot_mean"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| day | no calibration | zero-label ({args.seconds:g} s, no behavior) | few-shot ({args.seconds:g} s "
          f"with behavior), mean ± sd of {args.seeds} seeds | zero-label's share of few-shot's gain | "
          "zero-label / few-shot R² |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['day']} | {r['none']:.3f} | {r['zero_label']:.3f} | {r['few_shot_mean']:.3f} ± "
              f"{r['few_shot_sd']:.3f} | {r['zero_share_of_gain']:.0%} | {r['zero_over_few']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
