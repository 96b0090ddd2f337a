"""``alignnet ablate``: what each part of AlignNet's training adds, at the newest bin, over several seeds.

Each variant is the same evaluation (one protocol, one model, the config's budget) with one part of the training
taken out; every variant trains with the same seeds, so a variant's difference from the full model is paired by
seed. The full model (and the skip-dropout variant) is also scored under the probes (training/probes.py): its
spike latent replaced by its mean over the training windows, and its skip features zeroed; a probe's difference is
taken from its own variant. Nothing is selected here: the config's settings were
chosen on validation data before, and every number is a test score.

Writes OUT/<variant>/seed-K/ (each an ``alignnet evaluate`` run, reused when finished with the same request),
OUT/ablation.json, OUT/ablation.md and OUT/fig_ablation.png.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from alignnet.recordings.dataset import atomic_write_bytes, atomic_write_json
from alignnet.training.probes import PROBES

# name -> (what it is, evaluate-config overrides). 'full' is pretraining with both the contrastive term and the
# cross-modal paths (both weights 1, whatever the config gives them), then fine-tuning
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("pretraining (reconstructions + InfoNCE + cross-modal paths), then fine-tuning",
             {"pretrain.contrastive_weight": 1.0, "pretrain.cross_modal_weight": 1.0}),
    "no-contrastive": ("as full, InfoNCE weight 0", {"pretrain.contrastive_weight": 0.0,
                                                     "pretrain.cross_modal_weight": 1.0}),
    "no-cross-modal": ("as full, cross-modal weight 0 (the paper's pretraining)",
                       {"pretrain.contrastive_weight": 1.0, "pretrain.cross_modal_weight": 0.0}),
    "no-alignment": ("as full, both weights 0 (pretraining = the two autoencoders alone)",
                     {"pretrain.contrastive_weight": 0.0, "pretrain.cross_modal_weight": 0.0}),
    "no-pretraining": ("fine-tuning alone", {"pretrain.epochs": 0}),
    # an addition, not a removal: the served decode must sometimes do without its skips, so the latent carries it
    "skip-dropout": ("as full, each spike skip level dropped per window with probability 0.5 in training",
                     {"pretrain.contrastive_weight": 1.0, "pretrain.cross_modal_weight": 1.0,
                      "models.{model}.skip_dropout": 0.5}),
}
PROBED = ("full", "skip-dropout")  # the variants also scored under the probes
PROBE_NAMES = {"latent-mean": "spike latent replaced by its training mean at inference",
               "skips-zero": "skip features zeroed at inference (the latent alone)"}


def variant_config(cfg: dict[str, Any], variant: str, model: str = "alignnet-causal") -> dict[str, Any]:
    """The evaluate config of one variant of ``model`` (the PROBED variants also run the probes)."""
    from alignnet.training.run import apply_overrides

    if variant not in VARIANTS:
        raise ValueError(f"unknown ablation variant {variant!r}; choose from {', '.join(VARIANTS)}")
    out = apply_overrides(copy.deepcopy(cfg), [f"{k.format(model=model)}={v}" for k, v in VARIANTS[variant][1].items()])
    if variant in PROBED:
        out["probes"] = list(PROBES)
    return out


def ablate(cfg: dict[str, Any], data: Path, out: Path, protocol: str, model: str, seeds: list[int],
           variants: list[str], command: str = "") -> dict[str, Any]:
    """Run (or reuse) every variant x seed and write the table; returns ablation.json's content."""
    from alignnet.model.registry import model_class
    from alignnet.training.run import evaluate

    if not hasattr(model_class(model), "pretrain_outputs"):
        raise ValueError(f"{model} has no pretraining to ablate: give an AlignNet variant (alignnet-causal, alignnet)")
    if "full" not in variants:
        raise ValueError("the ablation compares every variant with 'full': include it")
    configs = {v: variant_config(cfg, v, model) for v in variants}  # every unknown name refused before any training
    scores: dict[str, dict[str, list[float]]] = {}
    for i, v in enumerate(variants):
        print(f"[{i + 1}/{len(variants)}] {v}: {VARIANTS[v][0]} (seeds {', '.join(map(str, seeds))})", flush=True)
        evaluate(configs[v], data, out / v, [protocol], [model], command=f"{command} [{v}]", seeds=seeds)
        rows = [json.loads((out / v / f"seed-{s}" / "results.json").read_text())["protocols"][protocol][0]
                for s in seeds]
        scores[v] = {"newest": [r["online_r2"] for r in rows], "window": [r["s2b_r2"] for r in rows],
                     "train_s": [r["train_s"] for r in rows]}
        for probe in PROBES if v in PROBED else ():
            got = [r["details"].get("probes", {}).get(probe) for r in rows]
            if all(g is not None for g in got):
                scores[f"{v} / {probe}"] = {"newest": got, "window": [None] * len(got), "train_s": [0.0] * len(got)}
    result = {"protocol": protocol, "model": model, "seeds": seeds, "data": str(data), "command": command,
              "rows": summarise(scores)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ablation.json", result)
    figure(result, out / "fig_ablation.png")
    atomic_write_bytes(out / "ablation.md", markdown(result).encode())
    return result


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarise(scores: dict[str, dict[str, list]]) -> list[dict[str, Any]]:
    """One row per variant and probe ('VARIANT / PROBE'): newest-bin R² mean ± sd over seeds and its difference,
    paired by seed, from the full model (a probe: from its own variant)."""
    rows = []
    for name, s in scores.items():
        variant, _, probe = name.partition(" / ")
        against = variant if probe else "full"
        newest = np.asarray(s["newest"], np.float64)
        mean, sd = _mean_sd(newest)
        d_mean, d_sd = _mean_sd(newest - np.asarray(scores[against]["newest"], np.float64))
        window = None if s["window"][0] is None else _mean_sd(s["window"])
        rows.append({"variant": name, "what": PROBE_NAMES[probe] if probe else VARIANTS[name][0], "against": against,
                     "newest_r2": mean, "newest_sd": sd, "delta": d_mean, "delta_sd": d_sd,
                     "window_r2": None if window is None else window[0], "train_s": float(np.mean(s["train_s"])),
                     "values": [float(x) for x in newest]})
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows = {r["variant"]: r for r in result["rows"]}
    n = len(result["seeds"])
    lines = [f"# Ablation: {result['model']}, {result['protocol']}, newest bin, {n} seeds ({result['data']})", "",
             f"Command: `{result['command']}`", "",
             "| variant | what | newest-bin R² (mean ± sd) | difference (paired by seed) | window R² | train s |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        window = "—" if r["window_r2"] is None else f"{r['window_r2']:.3f}"
        delta = "—" if r["variant"] == "full" else f"{r['delta']:+.3f} ± {r['delta_sd']:.3f} vs {r['against']}"
        lines.append(f"| {r['variant']} | {r['what']} | {r['newest_r2']:.3f} ± {r['newest_sd']:.3f} | {delta} | "
                     f"{window} | {r['train_s']:.0f} |")
    lines += ["", "Per seed (newest bin): " + "; ".join(
        f"{r['variant']} " + ", ".join(f"{v:.3f}" for v in r["values"]) for r in result["rows"]), ""]
    said = []
    if "no-alignment" in rows:
        said.append(f"- The alignment (InfoNCE + cross-modal paths) adds {-rows['no-alignment']['delta']:+.3f} "
                    f"± {rows['no-alignment']['delta_sd']:.3f} newest-bin R² (full − no-alignment).")
    for v in PROBED:
        if (probe := rows.get(f"{v} / latent-mean")) is not None:
            said.append(f"- {v}: replacing the latent by its mean costs {-probe['delta']:.3f} "
                        f"± {probe['delta_sd']:.3f}: "
                        + ("the decode reads the aligned latent." if -probe["delta"] >= 0.1 else
                           "below 0.1, so most of the decode does not pass through the aligned latent."))
    return "\n".join(lines + said) + "\n\n![ablation](fig_ablation.png)\n"


def figure(result: dict[str, Any], path: Path) -> Path:
    """Newest-bin R² per variant (bars: mean, error bars: sd over seeds, dots: each seed)."""
    from alignnet.training.report import plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.0))
    x = np.arange(len(rows))
    ax.bar(x, [r["newest_r2"] for r in rows], yerr=[r["newest_sd"] for r in rows], capsize=4,
           color=["C0" if r["variant"] == "full" else "C7" for r in rows])
    for i, r in enumerate(rows):
        ax.plot([i] * len(r["values"]), r["values"], "k.", ms=4)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("newest-bin R² (test)")
    ax.set_title(f"{result['model']}, {result['protocol']}: {len(result['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
