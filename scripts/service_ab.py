"""The service's live and HTTP figures for two checkouts in one run: this one ("now") and ``--baseline TREE`` (e.g. a
`git worktree` of the commit before), alternating, each command started fresh in its own tree (PYTHONPATH):

    git worktree add /tmp/base HEAD~1
    .venv/bin/python scripts/service_ab.py --baseline /tmp/base --out runs/service-ab          # ~15 min

Per tree: ``alignnet bench streams --find-max`` (the most 50-Hz sources one service holds: every stream's p99 under
one bin, nothing dropped), ``alignnet bench load --clients 64 --seconds 60`` (JSON bodies), and
``alignnet bench lsl --seconds 30`` (one stream end to end). Writes ``OUT/service_ab.json``; ``--quick`` runs each
at toy sizes (a check that the script works, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(tree: Path, args: list[str], out: Path) -> dict:
    """``alignnet bench ARGS --json OUT`` run with ``tree``'s package; its JSON."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "alignnet", "bench", *args, "--json", str(out)]
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} (in {tree}) failed:\n{r.stderr[-3000:]}")
    return {"wall_s": round(time.monotonic() - t, 1), **json.loads(out.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "service-ab")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    trees = {"baseline": args.baseline.resolve(), "now": ROOT}
    q = args.quick
    parts = {
        "streams": ["streams", "--find-max", "--streams", "2" if q else "8", "--seconds", "3" if q else "20"],
        "http64": ["load", "--clients", "4" if q else "64", "--seconds", "3" if q else "60"],
        "lsl": ["lsl", "--seconds", "3" if q else "30"],
    }
    result: dict = {"command": " ".join(sys.argv), "trees": {k: str(v) for k, v in trees.items()}}
    for part, cmd in parts.items():
        for name, tree in trees.items():  # alternating, so drift of a noisy machine falls on both
            print(f"{part}: {name} ...", flush=True)
            r = bench(tree, cmd, args.out / f"{part}-{name}.json")
            result.setdefault(part, {})[name] = r
            (args.out / "service_ab.json").write_text(json.dumps(result, indent=1))
    for part in parts:
        for name in trees:
            r = result[part][name]
            brief = {"streams": lambda r: {"max_streams": r["max_streams"]},
                     "http64": lambda r: {"rps": r["throughput_rps"], "errors": r["error_count"], **r["latency"]},
                     "lsl": lambda r: {"sent": r["sent"], "received": r["received"], **r["latency"]}}[part](r)
            print(part, name, brief)
    print("wrote", args.out / "service_ab.json")


if __name__ == "__main__":
    main()
