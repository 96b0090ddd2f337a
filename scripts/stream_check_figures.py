"""How far a shortcut graph's bins differ from the window graph where a spike flips: the figures behind export's
bound on a differing bin (docs/benchmarks.md, "How far a differing bin may be").

For each artifact given, and for zero-label calibrations of a base artifact on days of a dataset (each exported,
as the service's live calibration exports them), the export's own checks are re-run on more bins than an export
uses and the per-bin differences are summarised: largest difference, median, bins past 1e-4 and the largest
difference among those bins (what a flipped spike moves a bin by).

    .venv/bin/python scripts/stream_check_figures.py --base service/default_models/alignnet-quick \
        --data data/sim-13 --days 6,7,8,9,10,11,12 --bins 2000 --out runs/stream-check
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from alignnet.model.artifacts import load_artifact, read_config
from alignnet.model.incremental import IncrementalDecoder, stream_weights
from alignnet.model.streaming import offline_twin
from alignnet.training.calibrate import calibrate
from alignnet.training.export import PARITY_ATOL, _run_onnx


def stream_diffs(folder: Path, bins: int, seed: int) -> np.ndarray:
    """Per-bin largest |stream - window graph's newest bin| over ``bins`` seeded random bins, as export draws them."""
    config = read_config(folder)
    plain, _, _ = load_artifact(folder, lif_impl="plain")
    day = config.get("served_day")
    n_in = plain.days[day].read_in.in_channels if day is not None else plain.config.n_channels
    x = np.log1p(np.random.default_rng(seed).poisson(0.6, (bins, n_in))).astype(np.float32)
    want = offline_twin(lambda w: _run_onnx(folder / "decode.onnx", w), x, plain.config.window_bins)
    got = IncrementalDecoder(stream_weights(plain.eval(), day), plain.config.window_bins).run(x.T[None])[0].T
    return np.abs(got - want).max(axis=1)


def summary(diff: np.ndarray) -> dict:
    over = diff > PARITY_ATOL
    return {"bins": int(diff.size), "max": float(diff.max()), "median": float(np.median(diff)),
            "bins_over_1e-4": int(over.sum()), "max_of_differing": float(diff[over].max()) if over.any() else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, action="append", default=[], help="an exported causal artifact")
    p.add_argument("--base", type=Path, help="a causal artifact to calibrate (zero-label) on --days of --data")
    p.add_argument("--data", type=Path)
    p.add_argument("--days", default="")
    p.add_argument("--bins", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=3, help="input draws per artifact")
    p.add_argument("--out", type=Path, default=Path("runs/stream-check"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = [(str(a), a) for a in args.artifact]
        for d in [int(v) for v in args.days.split(",") if v.strip()]:
            out = Path(tmp) / f"cal-{d}"
            calibrate(args.base, args.data, d, out, seconds=60.0, zero_label=True)
            folders.append((f"{args.base} zero-label day {d}", out))
        for label, folder in folders:
            diffs = np.concatenate([stream_diffs(folder, args.bins, s) for s in range(args.seeds)])
            rows.append({"artifact": label, **summary(diffs)})
            print(json.dumps(rows[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream_check.json").write_text(json.dumps(rows, indent=1))
    differing = [r["max_of_differing"] for r in rows if r["max_of_differing"] is not None]
    print(f"{len(rows)} artifacts, {sum(r['bins_over_1e-4'] for r in rows)} bins past {PARITY_ATOL:g} of "
          f"{sum(r['bins'] for r in rows)}; largest difference of a differing bin: "
          f"{max(differing) if differing else 'none'}")


if __name__ == "__main__":
    main()
