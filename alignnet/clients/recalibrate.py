"""Calibrate the closed-loop demo's session live: the last S seconds of the virtual subject's spikes (binned as the
service bins them) go to the service's ``POST /calibrate`` — without labels (zero-label), or with the subject's
intended positions as labels (``labels="intended"``: few-shot on intention, as ReFIT recalibrates a closed-loop
decoder on the movement the user meant rather than the one the decoder produced); the loop keeps running while
the read-in is fitted and the calibrated model is swapped in. ``run_headless_calibrated`` reports the trials
before and after, with the service's drift gauge at both points (``alignnet demo --headless --calibrate``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from alignnet.clients.demo import closed_loop

DEFAULT_SECONDS = 60.0  # spikes the calibration fits the session's read-in on
LABELS = ("none", "intended")  # zero-label, or few-shot on the subject's intended positions


def service_drift(url: str) -> dict[str, Any] | None:
    """The service's drift gauge (``/health``'s ``drift``), or None when the service does not answer."""
    try:
        return httpx.get(url + "/health", timeout=2.0).json().get("drift")
    except (httpx.HTTPError, ValueError):
        return None


class LiveCalibration:
    """One zero-label calibration of the running loop's session; its status is the loop's ``calibration``."""

    def __init__(self, loop, url: str, seconds: float = DEFAULT_SECONDS, timeout_s: float = 900.0,
                 labels: str = "none") -> None:
        if labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
        self.loop, self.url, self.seconds, self.timeout_s, self.labels = loop, url, seconds, timeout_s, labels

    def start(self) -> dict[str, Any]:
        if (self.loop.calibration or {}).get("state") in ("collecting", "running"):
            return self.loop.calibration
        self.loop.calibration = {"state": "collecting", "seconds": self.seconds}
        threading.Thread(target=self.run, name="demo-calibration", daemon=True).start()
        return self.loop.calibration

    def run(self) -> dict[str, Any]:
        """Wait for ``seconds`` of spikes, send them, and wait for the service to swap the calibrated model in."""
        loop = self.loop
        need = int(round(self.seconds * 1000 / loop.bin_ms))
        while len(loop.recent) < need and not loop.stop_event.is_set():
            time.sleep(0.2)
        block = np.stack(list(loop.recent)[-need:]).T  # (C, n) counts per bin
        body = {"day": f"demo-day{loop.day}", "spikes": block.tolist()}
        if self.labels == "intended":
            body["behavior"] = np.stack(list(loop.intended)[-need:]).T.tolist()  # (2, n) positions
        status = {"state": "running", "seconds": self.seconds, "labels": self.labels,
                  "started_trial": loop.task.trials, "drift_before": (service_drift(self.url) or {}).get("gauge")}
        loop.calibration = status
        r = httpx.post(self.url + "/calibrate", json=body, timeout=60.0)
        if r.status_code != 202:
            loop.calibration = {**status, "state": "failed", "error": r.json().get("detail")}
            return loop.calibration
        end = time.monotonic() + self.timeout_s
        while time.monotonic() < end:
            cal = httpx.get(self.url + "/health", timeout=5.0).json()["calibration"]
            if cal.get("state") in ("done", "failed"):
                loop.calibration = {**status, "state": cal["state"], "error": cal.get("error"),
                                    "fit_s": (cal.get("report") or {}).get("fit_s"),
                                    "swapped_at_trial": loop.task.trials}
                return loop.calibration
            time.sleep(1.0)
        loop.calibration = {**status, "state": "failed", "error": f"no result within {self.timeout_s:.0f} s"}
        return loop.calibration


def trial_stats(outcomes: list[tuple[bool, float | None]]) -> dict[str, Any]:
    hits = [t for ok, t in outcomes if ok]
    return {"trials": len(outcomes), "hits": len(hits),
            "success_rate": round(len(hits) / len(outcomes), 4) if outcomes else None,
            "mean_time_to_target_s": round(float(np.mean(hits)), 3) if hits else None}


def run_headless_calibrated(artifact: Path, trials: int, day: int = 6, seed: int = 0, engine: str = "onnx",
                            seconds: float = DEFAULT_SECONDS, port: int | None = None,
                            labels: str = "none") -> dict[str, Any]:
    """``trials`` trials with the served model, a live calibration on the last ``seconds`` of spikes (zero-label,
    or ``labels="intended"``; the loop keeps running), then ``trials`` trials with the calibrated model; the
    report has both."""
    if trials < 1:
        raise ValueError("--trials must be >= 1")
    with closed_loop(artifact, day, seed, engine, port) as (loop, url):
        loop.connect()
        thread = threading.Thread(target=loop.run, name="closed-loop", daemon=True)
        thread.start()
        try:
            _wait(loop, lambda: loop.task.trials >= trials)
            cal = LiveCalibration(loop, url, seconds, labels=labels).run()
            first_after = loop.task.trials
            _wait(loop, lambda: loop.task.trials >= first_after + trials)
            drift_after = (service_drift(url) or {}).get("gauge")
        finally:
            loop.stop_event.set()
            thread.join(10)
    out = loop.task.outcomes
    return {"day": day, "seed": seed, "artifact": str(artifact), "calibration": {**cal, "drift_after": drift_after},
            "before": trial_stats(out[:trials]), "during": trial_stats(out[trials:first_after]),
            "after": trial_stats(out[first_after:first_after + trials]), "summary": loop.summary()}


def _wait(loop, done, poll_s: float = 0.2) -> None:
    while not done():
        if loop.error:
            raise RuntimeError(f"closed loop stopped: {loop.error}")
        time.sleep(poll_s)
