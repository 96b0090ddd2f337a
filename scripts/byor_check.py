"""Bring-your-own-recording check with the DEFAULT config: every shape of tests/lab_recordings.py goes import -> train
(configs/quick.yaml, AlignNet, no overrides) -> export -> serve + replay of the held-out block, and is compared with
a current-bin ridge decoder fitted on the same split. Writes OUT/byor.json and OUT/byor.md (docs/results.md).

    .venv/bin/python scripts/byor_check.py --out runs/byor        # ~25 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from lab_recordings import SHAPES, make  # noqa: E402
from test_byor import ridge_on_the_same_split  # noqa: E402

from alignnet.cli.main import main as cli  # noqa: E402
from alignnet.model.artifacts import read_config  # noqa: E402
from alignnet.recordings.dataset import Dataset  # noqa: E402


def check(shape: str, root: Path) -> dict:
    files, behavior = make(shape, root / "raw")
    data, run = root / "D", root / "run"
    matched = ["--units-matched"] if shape == "short-trials" else []
    assert cli(["data", "import", *map(str, files), "--out", str(data), "--behavior", behavior, "--overwrite",
                *matched]) == 0
    ds = Dataset(data)
    t0 = time.perf_counter()
    assert cli(["train", "--data", str(data), "--out", str(run)]) == 0
    train_s = time.perf_counter() - t0
    assert cli(["export", str(run / "artifact"), "--formats", "onnx"]) == 0
    replay = root / "replay.json"
    assert cli(["replay", str(data), "--day", str(len(ds) - 1), "--held-out", "--serve", str(run / "artifact"),
                "--score", "--speed", "10", "--json", str(replay)]) == 0
    m = read_config(run / "artifact")["metrics"]
    online = json.loads(replay.read_text())
    return {"shape": shape, "days": len(ds), "channels": [ds.day(i).n_channels for i in range(len(ds))],
            "bin_ms": round(ds.contract().bin_s * 1000), "window_bins": ds.contract().window_bins,
            "split_by": ds.day(0).split_by, "train_s": round(train_s),
            "test_r2": m["test_s2b_r2"], "test_newest_r2": m["test_newest_r2"],
            "ridge_r2": ridge_on_the_same_split(data, behavior), "replay_online_r2": online["r2"],
            "replay_bins": online["matched"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/byor"))
    p.add_argument("--shapes", default=",".join(SHAPES))
    args = p.parse_args()
    rows = []
    for shape in args.shapes.split(","):
        rows.append(check(shape, args.out / shape))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "byor.json").write_text(json.dumps(rows, indent=2))
    lines = ["| recording | days × channels | bin | window | split | train s | test R² (newest bin) | ridge R², same "
             "split | replay of the held-out block, online R² |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['days']} × {'/'.join(map(str, r['channels']))} | {r['bin_ms']} ms | "
                     f"{r['window_bins']} | by {r['split_by']} | {r['train_s']} | {r['test_r2']:.3f} "
                     f"({r['test_newest_r2']:.3f}) | {r['ridge_r2']:.3f} | {r['replay_online_r2']:.3f} "
                     f"({r['replay_bins']} bins) |")
    (args.out / "byor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
