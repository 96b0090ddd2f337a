"""One training loop for AlignNet's stages and every baseline.

``Trainer.step(batch) -> dict[str, float]``; pretraining, fine-tuning and every baseline are configurations of the
same loop. A closed-form model (Wiener filter) fits through the same ``fit()``. AdamW, cosine schedule with warm-up,
early stopping on validation loss, a checkpoint every epoch (resumable to the same result: the data order of each
epoch is a function of the seed and the epoch, and RNG states are saved), JSONL metrics, optional DDP under
``torchrun`` (logging and checkpoints on rank 0 only) and optional ``torch.compile``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from alignnet.model.atomic import atomic_path
from alignnet.model.base import BidirectionalModel
from alignnet.model.contract import DataContract
from alignnet.model.lif import reset_states
from alignnet.training.batches import Batches, is_rank0  # noqa: F401  (is_rank0 re-exported)
from alignnet.training.objective import Objective
from alignnet.training.windows import DayWindows

log = logging.getLogger(__name__)

STAGES = ("pretrain", "decode", "simulate", "both")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    stage: str = "both"  # pretrain (AlignNet: reconstructions + InfoNCE) | decode | simulate | both (two MSEs)
    epochs: int = 20  # maximum epochs
    batch_size: int = 64  # windows per step (per process under DDP)
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_epochs: float = 1.0  # linear warm-up before the cosine decay
    patience: int = 5  # early stopping: epochs without a better validation loss
    max_steps_per_epoch: int | None = None  # cap on steps per epoch (quick runs)
    contrastive_weight: float = 1.0  # weight of InfoNCE in pretraining
    # weight of the cross-modal paths' MSEs in pretraining (spike encoder -> behavior decoder, behavior encoder ->
    # spike decoder: the two that decode and simulate serve). 0: the paper's pretraining, which never trains them
    cross_modal_weight: float = 0.0
    # the validation loss part that keeps the best checkpoint and stops early: loss (the stage's whole loss), or one
    # of its parts, e.g. decode_mse (fine-tuning; pretraining with cross_modal_weight > 0): what the service serves
    select_on: str = "loss"
    seed: int = 0  # everything random derives from it
    device: str = "auto"  # auto | cpu | cuda
    compile: bool | str = "auto"  # torch.compile the training step: auto = on CUDA only (CPU compiles cost more
    # than they save on this project's small steps), true, false
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs of the fixed-shape
    # step) | max-autotune | max-autotune-no-cudagraphs
    lr_batch: int | None = None  # the batch size lr was tuned at: another batch size (x processes under DDP)
    # scales lr by the square root of the ratio
    channels_last: bool = False  # the U-Nets' 2-D convolutions in channels-last memory layout (a GPU choice)
    precision: str = "fp32"  # fp32 | bf16: the forward under bf16 autocast on the step's device (weights stay fp32)
    data_on_device: bool | str = "auto"  # keep every window on the device once (auto = on CUDA), not one batch a step
    train_only: list[str] = field(default_factory=list)  # parameter-name prefixes to train (empty = all)
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("contrastive_weight", "cross_modal_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("compile", "data_on_device"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"{name} must be true, false or auto, got {getattr(self, name)!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.lr_batch is not None and int(self.lr_batch) < 1:
            raise ValueError(f"lr_batch must be >= 1, got {self.lr_batch}")

    @classmethod
    def check_keys(cls, settings: dict[str, Any], where: str, fixed: tuple[str, ...] = (), why: str = "") -> None:
        """Refuse, naming them, the keys of ``settings`` that are not training settings (a misspelt ``epoch``
        would otherwise be a TypeError deep in a run, or be dropped), and a device no machine here has; ``fixed``
        are set by the caller (``why`` says where)."""
        valid = sorted({f.name for f in fields(cls)} - set(fixed))
        unknown = sorted(str(k) for k in settings if k not in valid)
        if unknown:
            raise ValueError(f"unknown {where} setting(s) {', '.join(unknown)}; the settings are {', '.join(valid)}"
                             + (f" ({why})" if why and set(unknown) & set(fixed) else ""))
        if "device" in settings:
            resolve_device(settings["device"])

    def peak_lr(self, processes: int = 1) -> float:
        """``lr``, scaled by the square root of the step's whole batch (batch_size x processes under DDP) over
        lr_batch where the rate was tuned at another batch size (the usual rule for Adam-type optimisers)."""
        return self.lr * (math.sqrt(self.batch_size * processes / self.lr_batch) if self.lr_batch else 1.0)

    def wants(self, name: str, device: torch.device) -> bool:
        """A true/false/auto switch resolved for ``device`` (auto: on CUDA)."""
        value = getattr(self, name)
        return value is True or (value == "auto" and device.type == "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA where there is one), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a CUDA device this
    machine lacks, is refused with a ValueError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: give auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}, but no CUDA device is available (install a CUDA build of torch)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def as_numbers(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss parts (0-d tensors, on the step's device) as floats: one transfer, after the step."""
    keys = list(parts)
    values = torch.stack([parts[k].float() for k in keys]).tolist() if keys else []
    return dict(zip(keys, values))


