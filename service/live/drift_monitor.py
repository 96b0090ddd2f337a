"""The service's drift monitor: how far the recent windows' AlignNet latents are from the training days'.

Every ``every_bins`` bins of the LSL streams, at most once per ``interval_s`` however many sources the service has
(and at most once a second from ``/decode`` requests), one window is embedded by the served artifact's ``embed``
graph; the gauge (``alignnet.model.drift``: Wasserstein-2 between Gaussian fits over the last ``size`` latents,
divided by the reference's total variance) is exported as the Prometheus gauge ``alignnet_drift`` and in ``/health``,
with "recalibrate" advised above the threshold. A new model (reload, calibration) starts the history afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from alignnet.model.drift import ADVISE_RECALIBRATION, drift_gauge

MIN_LATENTS = 8  # fewer recent latents than this give no gauge

log = logging.getLogger(__name__)


class DriftMonitor:
    def __init__(self, gauge_metric=None, size: int = 64, every_bins: int = 50, interval_s: float = 1.0,
                 threshold: float = ADVISE_RECALIBRATION) -> None:
        self.metric, self.size, self.every_bins, self.threshold = gauge_metric, size, every_bins, threshold
        self.interval_s, self.last_lsl = float(interval_s), -float("inf")
        self.latents: deque = deque(maxlen=size)
        self.value: float | None = None
        self.engine = None
        self.bins_since = 0
        self.last_http = 0.0
        self.lock = threading.Lock()
        self._busy = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-monitor")

    def add(self, bins: np.ndarray, engine, ring) -> None:
        """A bridge observer: called with every batch of new bins (k, C) and the window ring. The window is embedded
        on a thread of the monitor's own: the embed graph and the gauge (a matrix square root) take milliseconds,
        which the bridge's next hop must not wait for (done inline, they delayed one bin a second by ~10 ms). The
        count is over all sources and the embeddings at most one per ``interval_s``: one gauge for the service, and
        32 sources at 50 Hz otherwise asked for 32 embeddings a second, a tenth of a core."""
        self.bins_since += len(bins)
        if self.bins_since >= self.every_bins:
            now = time.monotonic()
            with self.lock:
                if self._busy or now - self.last_lsl < self.interval_s:  # still embedding, or too soon: skip
                    return
                self._busy, self.last_lsl, self.bins_since = True, now, 0
            self._pool.submit(self._observe_async, engine, ring.buf[None].copy())

    def _observe_async(self, engine, window: np.ndarray) -> None:
        try:
            self.observe(engine, window)
        except Exception:  # a failed gauge must not stop the monitor; the bridge never sees it
            log.exception("drift monitor: embedding a window failed")
        finally:
            with self.lock:
                self._busy = False

    def observe_request(self, engine, windows: np.ndarray) -> None:
        """From ``/decode``: the request's last window, at most once a second."""
        now = time.monotonic()
        if now - self.last_http >= 1.0:
            self.last_http = now
            self.observe(engine, windows[-1:])

    def observe(self, engine, window: np.ndarray) -> None:
        reference = engine.config.get("latent_reference")
        if not reference or not engine.can_embed:
            return
        z = engine.embed(window)
        with self.lock:
            if engine is not self.engine:  # another model: its latents are not comparable with the old ones
                self.engine, self.value = engine, None
                self.latents.clear()
            self.latents.append(np.asarray(z[0], np.float64))
            if len(self.latents) >= MIN_LATENTS:
                self.value = drift_gauge(reference, np.stack(self.latents))
                if self.metric is not None:
                    self.metric.set(self.value)

    def status(self) -> dict[str, Any]:
        with self.lock:
            value, n = self.value, len(self.latents)
        return {"gauge": value, "latents": n, "threshold": self.threshold,
                "advise_recalibration": None if value is None else bool(value > self.threshold)}
