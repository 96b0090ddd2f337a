"""``alignnet train CONFIG`` and ``alignnet evaluate`` (the work is done by ``alignnet.training.run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alignnet.cli.main import command_line
from alignnet.recordings.dataset import DEFAULT_DATASET


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="pretrain and fine-tune AlignNet (or train a baseline) on a dataset; writes an artifact",
        description="Train per a YAML config (configs/quick.yaml: a few minutes on 2 CPU cores; configs/paper.yaml: "
        "paper scale, for a GPU). Stages: pretrain (AlignNet: both reconstructions + InfoNCE), then fine-tune "
        "(decode + simulate MSE, all parameters). Writes RUN/config.yaml, RUN/<stage>/metrics.jsonl and "
        "checkpoint.pt every epoch, and the artifact RUN/artifact. Multi-process: torchrun --standalone "
        "--nproc_per_node N -m alignnet train CONFIG.",
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


def cmd_train(args: argparse.Namespace) -> int:
    from alignnet.training.run import apply_overrides, load_config, train

    cfg, path = load_config(args.config)
    result = train(apply_overrides(cfg, args.set), path, data=args.data, out=args.out, device=args.device,
                   resume=args.resume, command=command_line(args))
    if result["metrics"] is None:  # not rank 0 of a torchrun job
        return 0
    for stage, s in result["stages"].items():
        wps = s.get("windows_per_s")
        print(f"{stage}: {s['epochs']} epochs, best validation loss {s.get('best_val_loss', float('nan')):.4f}, "
              f"{wps:.1f} windows/s" if wps is not None else f"{stage}: {s['epochs']} epochs (closed form)")
    m = result["metrics"]
    print(f"validation: S→B R² {m['val_s2b_r2']:.3f}, B→S r {m['val_b2s_r']:.3f}")
    print(f"artifact written to {result['artifact']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alignnet.training import report
    from alignnet.training.protocols import PROTOCOLS
    from alignnet.training.run import apply_overrides, evaluate, load_config

    cfg, _ = load_config(args.config)
    protocols = list(PROTOCOLS) if args.protocol == "all" else args.protocol.split(",")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results, figs = evaluate(apply_overrides(dict(cfg.get("evaluate", {})), args.set), args.data, args.out,
                             protocols, models, command=command_line(args))
    print(report.table(results))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'} and {len(figs)} figures")
    return 0
