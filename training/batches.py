"""Day-homogeneous training batches, gathered on the step's device.

A day's windows overlap (a window every hop, ten to a bin at the default hop), so where they were cut from a day's
continuous bins (``DayWindows.series``) the batches are gathered from those bins: the day is preprocessed and moved
once, and a batch is an index (its windows' first bins) into it. Windows given as arrays are used as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from alignnet.model.contract import DataContract
from alignnet.training.windows import DayWindows


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class Batches:
    """Day-homogeneous batches (each day may have its own read-in), shuffled by (seed, epoch), sharded by rank."""

    def __init__(self, data: list[DayWindows], contract: DataContract, batch_size: int, device: torch.device,
                 on_device: bool = False) -> None:
        """``on_device``: every day's data moved to ``device`` once (a batch is then an index on the device), else
        each batch on its way to a step."""
        home = device if on_device else torch.device("cpu")
        self.days = [d.day for d in data]
        self.spikes, self.behavior, self.by_start = [], [], []
        for d in data:
            if d.series is not None:
                # the day's bins, channel-major (F, n_bins), seen as every window (n_bins - W + 1, F, W): a view,
                # no copy, in which each channel's row of a window is contiguous (a fast gather)
                counts, beh, window = d.series
                for out, x in ((self.spikes, contract.scale_counts(counts.T[None])[0]),
                               (self.behavior, contract.scale_behavior(beh.T[None])[0])):
                    day = torch.from_numpy(np.ascontiguousarray(x)).to(home)
                    out.append(day.unfold(1, window, 1).permute(1, 0, 2))
            else:
                self.spikes.append(torch.from_numpy(contract.preprocess_spikes(d.counts)).to(home))
                self.behavior.append(torch.from_numpy(contract.preprocess_behavior(d.behavior)).to(home))
            self.by_start.append(d.series is not None)
        self.starts = [None if d.starts is None else torch.from_numpy(np.asarray(d.starts, np.int64)).to(home)
                       for d in data]
        self.sizes = [len(d) for d in data]
        self.batch_size, self.device, self.home = batch_size, device, home

    def __len__(self) -> int:
        return sum(self.sizes)

    def plan(self, epoch: int | None, seed: int, full_only: bool = False) -> list[tuple[int, np.ndarray]]:
        """(day index, window indices) per batch; epoch=None: in order, for evaluation. ``full_only`` (training):
        leave out each day's last, smaller batch where the day fills one at least, so every step has the same
        shape (the next epoch shuffles again, so those windows are left out only this once)."""
        rng = np.random.default_rng([seed, epoch]) if epoch is not None else None
        plan = []
        for k, n in enumerate(self.sizes):
            idx = rng.permutation(n) if rng is not None else np.arange(n)
            plan += [(k, idx[i:i + self.batch_size]) for i in range(0, n, self.batch_size)]
        if rng is not None:
            plan = [plan[i] for i in rng.permutation(len(plan))]
            # a lone window cannot be batch-normalised in training mode
            least = [self.batch_size if full_only and n >= self.batch_size else 2 for n in self.sizes]
            plan = [(k, i) for k, i in plan if len(i) >= least[k]]
        if dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
            if epoch is not None:  # training: the same number of steps on every rank (DDP syncs each step)
                plan = plan[: len(plan) // world * world]
            plan = plan[rank::world]
        return plan

    def get(self, k: int, idx: np.ndarray) -> dict[str, Any]:
        ti = torch.from_numpy(idx).to(self.home)
        starts = None if self.starts[k] is None else self.starts[k][ti]
        at = starts if self.by_start[k] else ti  # a day's bins are indexed by first bin, window arrays by window
        return {"spikes": self.spikes[k].index_select(0, at).to(self.device),
                "behavior": self.behavior[k].index_select(0, at).to(self.device), "day": self.days[k],
                "starts": None if starts is None else starts.to(self.device)}
