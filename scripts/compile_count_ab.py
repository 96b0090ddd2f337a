"""How many times a compiled training run compiles its step, on two checkouts, in separate processes: the Trainer's
own ``fit`` (compile on, as CUDA does by default), two epochs with validation between them, on one simulated day.
torch.compile guards on the spiking neurons' membrane state a call starts from; the step used to be recompiled for
each kind of state it met (a float before the first step, a tensor with grad after one, a tensor without grad after
an eager validation).

    git worktree add /tmp/base <commit before>
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) .venv/bin/python scripts/compile_count_ab.py /tmp/base data/sim-default
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) .venv/bin/python scripts/compile_count_ab.py . data/sim-default

A fresh inductor cache for each run: with a shared one, the second run finds the first's compiled graphs on disk.

Prints JSON: the step's compiled graphs and recompiles (torch._dynamo counters), the seconds of the fit and of its
first step, the epochs' losses, with the tree. ``--backend aot_eager`` traces without generating code (fast, the
same graphs); the default ``inductor`` is what a GPU run compiles with.
"""

import argparse
import json
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("tree", help="the checkout to run (ahead of the installed one on the path)")
parser.add_argument("data", help="dataset folder (its first day is used)")
parser.add_argument("--model", default="alignnet")
parser.add_argument("--stage", default="pretrain", choices=["pretrain", "both"])
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
args = parser.parse_args()
sys.path.insert(0, str(Path(args.tree).resolve()))

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

import alignnet  # noqa: E402
from alignnet.model import create_model  # noqa: E402
from alignnet.recordings.dataset import Dataset  # noqa: E402
from alignnet.training.run import _train_windows  # noqa: E402
from alignnet.training.trainer import TrainConfig, Trainer  # noqa: E402
from alignnet.training.windows import fit_contract  # noqa: E402

_compile = torch.compile
torch.compile = lambda model, mode=None, **kw: _compile(model, backend=args.backend)  # the Trainer's call, our backend

ds = Dataset(args.data)
trainw, valw, _, _, window, behavior = _train_windows(ds, {"days": ds.day_names[:1], "hop_bins": 10})
contract = fit_contract(ds.contract(window_bins=window, behavior_kind=behavior), trainw)
torch.manual_seed(0)
model = create_model(args.model, n_channels=contract.n_channels, window_bins=window)
cfg = TrainConfig(stage=args.stage, epochs=2, batch_size=args.batch, lr=3e-3, max_steps_per_epoch=args.steps,
                  patience=5, compile=True, device="cpu", progress=False)
trainer = Trainer(model, cfg)
first = {}
step = trainer.step_parts


def timed_step(batch):  # the first step's wall time: its compilation
    t = time.perf_counter()
    parts = step(batch)
    first.setdefault("first_step_s", round(time.perf_counter() - t, 2))
    return parts


trainer.step_parts = timed_step
counters.clear()
t0 = time.perf_counter()
trainer.fit(trainw, valw, contract)
print(json.dumps({"tree": args.tree, "imported": str(Path(alignnet.__file__).parent.parent), "model": args.model,
                  "stage": args.stage, "backend": args.backend, "graphs": counters["stats"]["unique_graphs"],
                  "frames_compiled": counters["frames"]["ok"], "fit_s": round(time.perf_counter() - t0, 1), **first,
                  "losses": [round(r["loss"], 4) for r in trainer.history],
                  "val_losses": [round(r["val_loss"], 4) for r in trainer.history]}))
