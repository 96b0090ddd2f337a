"""The drift gauge of a model over the days of a dataset (``alignnet drift``): is a day far from training?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignnet.model.artifacts import load_artifact
from alignnet.model.base import run_batched
from alignnet.model.drift import ADVISE_RECALIBRATION, drift_gauge
from alignnet.model.metrics import r2
from alignnet.recordings.dataset import DataError, Dataset
from alignnet.training.windows import windows_in_trials


@torch.no_grad()
def drift_by_day(artifact: Path, data: Path, days: list[int] | None = None) -> list[dict[str, Any]]:
    """Per day: the drift gauge of its windows (non-overlapping, whole day) and the model's window R² there."""
    model, contract, config = load_artifact(artifact)
    reference = config.get("latent_reference")
    if not reference or not hasattr(model, "spike_embedding"):
        raise DataError(f"{artifact}: no latent_reference (an AlignNet artifact trained by this version has one)")
    ds = Dataset(data)
    served = config.get("served_day")
    rows = []
    for d in days if days is not None else range(len(ds)):
        day = ds.day(d)
        if day.n_channels != contract.n_channels:
            raise DataError(f"{data}: day {day.name} has {day.n_channels} channels; the served contract reads "
                            f"{contract.n_channels} (calibrate the day first)")
        w = windows_in_trials(day, None, contract.window_bins, contract.window_bins, contract.behavior_kind)
        x = contract.preprocess_spikes(w.counts)
        z = run_batched(model.spike_embedding, model, x, served)
        dec = run_batched(model.decode, model, x, served)
        gauge = drift_gauge(reference, z)
        rows.append({"day": day.name, "gauge": gauge, "advise_recalibration": gauge > ADVISE_RECALIBRATION,
                     "r2": r2(w.behavior, contract.postprocess_behavior(dec), feature_axis=1), "windows": len(w)})
    return rows


def figure(rows: list[dict[str, Any]], path: Path, trained: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x, [r["gauge"] for r in rows], color=["#9bb7d4" if trained and r["day"] in trained else "#d9822b"
                                                   for r in rows])
    ax.axhline(ADVISE_RECALIBRATION, color="black", ls="--", lw=0.8, label="recalibration advised above")
    ax.set_ylabel("drift gauge (W2 / reference variance)")
    ax.set_xticks(x, [r["day"] for r in rows], rotation=30, ha="right")
    ax2 = ax.twinx()
    ax2.plot(x, [r["r2"] for r in rows], "k-o", label="S→B R² (no calibration)")
    ax2.set_ylabel("S→B R²")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    ax.set_title("Latent drift gauge by day (blue: training days) and the uncalibrated model's R²")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
