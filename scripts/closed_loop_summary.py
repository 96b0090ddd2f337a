"""Summarise headless closed-loop reports (``alignnet demo --headless --json F``) per decoder across seeds: hits,
success rate with its 95 % Wilson interval over all trials, the seed-to-seed spread, and time to target.

Usage: .venv/bin/python scripts/closed_loop_summary.py runs/demo/*.json   (files named DECODER-sSEED.json)
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import binomtest


def main(paths: list[str]) -> None:
    by = defaultdict(list)
    for p in paths:
        by[Path(p).stem.rsplit("-s", 1)[0]].append(json.loads(Path(p).read_text()))
    print("| decoder | seeds | hits / trials | success (95 % CI) | success per seed | time to target, mean of "
          "seeds ± sd (s) | decode latency p50 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in sorted(by.items()):
        hits, trials = sum(r["hits"] for r in runs), sum(r["trials"] for r in runs)
        ci = binomtest(hits, trials).proportion_ci(0.95, method="wilson")
        per_seed = [r["hits"] / r["trials"] for r in runs]
        ttt = [r["mean_time_to_target_s"] for r in runs if r["mean_time_to_target_s"] is not None]
        lat = np.median([r["decode_latency_ms"]["p50"] for r in runs])
        print(f"| {name} | {len(runs)} | {hits} / {trials} | {hits / trials:.3f} ({ci.low:.3f}–{ci.high:.3f}) | "
              f"{' / '.join(f'{s:.3f}' for s in per_seed)} | {np.mean(ttt):.2f} ± {np.std(ttt, ddof=1):.2f} | "
              f"{lat:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
