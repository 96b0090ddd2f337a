"""``alignnet bench train``: how fast a model trains, one optimisation step at a time, on any device.

Each variant (eager or a torch.compile mode, fp32 or bf16, the default or channels-last memory layout) builds the
model afresh and runs the trainer's own step (``Trainer.step_parts``: the stage's loss, backward, gradient clipping,
AdamW) on seeded synthetic windows of the model's shape, so the figure is the step's alone (no data loading). The
first steps are warm-up (compilation happens there and is timed apart); the timed steps are queued as the trainer
queues them, with the device synchronised after each block of ten.
``graph_breaks`` counts what torch.compile would split the step's forward at (``torch._dynamo.explain``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from alignnet.model.registry import create_model
from alignnet.training.trainer import Objective, TrainConfig, Trainer, as_numbers, resolve_device


def synthetic_batch(model, batch: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Windows of the model's shape: log1p of Poisson counts and standard-normal behavior, with start bins."""
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    spikes = torch.log1p(torch.poisson(torch.full((batch, c.n_channels, c.window_bins), 0.8), generator=gen))
    behavior = torch.randn((batch, c.behavior_dims, c.window_bins), generator=gen)
    starts = torch.arange(batch) * c.window_bins  # no two overlap: every other window is a negative
    return {"spikes": spikes.to(device), "behavior": behavior.to(device), "day": None, "starts": starts.to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(model_name: str, batch: int, steps: int, device: str = "auto", compile_mode: str | None = None,
              precision: str = "fp32", stage: str = "pretrain", warmup: int = 3, seed: int = 0,
              channels_last: bool = False, block: int = 10) -> dict[str, Any]:
    """One variant: windows per second of the training step, its time, and the warm-up's (compile) time.
    ``compile_mode``: None (eager) or a torch.compile mode. Steps run as the trainer runs them, queued without a
    host sync; the device is synchronised after each block of ``block`` steps, and a step's time is the median
    over blocks of a block's time divided by ``block``."""
    torch.manual_seed(seed)
    model = create_model(model_name)
    cfg = TrainConfig(stage=stage, batch_size=batch, device=device, compile=compile_mode is not None,
                      compile_mode=compile_mode or "default", precision=precision, channels_last=channels_last,
                      progress=False)
    trainer = Trainer(model, cfg)
    data = synthetic_batch(model, batch, trainer.device, seed)
    t = time.perf_counter()
    for _ in range(warmup):
        parts = trainer.step_parts(data)
    _sync(trainer.device)
    warmup_s = time.perf_counter() - t
    times = []
    for _ in range(max(1, steps // block)):
        t = time.perf_counter()
        for _ in range(block):
            parts = trainer.step_parts(data)
        _sync(trainer.device)
        times.append((time.perf_counter() - t) / block)
    step_s = float(np.median(times))
    loss = as_numbers(parts)["loss"]
    return {"model": model_name, "stage": stage, "device": str(trainer.device), "batch": batch,
            "compiled": compile_mode is not None, "compile_mode": compile_mode, "precision": precision,
            "channels_last": channels_last, "steps": len(times) * block, "step_ms_median": step_s * 1e3,
            "windows_per_s": batch / step_s, "warmup_s": warmup_s, "loss": loss, "finite": bool(np.isfinite(loss))}


def graph_breaks(model_name: str, batch: int = 4, stage: str = "pretrain", device: str = "cpu") -> dict[str, Any]:
    """What torch.compile would split the stage's forward at: the number of graphs and breaks, and why."""
    import torch._dynamo

    torch.manual_seed(0)
    dev = resolve_device(device)
    model = create_model(model_name).to(dev).train()
    objective = Objective(model, stage, 1.0)
    data = synthetic_batch(model, batch, dev)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(objective)(data["spikes"], data["behavior"], None, data["starts"])
    return {"model": model_name, "stage": stage, "graphs": explained.graph_count,
            "graph_breaks": explained.graph_break_count,
            "reasons": sorted({str(b.reason).splitlines()[0][:200] for b in explained.break_reasons})}


def bench_train(model_name: str, batch: int, steps: int, device: str = "auto", compile_modes: tuple = (None,),
                precisions: tuple = ("fp32",), stage: str = "pretrain", progress=print,
                channels_last: tuple = (False,)) -> dict[str, Any]:
    """Every (compile mode, precision, memory layout) variant in one run, each one's rate against the first's."""
    rows = []
    for mode in compile_modes:
        for precision in precisions:
            for layout in channels_last:
                row = step_rate(model_name, batch, steps, device, mode, precision, stage, channels_last=layout)
                rows.append(row)
                progress(row)
    for row in rows:
        row["speed_vs_first"] = row["windows_per_s"] / rows[0]["windows_per_s"]
    out: dict[str, Any] = {"variants": rows}
    if any(m is not None for m in compile_modes):
        out["graph_breaks"] = graph_breaks(model_name, min(batch, 8), stage, device)
    return out
