"""The drift gauge's threshold, chosen on one simulated population and judged on another (docs/results.md, "A new
recording day").

For every day of a dataset: the gauge of the artifact's latent (``alignnet drift``), the R² of the rest of the day
without calibration and after a zero-label calibration of its first 60 s (``alignnet calibrate --zero-label``), and
whether that calibration helped (raised the rest of the day's R² by at least ``--min-gain``): the day on which a
recalibration should be advised. ``--choose`` picks the threshold with the best balanced accuracy of "gauge above it"
against "calibration helped" (the midpoint of the best gap between sorted gauges); ``--threshold T`` judges T.

    # choose on population 1 (its own model, trained on its days 0-5), judge on population 0 (the default model)
    .venv/bin/python scripts/drift_threshold.py runs/quick-s1/artifact data/sim-13-s1 --choose --json runs/drift-s1.json
    .venv/bin/python scripts/drift_threshold.py service/default_models/alignnet-quick data/sim-13 \
        --threshold T --json runs/drift-s0.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from alignnet.model.artifacts import read_config
from alignnet.recordings.dataset import Dataset
from alignnet.training.calibrate import calibrate
from alignnet.training.drift import drift_by_day


def measure(artifact: Path, data: Path, seconds: float, min_gain: float) -> list[dict]:
    trained = set(read_config(artifact).get("provenance", {}).get("days") or [])
    rows = drift_by_day(artifact, data)
    with tempfile.TemporaryDirectory() as tmp:
        for d, row in enumerate(rows):
            report = calibrate(artifact, data, d, Path(tmp) / f"cal{d}", seconds=seconds, zero_label=True,
                               export=False)
            gain = report["rest_r2_after"] - report["rest_r2_before"]
            row.update(trained=row["day"] in trained, rest_r2_before=report["rest_r2_before"],
                       rest_r2_after=report["rest_r2_after"], gain=gain, helped=bool(gain >= min_gain))
    return rows


def balanced_accuracy(rows: list[dict], threshold: float) -> float:
    flagged = np.array([r["gauge"] > threshold for r in rows])
    helped = np.array([r["helped"] for r in rows])
    parts = [np.mean(flagged[helped] == helped[helped]) if helped.any() else None,
             np.mean(flagged[~helped] == helped[~helped]) if (~helped).any() else None]
    parts = [p for p in parts if p is not None]
    return float(np.mean(parts))


def choose(rows: list[dict]) -> float:
    """The midpoint between consecutive sorted gauges with the best balanced accuracy (the widest gap on a tie)."""
    g = np.sort([r["gauge"] for r in rows])
    candidates = [(balanced_accuracy(rows, (a + b) / 2), b - a, (a + b) / 2) for a, b in zip(g[:-1], g[1:])]
    return max(candidates)[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("data", type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--choose", action="store_true", help="pick the threshold on these days")
    group.add_argument("--threshold", type=float, help="judge this threshold on these days")
    p.add_argument("--seconds", type=float, default=60.0, help="calibration slice (default: %(default)s)")
    p.add_argument("--min-gain", type=float, default=0.02,
                   help="R² gain of a zero-label calibration that makes it worth advising (default: %(default)s)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    Dataset(args.data)  # a clear error before any work
    rows = measure(args.artifact, args.data, args.seconds, args.min_gain)
    threshold = choose(rows) if args.choose else args.threshold
    print(f"| day | trained on | drift gauge | advised (gauge > {threshold:.3g}) | R² rest, none | after zero-label | "
          f"gain | helped (gain >= {args.min_gain:g}) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['day']} | {'yes' if r['trained'] else 'no'} | {r['gauge']:.3f} | "
              f"{'yes' if r['gauge'] > threshold else 'no'} | {r['rest_r2_before']:.3f} | {r['rest_r2_after']:.3f} | "
              f"{r['gain']:+.3f} | {'yes' if r['helped'] else 'no'} |")
    acc = balanced_accuracy(rows, threshold)
    print(f"threshold {threshold:.3f} ({'chosen here' if args.choose else 'given'}): balanced accuracy {acc:.2f} "
          f"over {len(rows)} days")
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "chosen_here": bool(args.choose),
                                         "balanced_accuracy": acc, "min_gain": args.min_gain, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