class Trainer:
    def __init__(self, model: BidirectionalModel, cfg: TrainConfig, run_dir: str | Path | None = None,
                 day_names_use_readin: bool = False) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.run_dir = Path(run_dir) if run_dir else None
        self.use_readin = day_names_use_readin
        if cfg.stage == "pretrain" and not hasattr(model, "pretrain_outputs"):
            raise ValueError(f"stage {cfg.stage!r} needs AlignNet; {model.model_name} has no pretraining")
        for n, p in model.named_parameters():
            p.requires_grad_(not cfg.train_only or any(n.startswith(pref) for pref in cfg.train_only))
        self.params = [p for p in model.parameters() if p.requires_grad]
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.objective = Objective(model, cfg.stage, cfg.contrastive_weight, cfg.cross_modal_weight)
        self.net: nn.Module = self.objective
        if dist.is_initialized():
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.net, find_unused_parameters=True)
        self.compiled = cfg.wants("compile", self.device)
        if self.compiled:
            self.net = torch.compile(self.net, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
        self.peak_lr = cfg.peak_lr(dist.get_world_size() if dist.is_initialized() else 1)
        # fused AdamW on CUDA: one kernel for every parameter's update instead of several per tensor
        self.optimizer = torch.optim.AdamW(self.params, lr=self.peak_lr, weight_decay=cfg.weight_decay,
                                           fused=self.device.type == "cuda") if self.params else None
        self.epoch, self.best, self.bad_epochs, self.global_step = 0, math.inf, 0, 0
        self.history: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None

    # ---- one step ----------------------------------------------------------------------------------------------
    def losses(self, batch: dict[str, Any], net: nn.Module | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # every LIF membrane at rest before the call, outside any compiled graph: the model resets them too, but
        # torch.compile guards on the state a call starts from (a float, a tensor with or without grad after the
        # last step or an eager validation), and recompiled the step for each: three compilations, not one
        reset_states(self.model)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.cfg.precision == "bf16"):
            return (net or self.net)(batch["spikes"], batch["behavior"], batch["day"] if self.use_readin else None,
                                     batch.get("starts"))

    def _train_mode(self) -> None:
        """Train mode for what is trained; with ``train_only`` (a new day's read-in) every other module stays in eval
        mode, so batch norm keeps the statistics of the pretrained days instead of re-estimating them on the
        calibration slice."""
        self.model.train()
        if self.cfg.train_only:
            for name, m in self.model.named_modules():
                if name and not any(f"{name}.".startswith(p) or name.startswith(p) for p in self.cfg.train_only):
                    m.training = False  # this module only: its trained children keep train mode

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step; returns the loss parts."""
        return as_numbers(self.step_parts(batch))

    def step_parts(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the loss parts as 0-d tensors on the device, unread, so the host can queue
        the next step while the device still runs this one."""
        self._train_mode()
        if self.compiled and self.cfg.compile_mode in ("reduce-overhead", "max-autotune"):
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last replay's outputs may be overwritten
        loss, parts = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_initialized():  # DDP hooks cover parameters used in forward; sync the rest
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(self.params, 5.0)
        self.optimizer.step()
        self.global_step += 1
        return parts

    @torch.no_grad()
    def evaluate(self, data: Batches) -> dict[str, float]:
        """Validation loss parts, averaged over windows. Eager even when the step is compiled: validation batches
        end in remnants of any size, each of which would be a compilation."""
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for k, idx in data.plan(None, self.cfg.seed):
            batch = data.get(k, idx)
            if len(idx) < 2 and self.cfg.stage == "pretrain":
                continue
            _, parts = self.losses(batch, self.objective)
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v.double() * len(idx)
            n += len(idx)
        totals = as_numbers(sums)
        if dist.is_initialized():  # every rank saw a shard: sum them so all ranks take the same decisions
            keys = sorted(totals)
            packed = torch.tensor([totals[k] for k in keys] + [float(n)], dtype=torch.float64)
            dist.all_reduce(packed)
            totals, n = dict(zip(keys, packed[:-1].tolist())), int(packed[-1])
        return {f"val_{k}": v / max(n, 1) for k, v in totals.items()}

    # ---- the loop ----------------------------------------------------------------------------------------------
    def _lr(self, epoch_progress: float) -> float:
        c = self.cfg
        if epoch_progress < c.warmup_epochs:
            return self.peak_lr * max(epoch_progress / c.warmup_epochs, 0.05)
        t = (epoch_progress - c.warmup_epochs) / max(c.epochs - c.warmup_epochs, 1e-9)
        return self.peak_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def fit(self, train: list[DayWindows], val: list[DayWindows], contract: DataContract,
            resume: bool = False) -> dict[str, Any]:
        """Train until the epoch budget or early stopping; returns a summary. The best weights are kept."""
        c = self.cfg
        seed_everything(c.seed)
        t0 = time.perf_counter()
        if not self.model.needs_gradients:
            return self._fit_closed_form(train, val, contract, t0)
        if self.optimizer is None:
            raise ValueError("no parameters to train (check train_only)")
        on_device = c.wants("data_on_device", self.device)
        train_b = Batches(train, contract, c.batch_size, self.device, on_device)
        val_b = Batches(val, contract, max(c.batch_size, 128), self.device, on_device)
        if len(train_b) == 0:
            raise ValueError("no training windows: the days are shorter than one window, or the split is empty")
        if resume and self.run_dir and (self.run_dir / "checkpoint.pt").is_file():
            self.load_checkpoint(self.run_dir / "checkpoint.pt")
            log.info("resumed from %s at epoch %d", self.run_dir / "checkpoint.pt", self.epoch)
        windows_seen = 0
        while self.epoch < c.epochs and self.bad_epochs < c.patience:
            # compiled: full batches only, so every step has one shape (no recompiles; CUDA graphs replay)
            plan = train_b.plan(self.epoch, c.seed, full_only=self.compiled)
            if c.max_steps_per_epoch:
                plan = plan[: c.max_steps_per_epoch]
            sums, train_s = self._train_epoch(train_b, plan)
            windows_seen += sum(len(i) for _, i in plan)
            row = {"epoch": self.epoch + 1, **{k: v / max(len(plan), 1) for k, v in sums.items()},
                   **self.evaluate(val_b), "lr": self.optimizer.param_groups[0]["lr"], "epoch_train_s": train_s,
                   "windows_per_s": sum(len(i) for _, i in plan) / max(train_s, 1e-9)}
            self.epoch += 1
            score = self._selection_score(row)
            if score < self.best - 1e-6:
                self.best, self.bad_epochs = score, 0
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                self.bad_epochs += 1
            self.history.append(row)
            if is_rank0():
                self._log(row)
                if self.run_dir:
                    self.save_checkpoint(self.run_dir / "checkpoint.pt")
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if dist.is_initialized():
            self._check_ranks_agree()
        return {"epochs": self.epoch, "best_val_loss": self.best, "train_s": time.perf_counter() - t0,
                "windows_seen": windows_seen, "stopped_early": self.bad_epochs >= c.patience}

    def _selection_score(self, row: dict[str, float]) -> float:
        """The epoch's validation ``select_on`` part (its training value where there are no validation windows)."""
        key = self.cfg.select_on
        if f"val_{key}" in row:
            return row[f"val_{key}"]
        if key in row:
            return row[key]
        parts = sorted(k for k in row if k.startswith("val_")) or sorted(row)
        raise ValueError(f"select_on {key!r} is not a loss part of stage {self.cfg.stage!r}; its parts: "
                         f"{', '.join(k.removeprefix('val_') for k in parts)}")

    def _train_epoch(self, train_b: Batches, plan: list) -> tuple[dict[str, float], float]:
        """One epoch's steps over ``plan``: each loss part summed over them (read once) and the seconds taken."""
        c = self.cfg
        bar = tqdm(plan, desc=f"{self.model.model_name} {c.stage} epoch {self.epoch + 1}/{c.epochs}",
                   disable=not (c.progress and is_rank0()), leave=False, unit="batch")
        sums: dict[str, torch.Tensor] = {}  # on the device: read once an epoch, and for the bar now and then
        epoch_t = shown = time.perf_counter()
        for i, (k, idx) in enumerate(bar):
            for g in self.optimizer.param_groups:
                g["lr"] = self._lr(self.epoch + i / max(len(plan), 1))
            parts = self.step_parts(train_b.get(k, idx))
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v.double()
            if not bar.disable and time.perf_counter() - shown > 1.0:  # one host sync a second at most
                bar.set_postfix(loss=f"{float(parts['loss']):.4f}")
                shown = time.perf_counter()
        return as_numbers(sums), time.perf_counter() - epoch_t

    def _check_ranks_agree(self) -> None:
        """Every rank must end with the same weights (DDP keeps them in sync); refuse to go on otherwise."""
        with torch.no_grad():
            checksum = torch.stack([p.double().sum() for p in self.model.parameters()]).sum().reshape(1)
            gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, checksum)
        values = [float(g) for g in gathered]
        if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
            raise RuntimeError(f"DDP ranks hold different weights after training (checksums {values})")

    def _fit_closed_form(self, train, val, contract, t0) -> dict[str, Any]:
        if len({d.counts.shape[1] for d in train}) > 1:
            raise ValueError(f"{self.model.model_name} is fitted on one channel space; days differ in channels")
        xs = np.concatenate([contract.preprocess_spikes(d.counts) for d in train])
        ys = np.concatenate([contract.preprocess_behavior(d.behavior) for d in train])
        v = None
        if val and sum(len(d) for d in val):
            v = (np.concatenate([contract.preprocess_spikes(d.counts) for d in val]),
                 np.concatenate([contract.preprocess_behavior(d.behavior) for d in val]))
        chosen = self.model.fit(xs, ys, v)
        self.model.to(self.device)
        self._log({"epoch": 1, **chosen})
        return {"epochs": 1, "train_s": time.perf_counter() - t0, "windows_seen": len(xs), **chosen}

    # ---- logging and checkpoints -------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        log.debug("%s", row)
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"stage": self.cfg.stage, **row}) + "\n")

    def save_checkpoint(self, path: Path) -> None:
        """Model, optimizer, loop counters and RNG states; atomic."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "best": self.best, "bad_epochs": self.bad_epochs, "global_step": self.global_step,
            "best_state": self.best_state,
            "torch_rng": torch.get_rng_state(),
            "config": asdict(self.cfg),
            "history": self.history,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: unreadable checkpoint ({e}); delete it to start over") from e
        if state.get("config", {}).get("stage") != self.cfg.stage:
            raise ValueError(f"{path}: checkpoint is of stage {state.get('config', {}).get('stage')!r}, "
                             f"not {self.cfg.stage!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.best, self.bad_epochs = state["epoch"], state["best"], state["bad_epochs"]
        self.global_step, self.best_state = state["global_step"], state["best_state"]
        self.history = state.get("history", [])
        torch.set_rng_state(state["torch_rng"].cpu())
