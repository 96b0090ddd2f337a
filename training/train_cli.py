"""``alignnet train CONFIG`` and ``alignnet evaluate``.

Config: dataclass defaults <- YAML file <- ``--set key=value`` flags; the resolved config is written into the run
folder. Multi-process: ``torchrun --standalone --nproc_per_node N -m training.cli train CONFIG`` (gloo on CPU, NCCL
on GPU); logging and checkpoints on rank 0 only.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from model import create_model
from model.artifacts import save_artifact
from training.data import DataError, Dataset, atomic_write_bytes, atomic_write_json
from training.data_cli import DEFAULT_DATASET
from training.trainer import TrainConfig, Trainer, is_rank0, seed_everything
from training.windows import Normaliser, split_trials, windows_in_trials

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="pretrain and fine-tune AlignNet (or train a baseline) on a dataset; writes an artifact",
        description="Train per a YAML config (configs/quick.yaml: a few minutes on 2 CPU cores; configs/paper.yaml: "
        "paper scale, for a GPU). Stages: pretrain (AlignNet: both reconstructions + InfoNCE), then fine-tune "
        "(decode + simulate MSE, all parameters). Writes RUN/config.yaml, RUN/<stage>/metrics.jsonl and "
        "checkpoint.pt every epoch, and the artifact RUN/artifact.",
    )
    p.add_argument("config", help="YAML file, or the name of one in configs/ (quick, paper)")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: config's, else data/sim-default)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: config's, else auto)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set finetune.epochs=3 (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="the paper's protocols: Table 1 (results.json, results.md) and figures",
        description="Train and test AlignNet and the baselines under the single-day, cross-day and pretrain "
        "protocols; writes results.json, results.md (Table 1 layout) and PNG figures into --out.",
    )
    p.add_argument("--protocol", default="single-day,cross-day",
                   help="comma-separated: single-day, cross-day, pretrain, or 'all' (default: %(default)s)")
    p.add_argument("--models", default="wiener,gru,mlp,resnet,resnet-unet,alignnet",
                   help="comma-separated registered models (default: %(default)s)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATASET, help="dataset folder (default: %(default)s)")
    p.add_argument("--config", default="quick", help="YAML file or name in configs/ (its 'evaluate' section)")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output folder (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an evaluate setting, e.g. --set cross_test_day=5")
    p.set_defaults(func=cmd_evaluate)


# ---- config ----------------------------------------------------------------------------------------------------
def load_config(name_or_path: str) -> tuple[dict[str, Any], Path]:
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
        node[parts[-1]] = yaml.safe_load(value)
    return cfg


def init_distributed(device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


# ---- train -----------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    cfg, path = load_config(args.config)
    cfg = apply_overrides(cfg, args.set)
    train_cfg = cfg.get("train", {})
    device = args.device or train_cfg.get("device", "auto")
    init_distributed(device)
    out = args.out or Path("runs") / path.stem
    data = args.data or Path(train_cfg.get("data", DEFAULT_DATASET))
    ds = Dataset(data)
    if is_rank0():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.yaml", yaml.safe_dump({**cfg, "resolved": {
            "data": str(data), "device": device, "command": "alignnet " + " ".join(map(shlex.quote, args.argv))}}
            ).encode())
    seed = int(train_cfg.get("seed", 0))
    seed_everything(seed)
    c = ds.contract()
    window = int(train_cfg.get("window_bins", c.window_bins))
    hop = int(train_cfg.get("hop_bins", ds.manifest.get("default_hop_bins", max(1, window // 10))))
    behavior = train_cfg.get("behavior", c.behavior_kind)
    days = train_cfg.get("days", "all")
    day_idx = list(range(len(ds))) if days == "all" else [ds.day_index(d) for d in days]
    trainw, valw = [], []
    for d in day_idx:
        day = ds.day(d)
        split = split_trials(day, 0.0, float(train_cfg.get("val_fraction", 0.1)))
        trainw.append(windows_in_trials(day, split["train"], window, hop, behavior))
        valw.append(windows_in_trials(day, split["val"], window, hop, behavior))
    if not ds.units_matched:
        raise DataError(f"{data}: units differ across days; train with a per-day read-in through "
                        "`alignnet evaluate` (cross-day protocol) for now")
    contract = ds.contract(window_bins=window, behavior_kind=behavior)
    norm = Normaliser.fit(contract, trainw)
    name = cfg.get("model", "alignnet")
    model = create_model(name, **{"n_channels": contract.n_channels, "window_bins": window,
                                  **cfg.get("model_config", {})})
    summaries = {}
    t0 = time.perf_counter()
    stages = (["pretrain"] if hasattr(model, "pretrain_outputs") and cfg.get("pretrain") else []) + ["finetune"]
    for stage in stages:
        stage_cfg = {**cfg.get(stage, {}), "device": device, "seed": seed,
                     "stage": "pretrain" if stage == "pretrain" else cfg.get(stage, {}).get("stage", "both")}
        trainer = Trainer(model, TrainConfig(**stage_cfg), run_dir=out / stage)
        summaries[stage] = trainer.fit(trainw, valw, norm, resume=args.resume)
        if is_rank0():
            last = trainer.history[-1] if trainer.history else {}
            print(f"{stage}: {summaries[stage]['epochs']} epochs, best validation loss "
                  f"{summaries[stage].get('best_val_loss', float('nan')):.4f}, "
                  f"{last.get('windows_per_s', float('nan')):.1f} windows/s")
    if is_rank0():
        model = model.cpu().eval()
        metrics = validation_metrics(model, valw, norm)
        save_artifact(out / "artifact", model, contract, metrics=metrics, provenance={
            "dataset": str(data), "days": [ds.day_names[d] for d in day_idx], "config": str(path),
            "train_s": round(time.perf_counter() - t0, 1), "stages": summaries, "seed": seed})
        print(f"validation: S→B R² {metrics['val_s2b_r2']:.3f}, B→S r {metrics['val_b2s_r']:.3f}")
        print(f"artifact written to {out / 'artifact'}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


@torch.no_grad()
def validation_metrics(model, valw, norm) -> dict[str, float]:
    from training.metrics import pearson, r2

    s = torch.from_numpy(np.concatenate([norm.spikes(w.counts) for w in valw]))
    b = np.concatenate([w.behavior for w in valw])
    dec = norm.contract.postprocess_behavior(model.decode(s).numpy())
    sim = norm.rates_to_counts(model.simulate(torch.from_numpy(norm.behavior(b))).numpy())
    counts = np.concatenate([w.counts for w in valw])
    return {"val_s2b_r2": r2(b, dec, 1), "val_b2s_r": pearson(counts, sim, 1)}


# ---- evaluate --------------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from training import report
    from training.protocols import PROTOCOLS, EvalConfig, run

    cfg, _ = load_config(args.config)
    ecfg = EvalConfig.from_dict(apply_overrides(dict(cfg.get("evaluate", {})), args.set))
    protocols = list(PROTOCOLS) if args.protocol == "all" else args.protocol.split(",")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ds = Dataset(args.data)
    results, proto = run(ds, ecfg, protocols, models)
    command = "alignnet " + " ".join(map(shlex.quote, args.argv))
    results["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", results)
    figs = report.figures(results, proto.predictions, args.out, ds.contract().bin_s)
    md = report.markdown(results, command) + "\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figs) + "\n"
    atomic_write_bytes(args.out / "results.md", md.encode())
    print(report.table(results))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'} and {len(figs)} figures")
    return 0
