"""Calibrate the closed-loop demo's session live, without labels: the last S seconds of the virtual subject's
spikes (binned as the service bins them) go to the service's ``POST /calibrate``; the loop keeps running while
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

from alignnet.clients.loop import closed_loop

DEFAULT_SECONDS = 60.0  # spikes the zero-label calibration fits the session's read-in on


def service_drift(url: str) -> dict[str, Any] | None:
    """The service's drift gauge (``/health``'s ``drift``), or None when the service does not answer."""
    try:
        return httpx.get(url + "/health", timeout=2.0).json().get("drift")
    except (httpx.HTTPError, ValueError):
        return None


class LiveCalibration:
    """One zero-label calibration of the running loop's session; its status is the loop's ``calibration``."""

    def __init__(self, loop, url: str, seconds: float = DEFAULT_SECONDS, timeout_s: float = 900.0) -> None:
        self.loop, self.url, self.seconds, self.timeout_s = loop, url, seconds, timeout_s

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
        status = {"state": "running", "seconds": self.seconds, "started_trial": loop.task.trials,
                  "drift_before": (service_drift(self.url) or {}).get("gauge")}
        loop.calibration = status
        r = httpx.post(self.url + "/calibrate", json={"day": f"demo-day{loop.day}", "spikes": block.tolist()},
                       timeout=60.0)
        if r.status_code != 202:
            loop.calibration = {**status, "state": "failed", "error": r.json().get("detail")}
            return loop.calibration
        end = time.monotonic() + self.timeout_s
        while time.monotonic() < end:
            cal = httpx.get(self.url + "/health", timeout=5.0).json()["calibration"]
            if cal.get("state") in ("done", "rejected", "failed"):  # rejected: worse than the served model, kept
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
                            seconds: float = DEFAULT_SECONDS, port: int | None = None) -> dict[str, Any]:
    """``trials`` trials with the served model, a live zero-label calibration on the last ``seconds`` of spikes
    (the loop keeps running), then ``trials`` trials with the calibrated model; the report has both."""
    if trials < 1:
        raise ValueError("--trials must be >= 1")
    with closed_loop(artifact, day, seed, engine, port) as (loop, url):
        loop.connect()
        thread = threading.Thread(target=loop.run, name="closed-loop", daemon=True)
        thread.start()
        try:
            _wait(loop, lambda: loop.task.trials >= trials)
            cal = LiveCalibration(loop, url, seconds).run()
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
