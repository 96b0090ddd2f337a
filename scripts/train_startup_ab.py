"""What training does before its first step, on two checkouts, in separate processes: cut the windows of every
training day, fit the data contract, build the batches (on the step's device, as CUDA does by default), and read
batches. Paper scale spent minutes here, with every overlapping window built (and the contract fitted on float64
copies of them) before a step ran.

    git worktree add /tmp/base <commit before>
    .venv/bin/python scripts/train_startup_ab.py /tmp/base data/paper --days 6
    .venv/bin/python scripts/train_startup_ab.py . data/paper --days 6

Prints JSON: seconds per phase, the windows and the process's peak resident memory (ru_maxrss), with the tree.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("tree", help="the checkout to time (ahead of the installed one on the path)")
parser.add_argument("data", help="dataset folder")
parser.add_argument("--days", type=int, default=0, help="the first N days only (0: all)")
parser.add_argument("--batch", type=int, default=256)
args = parser.parse_args()
sys.path.insert(0, str(Path(args.tree).resolve()))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from alignnet.recordings.dataset import Dataset  # noqa: E402
from alignnet.training.run import _train_windows  # noqa: E402
from alignnet.training.trainer import Batches  # noqa: E402
from alignnet.training.windows import fit_contract  # noqa: E402

ds = Dataset(args.data)
days = "all" if not args.days else ds.day_names[: args.days]
out = {"tree": args.tree, "days": len(ds) if days == "all" else len(days)}
t = time.perf_counter()
trainw, valw, testw, _, window, behavior = _train_windows(ds, {"days": days, "hop_bins": 10})
out["windows_s"] = time.perf_counter() - t
out["train_windows"] = sum(len(w) for w in trainw)
t = time.perf_counter()
contract = fit_contract(ds.contract(window_bins=window, behavior_kind=behavior), trainw)
out["contract_s"] = time.perf_counter() - t
t = time.perf_counter()
batches = Batches(trainw, contract, args.batch, torch.device("cpu"), True)
out["batches_s"] = time.perf_counter() - t
out["before_first_step_s"] = out["windows_s"] + out["contract_s"] + out["batches_s"]
plan = batches.plan(0, 0)[:50]
t = time.perf_counter()
for k, idx in plan:
    batches.get(k, idx)
out["get_ms"] = (time.perf_counter() - t) / len(plan) * 1e3
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
out["spike_scale_first"] = float(np.asarray(contract.spike_scale)[0])
print(json.dumps(out))
