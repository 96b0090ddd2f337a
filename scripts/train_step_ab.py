"""The trainer's CPU step on two checkouts, in separate processes: is one slower? (issue: the GPU path's changes must
not make CPU training of the quick config slower.)

    git worktree add /tmp/base <commit before>
    for r in 1 2 3 4 5; do
        .venv/bin/python scripts/train_step_ab.py /tmp/base; .venv/bin/python scripts/train_step_ab.py .
    done

Prints the median step time (ms) of the default model's quick-config step (batch 32, 2 threads, seeded synthetic
windows; 5 warm-up and 30 timed steps) for the pretraining and the fine-tuning stage, with the tree it ran on.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(sys.argv[1]).resolve()))  # the checkout to time, ahead of the installed one

from alignnet.model.registry import create_model  # noqa: E402
from alignnet.training.trainer import TrainConfig, Trainer  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(2)
out = {"tree": sys.argv[1]}
for stage in ("pretrain", "both"):
    model = create_model("alignnet")
    trainer = Trainer(model, TrainConfig(stage=stage, batch_size=32, device="cpu", progress=False))
    c, gen = model.config, torch.Generator().manual_seed(0)
    batch = {"spikes": torch.log1p(torch.poisson(torch.full((32, c.n_channels, c.window_bins), 0.8), generator=gen)),
             "behavior": torch.randn((32, c.behavior_dims, c.window_bins), generator=gen), "day": None,
             "starts": torch.arange(32) * c.window_bins}
    for _ in range(5):
        trainer.step(batch)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - t)
    out[f"{stage}_step_ms"] = round(float(np.median(times)) * 1e3, 1)
print(json.dumps(out))
