"""Training runs and evaluations as functions: ``train(cfg, ...)`` and ``evaluate(cfg, ...)``.

Config: dataclass defaults <- YAML file <- ``--set key=value`` overrides; the resolved config is written into the
run folder. Multi-process: ``torchrun --standalone --nproc_per_node N -m alignnet train CONFIG`` (gloo on CPU, NCCL
on GPU); logging and checkpoints on rank 0 only.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from alignnet.model import create_model
from alignnet.model.artifacts import save_artifact
from alignnet.model.base import run_batched
from alignnet.model.contract import weighted_mean, weighted_std
from alignnet.model.metrics import pearson, r2
from alignnet.model.registry import model_class
from alignnet.recordings.dataset import (
    DEFAULT_DATASET,
    DataError,
    Dataset,
    atomic_write_bytes,
    atomic_write_json,
)
from alignnet.training.trainer import TrainConfig, Trainer, is_rank0, resolve_device, seed_everything
from alignnet.training.windows import fit_contract, fit_hop, short_segments, split_trials, windows_in_trials

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the repository's configs/, next to training/


# ---- config ----------------------------------------------------------------------------------------------------
def load_config(name_or_path: str) -> tuple[dict[str, Any], Path]:
    """A YAML config file, or the name of one in configs/; returns (config, its path)."""
    path = Path(name_or_path)
    if not path.is_file():
        named = CONFIGS / f"{name_or_path}.yaml"
        if not named.is_file():
            options = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
            raise DataError(f"{name_or_path}: config file not found (named configs: {options})")
        path = named
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: a config must be a mapping of sections")
    return cfg, path


def apply_overrides(cfg: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) in place."""
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = _yaml_value(value)
    return cfg


