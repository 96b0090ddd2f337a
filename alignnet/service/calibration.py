"""Live calibration of a new day (``POST /calibrate``): fit its read-in in a worker thread while the current model
keeps serving, then swap the calibrated artifact in; on failure the old model stays and the error is reported.

Calibrated artifacts are written to ``<calibration_dir>/<day>`` (by default next to the base artifact, in
``<base>-calibrated/``) and ``current.json`` there names the last one, so a restarted service serves it again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignnet.model.artifacts import model_contract
from alignnet.model.atomic import atomic_write_json

log = logging.getLogger(__name__)

DAY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CURRENT = "current.json"


def calibration_dir(base: Path, configured: Path | None) -> Path:
    """Where calibrated artifacts of ``base`` go: the configured folder, else ``<base>-calibrated`` next to it — except
    for the default models inside the installed package, whose calibrations go to ~/.cache/alignnet (a package
    folder may be read-only, and is not a place for a lab's data)."""
    from alignnet.service.settings import DEFAULT_MODELS

    base = Path(base).resolve()
    if configured:
        return Path(configured)
    if base.parent == DEFAULT_MODELS.resolve():
        return Path.home() / ".cache" / "alignnet" / f"{base.name}-calibrated"
    return base.parent / f"{base.name}-calibrated"


def min_calibration_bins(config: dict[str, Any]) -> int:
    """The fewest contiguous bins a calibration block must hold for ``config``'s model."""
    from alignnet.training.calibrate import MIN_WINDOWS

    window = model_contract(config).window_bins
    return window + (MIN_WINDOWS - 1) * max(1, window // 10)


def check_block(config: dict[str, Any], day: str, counts: np.ndarray, behavior: np.ndarray | None) -> None:
    """Refuse calibration input that cannot fit a read-in, naming the problem (ValueError -> 422)."""
    from alignnet.training.calibrate import zero_label_problem

    mc = model_contract(config)
    if behavior is None and (problem := zero_label_problem(config)):
        raise ValueError(problem)
    if not DAY.match(day or ""):
        raise ValueError("day must be 1-64 letters, digits, '-' or '_'")
    if counts.ndim != 2:
        raise ValueError(f"spikes must be channels x bins, got shape {counts.shape}")
    if mc.units_matched and counts.shape[0] != mc.n_channels:
        raise ValueError(f"spikes have {counts.shape[0]} channels; the model reads {mc.n_channels} matched channels")
    need = min_calibration_bins(config)
    if counts.shape[1] < need:
        raise ValueError(f"{counts.shape[1]} bins are too few to calibrate: send at least {need} "
                         f"({need * mc.bin_s:.1f} s)")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("spike counts must be finite and non-negative")
    if behavior is not None:
        if behavior.shape != (mc.behavior_dims, counts.shape[1]):
            raise ValueError(f"behavior must be {mc.behavior_dims} x {counts.shape[1]} (dims x the spikes' bins), "
                             f"got {behavior.shape}")
        if not np.all(np.isfinite(behavior)):
            raise ValueError("behavior contains NaN or infinite values")


class Calibrator:
    """One calibration at a time; its status is part of ``/health``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[str, Any] = {"state": "idle"}
        self.thread: threading.Thread | None = None

    def start(self, state, counts: np.ndarray, behavior: np.ndarray | None, day: str) -> dict[str, Any]:
        """Start fitting ``day``'s read-in on ``counts`` (C, n) [and ``behavior`` (D, n)]; RuntimeError if one
        is already running."""
        engine = state.engine
        check_block(engine.config, day, counts, behavior)
        with self.lock:
            if self.status["state"] == "running":
                raise RuntimeError(f"a calibration of day {self.status['day']} is running; wait for it")
            self.status = {"state": "running", "day": day, "mode": "few-shot" if behavior is not None else
                           "zero-label", "bins": int(counts.shape[1]), "started": time.time()}
            status = dict(self.status)
        base = Path(engine.config.get("provenance", {}).get("calibrated_from") or engine.folder)
        out = calibration_dir(base, state.settings.calibration_dir) / day
        self.thread = threading.Thread(target=self._run, args=(state, base, counts, behavior, day, out),
                                       name="alignnet-calibrate", daemon=True)
        self.thread.start()
        return status

    def _run(self, state, base: Path, counts, behavior, day: str, out: Path) -> None:
        from alignnet.training.calibrate import calibrate_block

        try:
            report = calibrate_block(base, counts, behavior, day, out)
            state.reload(out)  # atomic swap; the bridges pick the new engine up at their next hop
            atomic_write_json(out.parent / CURRENT, {"artifact": str(out), "base": str(base), "day": day,
                                                     "base_sha256": _config_sha(base)})
            result = {"state": "done", "artifact": out.name, "report": report}
        except Exception as e:  # any failure leaves the serving model as it was, and is reported
            log.exception("calibration of day %s failed", day)
            result = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
        with self.lock:
            self.status = {**self.status, **result, "finished": time.time()}

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        if self.thread is not None:
            self.thread.join(timeout)
        return dict(self.status)


def _config_sha(folder: Path) -> str | None:
    from alignnet.model.artifacts import ArtifactError, read_config

    try:
        return read_config(folder).get("integrity", {}).get("sha256")
    except (ArtifactError, OSError):
        return None


def resume_artifact(base: Path, configured: Path | None) -> Path | None:
    """The calibrated artifact a restarted service should serve for ``base`` (None: the base itself): only one
    calibrated from this very base (its config hash recorded at calibration). A calibration of an older base
    (re-trained, re-exported) or one recorded without the hash is not resumed: it would silently serve another
    model than the one asked for."""
    path = calibration_dir(base, configured) / CURRENT
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    artifact = Path(current.get("artifact", ""))
    if not (artifact / "config.json").is_file():
        return None
    if current.get("base_sha256") is None or current.get("base_sha256") != _config_sha(base):
        log.warning("not resuming the calibrated artifact %s: it was calibrated from another version of %s (serving "
                    "the base; calibrate again)", artifact, base)
        return None
    return artifact
