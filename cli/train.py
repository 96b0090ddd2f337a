"""``alignnet train CONFIG`` and ``alignnet evaluate`` (the work is done by ``alignnet.training.run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from alignnet.cli._common import command_line
from alignnet.model.drift import ADVISE_RECALIBRATION
from alignnet.recordings.dataset import DEFAULT_DATASET

# the Table 1 rows, the served default (the causal AlignNet) and the strongest causal baseline (the LSTM)
DEFAULT_MODELS = "wiener,lstm,gru,mlp,resnet,resnet-unet,alignnet,alignnet-causal"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="pretrain and fine-tune AlignNet (or train a baseline) on a dataset; writes an artifact",
        description="Train per a YAML config (configs/quick.yaml: a few minutes on 2 CPU cores; configs/paper.yaml: "
        "paper scale, for a GPU). Stages: pretrain (AlignNet: both reconstructions + InfoNCE), then fine-tune "
        "(decode + simulate MSE, all parameters). Writes RUN/config.yaml, RUN/<stage>/metrics.jsonl and "
        "checkpoint.pt every epoch, and the artifact RUN/artifact. Multi-process: torchrun --standalone "
        "--nproc_per_node N -m alignnet train CONFIG.",
    )
    p.add_argument("config", nargs="?", default="quick",
                   help="YAML file, or the name of one in configs/ (quick, paper, chewie; default: %(default)s)")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: config's, else data/sim-default)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints (refused if "
                   "the settings differ from the run's recorded config.yaml)")
    p.add_argument("--force", action="store_true", help="with --resume: continue although settings changed (the "
                   "new ones are written to config.resumed.yaml)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: config's, else auto)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set finetune.epochs=3 (repeatable)")
    p.add_argument("--model", default=None, metavar="NAME|auto",
                   help="train this registered model instead of the config's (its settings from the config's "
                   "evaluate.models), or 'auto': train each of --candidates on the same split and budget and serve "
                   "the one with the best newest-bin R² on the training days' validation trials (RUN/artifact; the "
                   "table in RUN/auto.md)")
    p.add_argument("--candidates", default="alignnet-causal,lstm,wiener",
                   help="with --model auto: the servable models to choose from (default: %(default)s)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="the paper's protocols: Table 1 (results.json, results.md) and figures",
        description="Train and test AlignNet and the baselines under the single-day, cross-day and pretrain "
        "protocols; writes results.json, results.md (Table 1 layout) and PNG figures into --out.",
    )
    p.add_argument("--protocol", default="auto",
                   help="comma-separated: single-day, cross-day, pretrain, 'all', or 'auto' (single-day, plus "
                   "cross-day when the dataset has two days or more) (default: %(default)s)")
    _evaluation_inputs(p, Path("runs/evaluate"), "cross_test_day=5")
    p.add_argument("--seeds", type=_seeds, default=None, metavar="N|K,K,...",
                   help="train every model with N seeds (0 .. N-1) or the listed ones and report each score as mean "
                   "± sd; each seed's run goes to OUT/seed-K, and a finished one with the same settings is reused "
                   "(default: one run with the config's seed)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "search", help="the same small hyper-parameter search for every model, on validation trials only",
        description="Train every model with each learning rate in 0.001, 0.003, 0.01 (the Wiener filter: 2, 5, 10, "
        "20 bins of history) under one protocol's training days and the config's evaluation budget, score the "
        "newest-bin R² of the training days' validation trials, and write search.json, search.md and "
        "search.yaml (the config with each model's winner) into --out: run `alignnet evaluate --config "
        "OUT/search.yaml` next.",
    )
    p.add_argument("--protocol", default="cross-day", choices=["single-day", "cross-day", "pretrain"],
                   help="whose training days to search on (default: %(default)s)")
    _evaluation_inputs(p, Path("runs/search"), "train.epochs=3")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "ablate", help="what each part of AlignNet's training adds: variants x seeds at the newest bin",
        description="Evaluate one model under one protocol with parts of its training taken out (full; "
        "no-contrastive; no-cross-modal; no-alignment; no-pretraining; and skip-dropout, an addition), each over "
        "the same seeds, and the full and skip-dropout models under the probes (latent replaced by its mean; "
        "skips zeroed). Writes OUT/ablation.md (mean ± sd, each variant's difference from the full model paired "
        "by seed), ablation.json and fig_ablation.png; each "
        "variant's runs stay in OUT/<variant>/seed-K and are reused when rerun.",
    )
    p.add_argument("--protocol", default="cross-day", choices=["single-day", "cross-day", "pretrain"],
                   help="the protocol to score (default: %(default)s)")
    p.add_argument("--model", default="alignnet-causal", help="an AlignNet variant (default: %(default)s)")
    p.add_argument("--variants", default="full,no-contrastive,no-cross-modal,no-alignment,no-pretraining,skip-dropout",
                   help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], metavar="N|K,K,...",
                   help="N seeds (0 .. N-1) or the listed ones (default: 3)")
    _evaluation_inputs(p, Path("runs/ablate"), "train.epochs=3", models=False)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser(
        "calibrate", help="fit a new day's read-in (few-shot or zero-label) and write an artifact that serves it",
        description="Fit the read-in (and read-out) of one recording day alone, base weights and batch-norm "
        "statistics frozen, on the day's first --trials trials or --seconds seconds: with its behavior "
        "(few-shot), or without any (--zero-label: the day's spikes are reconstructed and their AlignNet latent is "
        "matched to the training days' moments). Writes an exported artifact that `alignnet serve --artifact` "
        "serves, and reports the R² of the rest of the day before and after where it has behavior.",
    )
    p.add_argument("base", type=Path, help="trained artifact folder (alignnet train ... RUN/artifact)")
    p.add_argument("data", type=Path, help="dataset holding the new day (alignnet data import)")
    p.add_argument("--day", default="-1", help="day name or index in DATA (default: the last day)")
    p.add_argument("--out", type=Path, required=True, help="calibrated artifact folder to write")
    p.add_argument("--trials", type=int, default=None, help="calibrate on the day's first N trials")
    p.add_argument("--seconds", type=float, default=None,
                   help="calibrate on the trials that start in the day's first S seconds (default: 60 unless "
                        "--trials)")
    p.add_argument("--zero-label", action="store_true", help="use no behavior at all")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fitting setting, e.g. --set epochs=30 --set lr=0.003")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "drift", help="the latent drift gauge of a model on every day of a dataset (and its R² there)",
        description="Embed each day's windows with the artifact's spike encoder and measure how far their latent "
        "distribution is from the training days' (Wasserstein-2 between Gaussian fits / the reference's total "
        f"variance; recalibration is advised above {ADVISE_RECALIBRATION:g}), next to the model's R² on the day. "
        "Writes a figure with "
        "--figure.",
    )
    p.add_argument("artifact", type=Path, help="trained AlignNet artifact (has a latent_reference)")
    p.add_argument("data", type=Path, help="dataset whose days to measure")
    p.add_argument("--figure", type=Path, default=None, help="write a PNG of the gauge and R² by day")
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    p.set_defaults(func=cmd_drift)


def _evaluation_inputs(p: argparse.ArgumentParser, out: Path, set_example: str, models: bool = True) -> None:
    """The options `evaluate`, `search` and `ablate` share: models, dataset, config, output folder, overrides."""
    if models:
        p.add_argument("--models", default=DEFAULT_MODELS,
                       help="comma-separated registered models (default: %(default)s)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATASET, help="dataset folder (default: %(default)s)")
    p.add_argument("--config", default="quick", help="YAML file or name in configs/ (its 'evaluate' section)")
    p.add_argument("--out", type=Path, default=out, help="output folder (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override an evaluate setting, e.g. --set {set_example}")


def _seeds(text: str) -> list[int]:
    """``--seeds 3`` (seeds 0, 1, 2) or ``--seeds 4,7,9``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seeds or a comma-separated list, got {text!r}") \
            from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"--seeds needs at least 1 seed, got {values[0]}")
        values = list(range(values[0]))
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be distinct non-negative integers, got {text!r}")
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from alignnet.training.run import apply_overrides, load_config, train

    cfg, path = load_config(args.config)
    cfg = apply_overrides(cfg, args.set)
    kw = {"data": args.data, "out": args.out, "device": args.device, "resume": args.resume, "force": args.force,
          "command": command_line(args)}
    if args.model == "auto":
        return _train_auto(cfg, path, args, kw)
    if args.model:
        from alignnet.training.auto import candidate_config

        cfg = candidate_config(cfg, args.model)
    result = train(cfg, path, **kw)
    if result["metrics"] is None:  # not rank 0 of a torchrun job
        return 0
    for stage, s in result["stages"].items():
        wps, loss = s.get("windows_per_s"), s.get("best_val_loss")
        if wps is None or loss is None or not np.isfinite(loss) or not np.isfinite(wps):
            print(f"{stage}: fitted in closed form")
        else:
            print(f"{stage}: {s['epochs']} epochs, best validation loss {loss:.4f}, {wps:.1f} windows/s")
    m = result["metrics"]
    for split, label in (("val", "validation"), ("test", "held-out test")):
        if m.get(f"{split}_s2b_r2") is None:
            print(f"{label}: S→B R² - (no {split} windows with varying behavior)")
        else:
            print(f"{label}: S→B R² {m[f'{split}_s2b_r2']:.3f} (newest bin {m[f'{split}_newest_r2']:.3f}), "
                  f"B→S r {m[f'{split}_b2s_r']:.3f}")
    for day, how in result["split"].items():
        print(f"  {day}: split {how}")
    print(f"artifact written to {result['artifact']}")
    return 0


