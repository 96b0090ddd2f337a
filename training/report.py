"""results.md in the layout of the paper's Table 1, and the figures (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NAMES = {"wiener": "Wiener filter", "gru": "GRU", "mlp": "MLP", "resnet": "ResNet", "resnet-unet": "ResNet+UNet",
         "alignnet": "AlignNet", "alignnet-causal": "AlignNet (causal)", "alignnet-paper": "AlignNet (paper size)",
         "ridge": "Ridge (current bin)", "lstm": "LSTM", "cebra": "CEBRA-Behavior + kNN"}
PAPER = {"wiener": (0.354, 0.442, 0.08, 0.409), "mlp": (0.723, 0.492, 0.366, 0.349),
         "alignnet": (0.880, 0.539, 0.581, 0.440)}


def _name(m: str) -> str:
    return NAMES.get(m, m)


def _fmt(v: Any, sd: float | None = None) -> str:
    """A score, with ``± sd`` over seeds where there is one."""
    if v is None:
        return "–"
    return f"{v:.3f}" if sd is None else f"{v:.3f} ± {sd:.3f}"


def _score(row: dict[str, Any], key: str) -> str:
    return _fmt(row.get(key), (row.get("sd") or {}).get(key))


def _secs(row: dict[str, Any] | None) -> str:
    return "–" if row is None else f"{row['train_s']:.0f}"


def _r2s(row: dict[str, Any] | None) -> str:
    """Window R² / newest-bin R²."""
    return "–" if row is None else f"{_score(row, 's2b_r2')} / {_score(row, 'online_r2')}"


def _b2s(row: dict[str, Any] | None) -> str:
    """B->S r against counts / against the true rates (simulated data) / of the PSTHs."""
    if row is None:
        return "–"
    return f"{_score(row, 'b2s_r')} / {_score(row, 'rate_r')} / {_score(row, 'psth_r')}"


def ceilings(results: dict[str, Any]) -> str:
    """One line per protocol: what the recorded counts themselves score (the reference of the B->S columns)."""
    lines = []
    for p, c in (results.get("ceilings") or {}).items():
        if not c:
            continue
        if "rate_r" in c:
            lines.append(f"- {p}: the recorded counts themselves score r {c['rate_r']:.3f} against the true rates "
                         f"and PSTH r {c['psth_r']:.3f} (their trial noise; a model's noiseless prediction can score "
                         "above the counts' PSTH r).")
        else:
            lines.append(f"- {p}: split-half PSTH r of the recorded counts (odd vs even test trials) "
                         f"{c['psth_r_split_half']:.3f} (the reliability of the PSTH reference).")
    return "\n".join(lines)


def _causal(rows: list[dict[str, Any] | None]) -> str:
    row = next((r for r in rows if r is not None), None)
    return "–" if row is None or "causal" not in row else ("yes" if row["causal"] else "no")


def table(results: dict[str, Any]) -> str:
    p = results["protocols"]
    by = {k: {r["model"]: r for r in rows} for k, rows in p.items()}
    models = list(dict.fromkeys(r["model"] for rows in p.values() for r in rows))
    lines = ["| Model | causal | single-day S→B R² (window / newest bin) | single-day B→S r (counts / true rate / "
             "PSTH) | cross-day S→B R² (window / newest bin) | cross-day B→S r (counts / true rate / PSTH) | "
             "train s (single / cross) |",
             "|---|---|---|---|---|---|---|"]
    for m in models:
        sd, cd = by.get("single-day", {}).get(m), by.get("cross-day", {}).get(m)
        lines.append(f"| {_name(m)} | {_causal([sd, cd])} | {_r2s(sd)} | {_b2s(sd)} | "
                     f"{_r2s(cd)} | {_b2s(cd)} | {_secs(sd)} / {_secs(cd)} |")
    out = ["\n".join(lines)]
    if "pretrain" in by:
        n_days = len(results.get("pretrain_days", [])) or "all earlier"
        rows = ["| Model | causal | S→B R² (window / newest bin) | B→S r (counts / true rate / PSTH) | train s |",
                "|---|---|---|---|---|"]
        for m, r in by["pretrain"].items():
            label = f"{_name(m)} (pretrained + fine-tuned)" if m.startswith("alignnet") else _name(m)
            rows.append(f"| {label} | {_causal([r])} | {_r2s(r)} | {_b2s(r)} | {r['train_s']:.0f} |")
        test_day = results.get("pretrain_test_day", "?")
        out.append(f"Many days ({n_days} labelled days before test day {test_day}, trained on none after it):\n\n"
                   + "\n".join(rows))
    return "\n\n".join(out)


def markdown(results: dict[str, Any], command: str) -> str:
    c = results["config"]
    seeds = results.get("seeds")
    spread = ([f"Seeds {', '.join(map(str, seeds))}: each score is the mean over seeds ± its standard deviation "
               "(ddof 1); the data, splits and test day are the same for every seed, the training seed (weights, "
               "batch order) differs.", ""] if seeds else [f"Seed {c['seed']} (one run: no spread).", ""])
    head = [
        "# Results", "",
        f"Command: `{command}`", "",
        *spread,
        f"Dataset `{results['dataset']}` (subject {results['subject']}); windows of {results['window_bins']} bins, "
        f"hop {results['hop_bins']}; behavior `{results['behavior']}`; units matched across days: "
        f"{results['units_matched']}.",
        f"Single-day: day {c['single_day']}, trials in order, last {c['test_fraction']:.0%} test. Cross-day: train on "
        f"days {c['cross_train_days']}, test on day {c['cross_test_day']}"
        + (f" (first {c['calib_fraction']:.0%} of its trials labelled for the read-in, tested on the rest)."
           if c["calib_fraction"] else " (no labels from the test day)."),
        "S→B: R² of decoded behavior, averaged over axes. *Window*: every bin of non-overlapping held-out windows "
        "(Table 1 as in the paper). *Newest bin*: what a live user gets: the test range streamed bin by bin from "
        "zero history, each bin decoded as the newest of its window (hop 1), exactly as `alignnet serve --lsl` "
        "decodes a replay of it. *Causal*: the decoded value of a bin depends on no later bin (checked for every "
        "model in tests/test_models.py). B→S: Pearson r between simulated rates and true counts (per channel over "
        "held-out bins, averaged over channels that vary); on simulated data also against the simulator's true "
        "rates; PSTH r: trial-averaged per target, 200 ms before to 500 ms after movement onset, per channel, "
        "against the true rates' PSTH (simulated) or the counts' PSTH (real).", "",
        table(results), "", ceilings(results), "",
        "Paper (their macaque data), for reference: AlignNet 0.880 / 0.539 / 0.581 / 0.440; Wiener 0.354 / 0.442 / "
        "0.08 / 0.409; MLP 0.723 / 0.492 / 0.366 / 0.349.", "",
    ]
    return "\n".join(head)


def figures(results: dict[str, Any], predictions: dict[str, dict[str, np.ndarray]], out: Path,
            bin_s: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for tag in ("single-day", "cross-day", "pretrain"):
        truth = predictions.get(f"{tag}/truth")
        if truth is None:
            continue
        models = [k.split("/")[1] for k in predictions if k.startswith(tag + "/") and not k.endswith("/truth")]
        paths.append(_trajectories(truth, predictions, tag, models, out / f"fig5_trajectories_{tag}.png", bin_s))
        ours = next((m for m in models if "alignnet" in m), None)  # alignnet or a variant of it
        if ours is not None:
            paths.append(_rasters(truth, predictions[f"{tag}/{ours}"], tag, out / f"fig6_rasters_{tag}.png", bin_s))
            paths.append(_rate_groups(truth, predictions, tag, models, out / f"fig7_rate_groups_{tag}.png", bin_s))
            if "psth" in truth and "psth" in predictions[f"{tag}/{ours}"]:
                paths.append(_psths(truth["psth"], predictions[f"{tag}/{ours}"]["psth"], tag, _name(ours),
                                    out / f"fig8_psth_{tag}.png", bin_s))
    paths.append(window_vs_newest(results, out / "fig_window_vs_newest_bin.png"))
    by_day = {r["model"]: r["details"].get("r2_by_day") for r in results["protocols"].get("cross-day", [])}
    if any(by_day.values()):
        paths.append(_days_apart(by_day, results["config"]["cross_train_days"], out / "fig_r2_vs_days_apart.png"))
    return paths


def window_vs_newest(results, path) -> Path:
    """S→B R² per model and protocol: whole windows (Table 1) next to the newest bin (served); hatched = causal;
    error bars: the sd over seeds (results of several seeds)."""
    protos = [p for p, rows in results["protocols"].items() if rows]
    fig, axes = plt.subplots(1, len(protos), figsize=(max(8.0, 4.8 * len(protos)), 4.2), squeeze=False)
    for ax, proto in zip(axes[0], protos):
        rows = results["protocols"][proto]
        x = np.arange(len(rows))
        win = [r["s2b_r2"] for r in rows]
        new = [r.get("online_r2") if r.get("online_r2") is not None else np.nan for r in rows]
        err = [[(r.get("sd") or {}).get(k, 0.0) for r in rows] for k in ("s2b_r2", "online_r2")]
        ax.bar(x - 0.2, win, 0.4, yerr=err[0] if any(err[0]) else None, label="window", color="#9bb7d4")
        bars = ax.bar(x + 0.2, new, 0.4, yerr=err[1] if any(err[1]) else None, label="newest bin (served)",
                      color="#d9822b")
        for b, r in zip(bars, rows):
            if r.get("causal"):
                b.set_hatch("//")
        ax.set_xticks(x, [_name(r["model"]) for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(min(0.0, np.nanmin(win + new) - 0.05), 1.0)
        ax.set_title(proto)
        ax.axhline(0, color="black", lw=0.6)
    axes[0, 0].set_ylabel("S→B R²")
    axes[0, 0].legend(fontsize=7, loc="upper left", ncol=2, title="hatched: causal", title_fontsize=7)
    fig.suptitle("S→B R²: Table 1's windows vs the newest bin a live user gets", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _trajectories(truth, preds, tag, models, path, bin_s) -> Path:
    beh = truth["behavior"]
    k = min(3, len(beh))
    idx = np.linspace(0, len(beh) - 1, k).astype(int)
    fig, axes = plt.subplots(2, k, figsize=(4.2 * k, 6), squeeze=False)
    t = np.arange(beh.shape[2]) * bin_s
    for j, w in enumerate(idx):
        for a in range(2):
            ax = axes[a, j]
            ax.plot(t, beh[w, a], color="black", lw=2.2, label="true")
            for m in models:
                ax.plot(t, preds[f"{tag}/{m}"]["behavior"][w, a], lw=1.2, label=_name(m),
                        alpha=1.0 if m == "alignnet" else 0.7)
            ax.set_title(f"window {w}, {'xy'[a] if a < 2 else a}")
            ax.set_xlabel("time in window (s)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Decoded vs true behavior ({tag}, held-out windows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rasters(truth, pred, tag, path, bin_s) -> Path:
    w = int(np.argmax(truth["counts"].sum(axis=(1, 2))))
    true_c, sim_c = truth["counts"][w], pred["counts"][w]
    vmax = max(float(np.percentile(true_c, 99)), 1.0)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    extent = (0, true_c.shape[1] * bin_s, true_c.shape[0], 0)
    axes[0].imshow(true_c, aspect="auto", cmap="magma", vmin=0, vmax=vmax, extent=extent, interpolation="nearest")
    axes[0].set_title("true spike counts")
    im = axes[1].imshow(sim_c, aspect="auto", cmap="magma", vmin=0, vmax=vmax, extent=extent, interpolation="nearest")
    axes[1].set_title("AlignNet simulated rate (expected counts per bin)")
    for ax in axes:
        ax.set_ylabel("channel")
    axes[1].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="spikes / bin")
    fig.suptitle(f"True vs simulated raster ({tag})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rate_groups(truth, preds, tag, models, path, bin_s) -> Path:
    c = truth["counts"].shape[1]
    groups = [(g, min(g + 8, c)) for g in range(0, c, 8)]
    true_rate = truth["counts"].mean(axis=(0, 2)) / bin_s
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / (1 + len(models))
    x = np.arange(len(groups))
    ax.bar(x, [true_rate[a:b].mean() for a, b in groups], width, color="black", label="true")
    models = [m for m in models if preds[f"{tag}/{m}"]["counts"] is not None]  # decode-only yardsticks have none
    for i, m in enumerate(models):
        r = preds[f"{tag}/{m}"]["counts"].mean(axis=(0, 2)) / bin_s
        ax.bar(x + (i + 1) * width, [r[a:b].mean() for a, b in groups], width, label=_name(m))
    ax.set_xticks(x + 0.4 - width / 2, [f"{a + 1}–{b}" for a, b in groups], rotation=45 if len(groups) > 12 else 0)
    ax.set_xlabel("channel group")
    ax.set_ylabel("mean firing rate (Hz)")
    ax.set_title(f"Firing rate per channel group, true vs simulated ({tag})")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _days_apart(by_day, train_days, path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    last = max(train_days)
    for m, scores in by_day.items():
        if not scores:
            continue
        days = sorted(int(d) for d in scores)
        ax.plot([d - last for d in days], [scores[str(d)] for d in days], marker="o", label=_name(m))
    ax.axvspan(min(train_days) - last - 0.5, 0.5, color="grey", alpha=0.15, label="training days")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("days after the last training day")
    ax.set_ylabel("S→B R²")
    ax.set_title("Decoding accuracy against days apart (trained on two days)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _psths(ref, pred, tag, model, path, bin_s, n_channels: int = 6) -> Path:
    """True vs simulated PSTHs (G, T, C) of the most modulated channels, one colour per target."""
    from alignnet.recordings.psth import BEFORE_S

    depth = np.nan_to_num(np.nanmax(ref, axis=(0, 1)) - np.nanmin(ref, axis=(0, 1)), nan=-1.0)
    channels = np.argsort(depth)[::-1][:n_channels]
    t = (np.arange(ref.shape[1]) * bin_s - BEFORE_S) * 1000
    fig, axes = plt.subplots(2, len(channels), figsize=(2.6 * len(channels), 5), sharex=True, squeeze=False)
    colors = plt.cm.hsv(np.linspace(0, 1, ref.shape[0], endpoint=False))
    for j, ch in enumerate(channels):
        for g in range(ref.shape[0]):
            axes[0, j].plot(t, ref[g, :, ch] / bin_s, color=colors[g], lw=1)
            axes[1, j].plot(t, pred[g, :, ch] / bin_s, color=colors[g], lw=1)
        axes[0, j].set_title(f"channel {ch + 1}", fontsize=8)
        lo = min(np.nanmin(ref[..., ch]), np.nanmin(pred[..., ch])) / bin_s
        hi = max(np.nanmax(ref[..., ch]), np.nanmax(pred[..., ch])) / bin_s
        for i in range(2):
            axes[i, j].set_ylim(lo * 0.9, hi * 1.1)
            axes[i, j].axvline(0, color="grey", lw=0.5)
        axes[1, j].set_xlabel("ms from movement onset", fontsize=8)
    axes[0, 0].set_ylabel("reference (Hz)")
    axes[1, 0].set_ylabel(f"{model} (Hz)")
    fig.suptitle(f"PSTH per target (one colour each), reference vs simulated ({tag})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