def _yaml_value(text: str) -> Any:
    """A --set value as YAML, except that YAML 1.1 reads exponent floats without a dot (1e-4) as strings."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if any(ch in value.lower() for ch in "e.") else value
        except ValueError:
            return value
    return value


def init_distributed(device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


# ---- train -----------------------------------------------------------------------------------------------------
def training_days(ds: Dataset, train_cfg: dict[str, Any]) -> list[int]:
    days = train_cfg.get("days", "all")
    return list(range(len(ds))) if days == "all" else [ds.day_index(d) for d in days]


def _train_windows(ds: Dataset, train_cfg: dict[str, Any]) -> tuple[list, list, list, list[int], int, str]:
    """Train, validation and held-out test windows of every training day (the last ``train.test_fraction`` of each
    day's trials or time blocks is test, never seen in training or early stopping)."""
    c = ds.contract()
    window = int(train_cfg.get("window_bins", c.window_bins))
    hop = fit_hop(train_cfg.get("hop_bins", ds.manifest.get("default_hop_bins", max(1, window // 10))), window)
    behavior = train_cfg.get("behavior", c.behavior_kind)
    day_idx = training_days(ds, train_cfg)
    cross = train_cfg.get("cross_segments")  # concatenate movement periods (short real trials); None: auto
    cross = short_segments(ds, window, day_idx) if cross is None else bool(cross)
    trainw, valw, testw = [], [], []
    for d in day_idx:
        day = ds.day(d)
        split = split_trials(day, float(train_cfg.get("test_fraction", 0.2)),
                             float(train_cfg.get("val_fraction", 0.1)), window)
        trainw.append(windows_in_trials(day, split["train"], window, hop, behavior, cross))
        valw.append(windows_in_trials(day, split["val"], window, hop, behavior, cross))
        testw.append(windows_in_trials(day, split["test"], window, hop, behavior, cross))
        if len(trainw[-1]) == 0:
            raise DataError(f"{ds.root}: day {day.name} has no training window of {window} bins ({day.n_bins} bins, "
                            f"{day.n_trials} {'time blocks' if day.split_by == 'time' else 'trials'}); use a "
                            "shorter train.window_bins or train.cross_segments: true")
    return trainw, valw, testw, day_idx, window, behavior


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out if out or not prefix else {prefix[:-1]: {}}


def check_resume(path: Path, new: dict[str, Any], force: bool) -> None:
    """``--resume`` continues the recorded run: a changed setting (seed, learning rate, epochs, data, ...) is refused
    (DataError naming each) unless ``force``, then logged."""
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: the run's recorded config cannot be read ({e}); resume needs it") from None
    ignore = ("resolved.command", "resolved.device")
    a, b = _flat(old), _flat(new)
    changed = [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k) and not k.startswith(ignore)]
    if changed and not force:
        raise DataError(f"--resume: the run in {path.parent} was started with other settings ({'; '.join(changed[:8])}"
                        f"{'; …' if len(changed) > 8 else ''}); resume with the same ones, or add --force to continue "
                        "with the new ones (the recorded config.yaml is kept)")
    if changed:
        log.warning("--resume --force: continuing with changed settings: %s", "; ".join(changed))


RUN_SECTIONS = ("model", "model_config", "train", "pretrain", "finetune", "evaluate")
DATA_SETTINGS = ("behavior", "cross_segments", "data", "days", "device", "hop_bins", "model_channels", "seed",
                 "test_fraction", "val_fraction", "window_bins")  # what train: holds (read by _train_windows, train)


def check_config(cfg: dict[str, Any]) -> None:
    """Refuse, naming them, the keys no part of training reads: a misspelt section or setting would otherwise be
    dropped without a word, or fail deep in a run. ``resolved`` and ``split`` are what a run records."""
    unknown = sorted(set(map(str, cfg)) - set(RUN_SECTIONS) - {"resolved", "split"})
    if unknown:
        raise ValueError(f"unknown config section(s) {', '.join(unknown)}; the sections are {', '.join(RUN_SECTIONS)}")
    unknown = sorted(set(map(str, cfg.get("train") or {})) - set(DATA_SETTINGS))
    if unknown:
        raise ValueError(f"unknown train setting(s) {', '.join(unknown)}; train: takes {', '.join(DATA_SETTINGS)} "
                         "(epochs, batch size and learning rate go in pretrain: and finetune:)")
    for stage in ("pretrain", "finetune"):
        TrainConfig.check_keys(cfg.get(stage) or {}, stage, ("device", "seed"), "device and seed go in train:")


def train(cfg: dict[str, Any], config_path: Path, *, data: Path | None = None, out: Path | None = None,
          device: str | None = None, resume: bool = False, force: bool = False, command: str = "") -> dict[str, Any]:
    """Pretrain (AlignNet) and fine-tune per ``cfg`` on every day of ``data``; writes OUT/config.yaml, OUT/<stage>/
    metrics and checkpoints, and the artifact OUT/artifact. Returns the artifact folder, a summary per stage and
    the validation metrics (None on ranks other than 0).

    Stages: the settings checked and the device set up; the windows cut and the run recorded (``_record_run``); the
    model built on the fitted contract (``_build_model``); each training stage fitted (``_fit_stages``); the model
    scored and saved as the artifact (``_save_trained``)."""
    check_config(cfg)  # a wrong setting or device is refused before anything is read or written
    train_cfg = cfg.get("train", {})
    device = device or train_cfg.get("device", "auto")
    resolve_device(device)
    init_distributed(device)
    out = out or Path("runs") / config_path.stem
    data = data or Path(train_cfg.get("data", DEFAULT_DATASET))
    ds = Dataset(data)
    matched = _trainable(cfg, ds, train_cfg, data)
    seed = int(train_cfg.get("seed", 0))
    seed_everything(seed)
    trainw, valw, testw, day_idx, window, behavior = _train_windows(ds, train_cfg)
    split = split_report(ds, day_idx, testw)
    if is_rank0():
        _record_run(out, {**cfg, "resolved": {"data": str(data), "device": device, "command": command},
                          "split": split}, resume, force)
    model, contract = _build_model(cfg, ds, trainw, window, behavior, matched, train_cfg)
    t0 = time.perf_counter()
    summaries = _fit_stages(model, cfg, trainw, valw, contract, device, seed, out, matched, resume)
    metrics = None
    if is_rank0():
        metrics = _save_trained(model, out / "artifact", ds, trainw, valw, testw, contract, matched, {
            "dataset": str(data), "days": [ds.day_names[d] for d in day_idx], "config": str(config_path),
            "train_s": round(time.perf_counter() - t0, 1), "stages": summaries, "seed": seed},
            ds.day_names[day_idx[-1]])
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return {"artifact": out / "artifact", "stages": summaries, "metrics": metrics, "split": split}


def _trainable(cfg: dict[str, Any], ds: Dataset, train_cfg: dict[str, Any], data: Path) -> bool:
    """Whether the model reads the days' channels as they are (``matched``); a DataError for a model that cannot be
    trained into an artifact on ``ds``."""
    if not model_class(cfg.get("model", "alignnet")).servable:
        raise DataError(f"{cfg.get('model')} is an evaluation yardstick (alignnet evaluate --models); it cannot be "
                        "trained into a servable artifact")
    # one training day: its own channels are the model's, whatever the units of other days (no read-in needed)
    matched = ds.units_matched or len(set(training_days(ds, train_cfg))) == 1
    if not matched and not model_class(cfg.get("model", "alignnet")).needs_gradients:
        raise DataError(f"{data}: units differ across days, and {cfg.get('model')} is fitted in closed form on one "
                        "channel space; train it on one day (train.days: [NAME]) or choose a model with read-ins")
    return matched


def _record_run(out: Path, recorded: dict[str, Any], resume: bool, force: bool) -> None:
    """OUT/config.yaml: what the run was asked and how its data were split (never overwritten: a resumed run checks
    against it and writes config.resumed.yaml)."""
    out.mkdir(parents=True, exist_ok=True)
    name = "config.yaml"
    if resume and (out / name).is_file():
        check_resume(out / name, recorded, force)
        name = "config.resumed.yaml"
    atomic_write_bytes(out / name, yaml.safe_dump(recorded).encode())


def _build_model(cfg: dict[str, Any], ds: Dataset, trainw: list, window: int, behavior: str,
                 matched: bool, train_cfg: dict[str, Any]):
    """The contract fitted on the training windows and the model built on it (with a read-in per day where units
    differ by day: one shared model space of ``train.model_channels`` channels)."""
    space = {} if ds.units_matched else {"n_channels": trainw[0].n_channels if matched
                                         else int(train_cfg.get("model_channels", 64))}
    contract = fit_contract(ds.contract(window_bins=window, behavior_kind=behavior, **space), trainw)
    model = create_model(cfg.get("model", "alignnet"), **{"n_channels": contract.n_channels, "window_bins": window,
                                                          **cfg.get("model_config", {})})
    if not matched:
        for w in trainw:
            model.add_day(w.day, w.n_channels)
    return model, contract


def _fit_stages(model, cfg: dict[str, Any], trainw, valw, contract, device: str, seed: int, out: Path,
                matched: bool, resume: bool) -> dict[str, Any]:
    """Pretraining (for a model that has it and a config that asks for it), then fine-tuning; a summary of each."""
    summaries = {}
    stages = (["pretrain"] if hasattr(model, "pretrain_outputs") and cfg.get("pretrain") else []) + ["finetune"]
    for stage in stages:
        stage_cfg = {**cfg.get(stage, {}), "device": device, "seed": seed,
                     "stage": "pretrain" if stage == "pretrain" else cfg.get(stage, {}).get("stage", "both")}
        trainer = Trainer(model, TrainConfig(**stage_cfg), run_dir=out / stage, day_names_use_readin=not matched)
        summaries[stage] = trainer.fit(trainw, valw, contract, resume=resume)
        last = trainer.history[-1] if trainer.history else {}
        summaries[stage]["windows_per_s"] = last.get("windows_per_s")
    return summaries


def _save_trained(model, folder: Path, ds: Dataset, trainw, valw, testw, contract, matched: bool,
                  provenance: dict[str, Any], last_day: str) -> dict[str, Any]:
    """The trained model's validation and test metrics and its references (the latent the drift gauge compares
    with, the channel statistics zero-label calibration matches), saved with it as the artifact ``folder``."""
    model.eval()  # metrics and references on the training device (at paper scale, minutes on a CPU)
    metrics = {**split_metrics(model, valw, contract, "val", not matched),
               **split_metrics(model, testw, contract, "test", not matched)}
    extra = {"latent_reference": latent_reference(model, trainw, contract, not matched),
             "channel_reference": channel_reference(trainw, contract) if matched else None}
    served = contract
    if not matched:  # served through the last day's read-in until a new day is calibrated
        extra.update(served_day=last_day, model_contract=contract.to_dict())
        served = contract.for_day(trainw[-1].n_channels)
    save_artifact(folder, model.cpu(), served, metrics=metrics, extra=extra, provenance=provenance)
    return metrics


def split_report(ds: Dataset, day_idx: list[int], testw: list) -> dict[str, str]:
    """How each training day was split (by its trials, or by time for a continuous session)."""
    return {ds.day_names[d]: f"by {ds.day(d).split_by}, {len(w)} test windows" for d, w in zip(day_idx, testw)}


@torch.no_grad()
def split_metrics(model, windows, contract, prefix: str, use_day: bool = False) -> dict[str, float | None]:
    """S→B R² (every bin of the windows, and the newest bin only: what a live decoder serves) and B→S r of one split,
    in data units, day by day through their read-ins when units differ (r averaged over every day's channels).
    None where the split is empty or its behavior does not vary."""
    dec, sim, beh, counts = [], [], [], []
    for w in windows:
        if len(w) == 0:
            continue
        day = w.day if use_day else None
        dec.append(contract.postprocess_behavior(run_batched(model.decode, model, contract.preprocess_spikes(w.counts),
                                                             day)))
        rates = run_batched(model.simulate, model, contract.preprocess_behavior(w.behavior), day)
        sim.append(pearson(w.counts, contract.postprocess_rates(rates), 1) * w.counts.shape[1])
        beh.append(w.behavior)
        counts.append(w.counts.shape[1])
    keys = [f"{prefix}_s2b_r2", f"{prefix}_newest_r2", f"{prefix}_b2s_r"]
    if not beh:
        return dict.fromkeys(keys)
    true, pred = np.concatenate(beh), np.concatenate(dec)
    if not np.ptp(true, axis=(0, 2)).all():
        return {**dict.fromkeys(keys[:2]), keys[2]: float(np.sum(sim) / np.sum(counts))}
    return {keys[0]: r2(true, pred, 1), keys[1]: r2(true[..., -1:], pred[..., -1:], 1),
            keys[2]: float(np.sum(sim) / np.sum(counts))}


def channel_reference(windows, contract) -> dict[str, list]:
    """Mean and standard deviation of every model input channel (preprocessed counts) over the training windows:
    what zero-label calibration maps a new day's channels back to (matched channels only)."""
    parts = []
    for w in windows:  # rows (bins, C), weighted by how many windows hold each bin (windows given as arrays: 1)
        if w.series is not None:
            x, weight = contract.scale_counts(w.series[0].T[None])[0].T, w.coverage()
        else:
            x = contract.preprocess_spikes(w.counts).transpose(0, 2, 1).reshape(-1, w.n_channels)
            weight = np.ones(len(x))
        parts.append((x.astype(np.float64), weight.astype(np.float64)))
    return {"mean": weighted_mean(parts).tolist(), "std": weighted_std(parts).tolist()}


@torch.no_grad()
def latent_reference(model, windows, contract, use_day: bool, max_windows: int = 4096) -> dict[str, list] | None:
    """Mean (D,) and covariance (D, D) of AlignNet's spike latent over the training windows: what zero-label
    calibration aligns a new day to and what the drift monitor measures against (None for other models)."""
    if not hasattr(model, "spike_embedding"):
        return None
    z = []
    for w in windows:
        x = contract.preprocess_spikes(w.take(slice(0, max_windows)).counts)
        z.append(run_batched(model.spike_embedding, model, x, w.day if use_day else None))
    z = torch.from_numpy(np.concatenate(z)).double()
    return {"mean": z.mean(0).tolist(), "cov": torch.cov(z.T).tolist(), "n_windows": int(len(z))}


# ---- evaluate --------------------------------------------------------------------------------------------------
def evaluate(cfg: dict[str, Any], data: Path, out: Path, protocols: list[str], models: list[str],
             command: str = "", seeds: list[int] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """The paper's protocols (Table 1) on ``data``: writes OUT/results.json, OUT/results.md and PNG figures;
    returns the results and the figure paths. With ``seeds``, each seed's run goes to OUT/seed-K (a finished one
    with the same request is reused, so a long run can be resumed or its seeds run apart) and OUT/results.json holds
    every score's mean, sd and per-seed values."""
    from alignnet.training import report

    if seeds:
        from alignnet.training.seeds import evaluate_seeds

        return evaluate_seeds(cfg, data, out, protocols, models, command, seeds, evaluate)
    from alignnet.training.protocols import EvalConfig, run
    from alignnet.training.seeds import request

    ecfg = EvalConfig.from_dict(cfg)
    ds = Dataset(data)
    asked = request(ecfg, data, protocols, models)
    results, proto = run(ds, ecfg, protocols, models)
    results.update(command=command, request=asked)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    figs = report.figures(results, proto.predictions, out, ds.contract().bin_s)
    md = report.markdown(results, command) + "\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figs) + "\n"
    atomic_write_bytes(out / "results.md", md.encode())
    return results, figs