def _train_auto(cfg, path: Path, args: argparse.Namespace, kw: dict) -> int:
    from alignnet.training.auto import train_auto

    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    result = train_auto(cfg, path, candidates=candidates, **kw)
    if result is None:  # not rank 0 of a torchrun job
        return 0
    print(result["table"])
    print(f"served: {result['winner']} (best validation newest-bin R²), artifact written to {result['artifact']}; "
          f"each candidate's run in {result['artifact'].parent / 'candidates'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alignnet.training import report
    from alignnet.training.protocols import PROTOCOLS
    from alignnet.training.run import apply_overrides, evaluate, load_config

    cfg, _ = load_config(args.config)
    protocols = list(PROTOCOLS) if args.protocol == "all" else args.protocol.split(",")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results, figs = evaluate(apply_overrides(dict(cfg.get("evaluate", {})), args.set), args.data, args.out,
                             protocols, models, command=command_line(args), seeds=args.seeds)
    print(report.table(results))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'} and {len(figs)} figures")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import yaml

    from alignnet.model.atomic import atomic_write_bytes, atomic_write_json
    from alignnet.recordings.dataset import Dataset
    from alignnet.training import search
    from alignnet.training.protocols import EvalConfig
    from alignnet.training.run import apply_overrides, load_config

    cfg, _ = load_config(args.config)
    cfg = {**cfg, "evaluate": apply_overrides(dict(cfg.get("evaluate", {})), args.set)}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = search.search(Dataset(args.data), EvalConfig.from_dict(cfg["evaluate"]), models, args.protocol,
                           progress=lambda r: print(f"{r['model']} {r['variant']}: validation newest-bin R² "
                                                    f"{r['val_newest_bin_r2']:.3f} ({r['train_s']:.0f} s)"))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "search.json", result)
    md = search.markdown(result, command_line(args))
    atomic_write_bytes(args.out / "search.md", md.encode())
    atomic_write_bytes(args.out / "search.yaml", yaml.safe_dump(search.best_config(cfg, result)).encode())
    print(md)
    print(f"wrote {args.out / 'search.json'}, search.md and search.yaml (evaluate with --config "
          f"{args.out / 'search.yaml'})")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from alignnet.training.ablate import ablate
    from alignnet.training.run import apply_overrides, load_config

    cfg, _ = load_config(args.config)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    ablate(apply_overrides(dict(cfg.get("evaluate", {})), args.set), args.data, args.out, args.protocol,
           args.model, args.seeds, variants, command=command_line(args))
    print((args.out / "ablation.md").read_text())
    print(f"wrote {args.out / 'ablation.md'}, ablation.json and fig_ablation.png")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from alignnet.training.calibrate import calibrate
    from alignnet.training.run import apply_overrides

    if args.trials is not None and args.seconds is not None:
        raise ValueError("give --trials or --seconds, not both")
    seconds = args.seconds if args.seconds is not None or args.trials is not None else 60.0
    report = calibrate(args.base, args.data, args.day, args.out, trials=args.trials, seconds=seconds,
                       zero_label=args.zero_label, train=apply_overrides({}, args.set))
    print(f"{report['mode']} calibration of day {report['day']} on {report['trials']} trials "
          f"({report['seconds']:.0f} s, {report['windows']} windows) in {report['fit_s']:.0f} s")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"R² on the rest of the day: before {fmt(report['rest_r2_before'])}, after {fmt(report['rest_r2_after'])}")
    print(f"calibrated artifact written to {args.out} (serve it: alignnet serve --artifact {args.out})")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from alignnet.model.artifacts import read_config
    from alignnet.model.atomic import atomic_write_json
    from alignnet.training.drift import drift_by_day, figure

    rows = drift_by_day(args.artifact, args.data)
    print("| day | drift gauge | recalibrate? | R² (no calibration) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['day']} | {r['gauge']:.3f} | {'yes' if r['advise_recalibration'] else 'no'} | {r['r2']:.3f} |")
    if args.json:
        atomic_write_json(args.json, rows)
    if args.figure:
        trained = read_config(args.artifact).get("provenance", {}).get("days")
        print(f"wrote {figure(rows, args.figure, trained)}")
    return 0
