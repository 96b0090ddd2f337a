"""``alignnet models`` and ``alignnet export``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every registered model with its parameter count",
                       description="List registered models (AlignNet, baselines, tiny test-* variants).")
    p.add_argument("--all", action="store_true", help="include the tiny test-* variants")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="write decode/simulate ONNX and TorchScript graphs into an artifact",
                       description="Export RUN/artifact (or an artifact folder) with a dynamic batch dimension; "
                       "checks parity with eager PyTorch (max |diff| <= 1e-4, identical spikes inside the SNN) and "
                       "writes nothing if it fails.")
    p.add_argument("run", type=Path, help="artifact folder, or a run folder holding artifact/")
    p.add_argument("--formats", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset whose last-day windows (last 20 %% of trials) serve as parity inputs "
                        "(default: seeded random windows)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("seal", help="record an artifact's config.json hash (and sign it with ALIGNNET_ARTIFACT_KEY)",
                       description="Check every file of the artifact against the hashes in its config.json, then "
                       "record config.json's own SHA-256 in it, signed with an HMAC-SHA256 when the environment "
                       "holds ALIGNNET_ARTIFACT_KEY. `alignnet serve` refuses artifacts without this record; a "
                       "service started with a key refuses artifacts not signed with it. Artifacts written by this "
                       "alignnet are sealed already: this is for older ones, or to sign one.")
    p.add_argument("run", type=Path, help="artifact folder, or a run folder holding artifact/")
    p.set_defaults(func=cmd_seal)


def artifact_dir(path: Path) -> Path:
    """An artifact folder, or a run folder holding artifact/."""
    return path / "artifact" if (path / "artifact" / "config.json").is_file() else path


def cmd_models(args: argparse.Namespace) -> int:
    from alignnet.bench.engines import model_kind
    from alignnet.model import create_model, list_models
    from alignnet.model.base import n_params

    names = [n for n in list_models() if args.all or not n.startswith("test-")]
    print(f"{'model':<20} {'parameters':>12}  {'channels x bins':<16} kind")
    for name in names:
        m = create_model(name)
        c = m.config
        print(f"{name:<20} {n_params(m):>12,}  {f'{c.n_channels} x {c.window_bins}':<16} {model_kind(m)}")
    return 0


def cmd_seal(args: argparse.Namespace) -> int:
    from alignnet.model.artifacts import seal_artifact

    folder = artifact_dir(args.run)
    record = seal_artifact(folder)["integrity"]
    print(f"sealed {folder}: config.json sha256 {record['sha256'][:16]}…"
          + (" (signed)" if "hmac_sha256" in record else " (not signed: ALIGNNET_ARTIFACT_KEY is not set)"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from alignnet.model.artifacts import read_config
    from alignnet.model.contract import DataContract
    from alignnet.training.export import export_artifact
    from alignnet.training.windows import held_out_windows

    folder = artifact_dir(args.run)
    contract = DataContract.from_dict(read_config(folder)["contract"])
    spikes = behavior = None
    if args.data:
        counts, beh = held_out_windows(args.data, contract)
        spikes, behavior = contract.preprocess_spikes(counts), contract.preprocess_behavior(beh)
    report = export_artifact(folder, tuple(f.strip() for f in args.formats.split(",")), spikes=spikes,
                             behavior=behavior)
    for name, r in report.items():
        if "reason" in r:  # a file export left out
            print(f"{name}: NOT WRITTEN ({r['reason']}: the newest bin reaches the first of the window's "
                  f"{r['window_bins']} bins; the live path decodes windows)")
            continue
        if "receptive_field" in r:  # the receptive-field graph
            left_out = "" if r.get("written", True) else "NOT WRITTEN (the live path decodes windows): "
            print(f"{name}: {left_out}the newest {r['hops']} bins from the last {r['bins']} bins (receptive field "
                  f"{r['receptive_field']}); max |diff| to the full window {r['max_abs_diff_newest_bins']:.2e} on "
                  f"{r['windows']} windows ({r.get('windows_over_atol', 0)} past the tolerance)")
            continue
        if "bins_over_atol" in r:  # the incremental decoder
            print(f"{name}: {'' if r['written'] else 'NOT WRITTEN (the live path decodes windows): '}incremental "
                  f"decoding of a {r['bins']}-bin stream; max |diff| to each window's newest bin "
                  f"{r['max_abs_diff']:.2e}, median {r['median_abs_diff']:.2e} ({r['bins_over_atol']} bins past the "
                  "tolerance)")
            continue
        spikes_txt = ""
        if "spike_mismatches" in r:
            spikes_txt = (f", {r['spike_mismatches']} of {r['spikes_compared']:,} SNN spikes flipped at threshold by "
                          f"float rounding ({r['windows_with_flips']} windows; outputs compared on the others)"
                          if r["spike_mismatches"] else f", spikes identical ({r['spikes_compared']:,} compared)")
        print(f"{name}: max |diff| {r['max_abs_diff']:.2e} on {r['windows']} windows{spikes_txt}")
    print(f"exported into {folder}")
    return 0
