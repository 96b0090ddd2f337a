"""R² of the output bin k bins before the window's end, on sliding windows of one day: the offline twin of the LSL
bridge (hop 1), for the default AlignNet and Wiener models or the artifacts named.

Usage (from the repository root):
    .venv/bin/python scripts/online_r2_by_lag.py DATA DAY [SECONDS [ARTIFACT ...]]
"""

import sys
from pathlib import Path

import numpy as np

from alignnet.model.metrics import r2
from alignnet.recordings.dataset import Dataset
from alignnet.service.engines import load_engine
from alignnet.service.http.settings import DEFAULT_MODELS


def main(data: str, day_index: int, seconds: float = 60.0, artifacts: list[Path] | None = None) -> None:
    day = Dataset(data).day(day_index)
    for folder in artifacts or [DEFAULT_MODELS / "alignnet-quick", DEFAULT_MODELS / "wiener-quick"]:
        engine = load_engine(folder, "onnx")
        w = engine.contract.window_bins
        n = min(day.n_bins, int(round(seconds / day.bin_s)))
        counts, beh = day.counts[:n].astype(np.float32), day.behavior(engine.contract.behavior_kind)[:n]
        ends = np.arange(w - 1, n)
        x = np.stack([counts[e - w + 1:e + 1].T for e in ends])
        y = np.concatenate([engine.decode(x[i:i + 256]) for i in range(0, len(x), 256)])
        by_lag = {lag: round(r2(beh[ends - lag], y[:, :, w - 1 - lag]), 3) for lag in (0, 1, 2, 5, 10, 25, 50)}
        cw, bw, _ = day.windows(w, w, engine.contract.behavior_kind, starts=np.arange(0, n - w + 1, w))
        whole = round(r2(bw, engine.decode(cw), feature_axis=1), 3)
        print(f"{folder.name} ({engine.config['model']}): R² by lag (bins) {by_lag}; whole non-overlapping windows "
              f"{whole}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), float(a[2]) if len(a) > 2 else 60.0, [Path(p) for p in a[3:]] or None)
