"""Live calibration of a new day (``POST /calibrate``): fit its read-in in a worker thread while the current model
keeps serving, then swap the calibrated artifact in only if it beats the served model; on failure the old model
stays and the error is reported.

How a calibration is written, so that a crash at any point (kill -9 included) restarts into a whole model, the old
one or the new one, never a mix:

1. the read-in is fitted on the block's first bins (the newest ``HOLDOUT_SHARE`` are kept out) and the artifact is
   written whole — weights, exported graphs, config and seal — into a fresh ``.tmp-*`` folder of the calibration
   dir; nothing else is touched;
2. it is opened as the service would open it (every file's hash, a trial decode) and scored against the served
   model on the held-out bins (``compare``);
3. it is renamed into place, ``<calibration_dir>/<day>-<time>-<id>`` (a rename within one folder is atomic);
4. only if it scored better: swapped in, and then ``current.json`` is replaced atomically to name it (a folder name:
   ``current.json`` never points outside the calibration dir);
5. older calibrations of the same base beyond ``keep`` are removed (never the one served or named).

A restarted service removes stale ``.tmp-*`` folders and serves what ``current.json`` names (``resume_artifact``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignnet.model.artifacts import model_contract
from alignnet.model.atomic import atomic_write_json
from alignnet.service.live.binning import MAX_RATE_HZ, max_count

log = logging.getLogger(__name__)

DAY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CURRENT = "current.json"
TMP_PREFIX = ".tmp-"
HOLDOUT_SHARE = 0.2  # the newest share of a block that scores the calibration (never fitted on)
MAX_SILENT_SHARE = 0.5  # a block where more of its bins than this have no spike on any channel is refused
# Memory one calibration needs (measured on the default model: scripts/calibration_memory.py, docs/benchmarks.md
# "Calibration memory"): a fixed part whatever the block's size (the fit's batches and saved activations, the ONNX
# export and its check), and a part per number of the block (the parsed JSON, the float32 block, its windows, hop a
# tenth of the window so each bin ~10 times, and their share of the fit). 700 -> 8,000 bins grew the peak by
# 2.3 KB a number over a 1.7 GB start; both rounded up.
CALIBRATION_FIXED_MB = 1800
BYTES_PER_NUMBER = 2400


class CalibrationBusy(RuntimeError):
    """A calibration is running: another one, or a reload that it would undo, must wait (409)."""


def calibration_dir(base: Path, configured: Path | None) -> Path:
    """Where calibrated artifacts of ``base`` go: the configured folder, else ``<base>-calibrated`` next to it — except
    for the default models inside the installed package, whose calibrations go to ~/.cache/alignnet (a package
    folder may be read-only, and is not a place for a lab's data)."""
    from alignnet.service.http.settings import DEFAULT_MODELS

    base = Path(base).resolve()
    if configured:
        return Path(configured)
    if base.parent == DEFAULT_MODELS.resolve():
        return Path.home() / ".cache" / "alignnet" / f"{base.name}-calibrated"
    return base.parent / f"{base.name}-calibrated"


def holdout_bins(n: int, window: int) -> int:
    """How many of a block's ``n`` newest bins score the calibration: ``HOLDOUT_SHARE`` of them, at least half a
    window (the scored windows reach back into the fitted part for their context, never for labels)."""
    return max(window // 2, int(round(n * HOLDOUT_SHARE)))


def min_calibration_bins(config: dict[str, Any]) -> int:
    """The fewest contiguous bins a calibration block must hold for ``config``'s model: enough to fit a read-in
    (``MIN_WINDOWS`` windows) after the held-out bins are set aside."""
    from alignnet.training.calibrate import MIN_WINDOWS

    window = model_contract(config).window_bins
    fit = window + (MIN_WINDOWS - 1) * max(1, window // 10)
    n = fit
    while n - holdout_bins(n, window) < fit:
        n += 1
    return n


def max_calibration_bins(config: dict[str, Any], max_seconds: float, memory_mb: float) -> int:
    """The most bins one calibration may hold: ``max_seconds`` of data, and no more than a calibration within
    ``memory_mb`` can fit (its fixed part, then ``BYTES_PER_NUMBER`` a number)."""
    mc = model_contract(config)
    by_time = int(max_seconds / mc.bin_s)
    by_memory = int(max(0.0, memory_mb - CALIBRATION_FIXED_MB) * 2**20
                    // (BYTES_PER_NUMBER * (mc.n_channels + mc.behavior_dims)))
    return max(1, min(by_time, by_memory))


def check_block(config: dict[str, Any], day: str, counts: np.ndarray, behavior: np.ndarray | None) -> None:
    """Refuse calibration input that cannot fit a read-in, or that no recording would hold, naming the problem
    (ValueError -> 422) before any work is done."""
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
                         f"({need * mc.bin_s:.1f} s; the newest {HOLDOUT_SHARE:.0%} score the fit)")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("spike counts must be finite and non-negative")
    if np.any(counts != np.round(counts)):
        raise ValueError("spike counts must be whole numbers (counts per bin)")
    limit = max_count(mc.bin_s)
    if (top := float(counts.max())) > limit:
        raise ValueError(f"a count of {top:.3g} in one {mc.bin_s * 1e3:g}-ms bin is implausible (more than "
                         f"{MAX_RATE_HZ:g} spikes/s on one channel: at most {limit})")
    silent = int(np.sum(counts.sum(0) == 0))
    if silent > MAX_SILENT_SHARE * counts.shape[1]:
        raise ValueError(f"{silent} of {counts.shape[1]} bins have no spike on any channel: the block is silent "
                         "(a disconnected or muted array?)")
    if behavior is not None:
        if behavior.shape != (mc.behavior_dims, counts.shape[1]):
            raise ValueError(f"behavior must be {mc.behavior_dims} x {counts.shape[1]} (dims x the spikes' bins), "
                             f"got {behavior.shape}")
        if not np.all(np.isfinite(behavior)):
            raise ValueError("behavior contains NaN or infinite values")
        flat = [name for name, row in zip(mc.behavior_names, behavior) if np.ptp(row) < 1e-9]
        if flat:
            raise ValueError(f"behavior {', '.join(flat)} is constant over the block: nothing to fit a decoder on")


def newest_bin_windows(counts: np.ndarray, start: int, window: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Windows (B, C, window) whose newest ``hop`` bins tile bins ``start`` .. the end of ``counts`` (C, n), their
    end bins, and ``hop``: each scored bin decoded near the newest of its window, as the live path decodes it."""
    n = counts.shape[1]
    hop = max(1, window // 10)
    ends = np.arange(n, start + hop - 1, -hop)[::-1]  # the last window ends at the newest bin
    ends = ends[ends >= window]
    return np.stack([counts[:, e - window:e] for e in ends]).astype(np.float32), ends, hop


def heldout_score(engine, counts: np.ndarray, behavior: np.ndarray | None, start: int) -> float | None:
    """The engine's score on bins ``start`` .. n: newest-bin R² against ``behavior`` (higher is better), or without
    behavior the drift gauge of its latents against the training days' (lower is better). None where it cannot be
    measured (channels the engine does not read, no embed graph, no latent reference)."""
    from alignnet.model.drift import drift_gauge

    c = engine.contract
    if counts.shape[0] != c.n_channels:
        return None
    x, ends, hop = newest_bin_windows(counts, start, c.window_bins)
    if len(x) < 2:
        return None
    if behavior is None:
        reference = engine.config.get("latent_reference")
        z = engine.embed(x) if reference else None
        return None if z is None else float(drift_gauge(reference, z))
    return _r2(heldout_behavior(behavior, ends, hop), engine.decode(x)[..., -hop:])


def heldout_behavior(behavior: np.ndarray, ends: np.ndarray, hop: int) -> np.ndarray:
    return np.stack([behavior[:, e - hop:e] for e in ends])


def _r2(true: np.ndarray, pred: np.ndarray) -> float:
    from alignnet.model.metrics import r2

    return float(r2(true, pred, feature_axis=1))


def compare(candidate, current, counts: np.ndarray, behavior: np.ndarray | None, start: int) -> dict[str, Any]:
    """Both models scored on the held-out bins; ``better``: the candidate wins (or the served model cannot be
    scored there: it reads other channels, or has no latent to watch). With behavior, the candidate must also beat
    the fitted bins' mean behavior held constant (``chance``): labels that are noise to the spikes leave every
    model at or below it, and the least bad of them is no calibration."""
    metric = "newest-bin R²" if behavior is not None else "drift gauge (lower is better)"
    cand = heldout_score(candidate, counts, behavior, start)
    cur = heldout_score(current, counts, behavior, start) if current is not None else None
    chance = None
    if behavior is not None and cand is not None:
        _, ends, hop = newest_bin_windows(counts, start, candidate.contract.window_bins)
        true = heldout_behavior(behavior, ends, hop)
        chance = _r2(true, np.broadcast_to(behavior[:, :start].mean(1)[None, :, None], true.shape))
    if cand is None:
        better, why = True, f"the {metric} cannot be measured for the calibrated model: swapped in unscored"
    elif chance is not None and cand <= chance:
        better, why = False, (f"{metric} {cand:.3f} is no better than the fitted bins' mean behavior held constant "
                              f"({chance:.3f}; the served model {cur if cur is None else round(cur, 3)}): the "
                              "behavior does not follow the spikes (misaligned, shuffled or noise?)")
    elif cur is None:
        better, why = True, "the served model cannot be scored on these channels"
    elif behavior is not None:
        better, why = cand > cur, f"{metric} {cand:.3f} against the served model's {cur:.3f}"
    else:
        better, why = cand < cur, f"{metric} {cand:.3f} against the served model's {cur:.3f}"
    return {"metric": metric, "heldout_bins": int(counts.shape[1] - start), "candidate": cand, "served": cur,
            "chance": chance, "better": bool(better), "why": why}


class Calibrator:
    """One calibration at a time; its status is part of ``/health``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[str, Any] = {"state": "idle"}
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        with self.lock:
            return self.status["state"] == "running"

    def busy(self) -> str | None:
        """What a running calibration is, or None (call with ``lock`` held)."""
        if self.status["state"] == "running":
            return f"a calibration of day {self.status['day']} is running"
        return None

    def start(self, state, counts: np.ndarray, behavior: np.ndarray | None, day: str) -> dict[str, Any]:
        """Start fitting ``day``'s read-in on ``counts`` (C, n) [and ``behavior`` (D, n)]; ValueError for input that
        cannot calibrate, CalibrationBusy if one is already running."""
        engine = state.engine
        check_block(engine.config, day, counts, behavior)
        with self.lock:
            if busy := self.busy():
                raise CalibrationBusy(f"{busy}; wait for it")
            if state.reloading:
                raise CalibrationBusy("a reload is running; calibrate when it has finished")
            self.status = {"state": "running", "day": day, "mode": "few-shot" if behavior is not None else
                           "zero-label", "bins": int(counts.shape[1]), "started": time.time()}
            status = dict(self.status)
        base = Path(engine.config.get("provenance", {}).get("calibrated_from") or engine.folder)
        folder = calibration_dir(base, state.settings.calibration_dir)
        args = (state, engine, base, counts, behavior, day, folder)
        self.thread = threading.Thread(target=lambda: (self._run(*args), release_memory()),
                                       name="alignnet-calibrate", daemon=True)
        self.thread.start()
        return status

    def _run(self, state, served, base: Path, counts, behavior, day: str, folder: Path) -> None:
        from alignnet.training.calibrate import calibrate_block

        s = state.settings
        name = f"{day}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        tmp = folder / f"{TMP_PREFIX}{name}"
        try:
            start = counts.shape[1] - holdout_bins(counts.shape[1], served.contract.window_bins)
            report = calibrate_block(base, counts[:, :start], None if behavior is None else behavior[:, :start],
                                     day, tmp)
            candidate = state.open(tmp)  # verified whole and probed, as a restart would open it
            scores = compare(candidate, served, counts, behavior, start)
            report = {**report, "heldout": scores}
            final = folder / name
            os.replace(tmp, final)
            _fsync_dir(folder)
            if scores["better"]:
                state.reload(final, calibration=True)  # atomic swap; the bridges pick it up at their next hop
                atomic_write_json(folder / CURRENT, {"artifact": final.name, "day": day, "base": base.name,
                                                     "base_sha256": _config_sha(base)})
                result = {"state": "done", "artifact": final.name, "report": report}
            else:
                log.warning("calibration of day %s not served: %s", day, scores["why"])
                result = {"state": "rejected", "artifact": final.name, "report": report,
                          "error": f"not served: {scores['why']}; kept on disk as {final.name}"}
            prune(folder, base, s.calibration_keep, protect={final.name, Path(state.engine.folder).name})
        except Exception as e:  # any failure leaves the serving model as it was, and is reported
            log.exception("calibration of day %s failed", day)
            shutil.rmtree(tmp, ignore_errors=True)
            result = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
        with self.lock:
            self.status = {**self.status, **result, "finished": time.time()}

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        if self.thread is not None:
            self.thread.join(timeout)
        return dict(self.status)


def release_memory() -> None:
    """Give the fit's and the export's freed memory back to the system. A calibration's training and ONNX export
    leave ~0.5 GB of freed heap in glibc's arenas, which the service would otherwise hold for the rest of its life
    (docs/benchmarks.md, "Calibration memory"). By hand through ctypes: no library exposes ``malloc_trim``; a no-op
    off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _config_sha(folder: Path) -> str | None:
    from alignnet.model.artifacts import ArtifactError, read_config

    try:
        return read_config(folder).get("integrity", {}).get("sha256")
    except (ArtifactError, OSError):
        return None


def _calibrated_from(folder: Path) -> str | None:
    from alignnet.model.artifacts import ArtifactError, read_config

    try:
        return read_config(folder).get("provenance", {}).get("calibrated_from")
    except (ArtifactError, OSError, ValueError):
        return None


def clean_stale(folder: Path) -> list[str]:
    """Remove what a calibration killed mid-way left in ``folder`` (``.tmp-*`` folders); returns their names."""
    gone = []
    for tmp in sorted(Path(folder).glob(f"{TMP_PREFIX}*")) if Path(folder).is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
        gone.append(tmp.name)
    if gone:
        log.warning("removed %d unfinished calibration folder(s) in %s", len(gone), folder)
    return gone


def prune(folder: Path, base: Path, keep: int, protect: set[str]) -> list[str]:
    """Remove the oldest calibrations of ``base`` in ``folder`` beyond the newest ``keep`` (never one in
    ``protect`` nor the one ``current.json`` names); returns the removed names."""
    named = _current(folder).get("artifact")
    mine = [p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")
            and _calibrated_from(p) == str(base)]
    mine.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    gone = []
    for p in mine[max(keep, 1):]:
        if p.name in protect or p.name == named:
            continue
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p.name)
    return gone


def _current(folder: Path) -> dict[str, Any]:
    try:
        current = json.loads((Path(folder) / CURRENT).read_text())
    except (OSError, ValueError):
        return {}
    return current if isinstance(current, dict) else {}


def resume_artifact(base: Path, configured: Path | None) -> tuple[Path | None, str | None]:
    """The calibrated artifact a restarted service should serve for ``base``, and why another was refused:
    (None, None) when there is none; (None, why) when ``current.json`` names one that must not be served — a folder
    outside the calibration dir, one that is gone, one calibrated from another version of the base (re-trained,
    re-exported) or recorded without its hash. Stale ``.tmp-*`` folders are removed first."""
    folder = calibration_dir(base, configured)
    clean_stale(folder)
    current = _current(folder)
    if not current:
        return None, None
    name = str(current.get("artifact", ""))
    root = folder.resolve()
    artifact = (folder / name).resolve()
    if not name or artifact.parent != root:
        return None, f"{CURRENT} names {Path(name).name or '?'}, which is not a folder of the calibration dir"
    if not (artifact / "config.json").is_file():
        return None, f"{CURRENT} names {artifact.name}, which holds no artifact"
    if current.get("base_sha256") is None or current.get("base_sha256") != _config_sha(base):
        return None, (f"{artifact.name} was calibrated from another version of {Path(base).name} (re-trained or "
                      "re-exported since): calibrate again")
    return artifact, None
