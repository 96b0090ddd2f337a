"""What every route shares: the served engine and its swap (``State``), the service's metrics, the request
dependencies, and the worker-pool admission a request's engine work goes through."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from alignnet.model.artifacts import ArtifactError
from alignnet.model.drift import ADVISE_RECALIBRATION
from alignnet.service.calibration import CalibrationBusy, Calibrator, calibration_dir, resume_artifact
from alignnet.service.engines import Engine, load_engine
from alignnet.service.http.bodies import windows_within
from alignnet.service.http.guard import public
from alignnet.service.http.pool import EnginePool
from alignnet.service.http.settings import Settings
from alignnet.service.live.drift_monitor import DriftMonitor
from alignnet.service.live.lsl import BridgeMetrics, Bridges

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("alignnet_requests_total", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("alignnet_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.windows = Counter("alignnet_windows_total", "windows processed", ["path"], registry=self.registry)
        self.reloads = Counter("alignnet_reloads_total", "model reloads", ["result"], registry=self.registry)
        self.drift = Gauge("alignnet_drift", "latent drift gauge: W2 distance of recent windows' latents from the "
                           "training days' / their total variance (recalibration advised above "
                           f"{ADVISE_RECALIBRATION:g})",
                           registry=self.registry)
        self.lsl = BridgeMetrics(self.registry)


class State:
    """The served engine; swapped atomically on reload (requests hold their own reference)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.bridges = Bridges()
        self.calibrator = Calibrator()
        self.drift = DriftMonitor(self.metrics.drift)
        self.pool = EnginePool(settings.workers, settings.queue)
        # concurrent /decode requests' windows in one engine call (off by default: docs/benchmarks.md)
        # (through the process's one batcher, pipeline.BATCHER: the engine's group of whole windows)
        self.http_batching = settings.http_batch_wait_s > 0
        if self.http_batching and settings.workers < 2:
            log.warning("http_batch_wait_s is set but workers is 1: requests reach the engine one at a time, so "
                        "there is nothing to batch and each waits %.1f ms; give --workers 2 or more",
                        settings.http_batch_wait_s * 1e3)
        self.root = Path(settings.artifact_root or Path(settings.artifact).resolve().parent)
        self.base = Path(settings.artifact)  # the artifact named at start: what calibrations are fitted from
        self.fallback: dict[str, str] | None = None  # a calibration refused at start, and what is served instead
        self.reloading = 0  # reloads in progress (a calibration does not start meanwhile)
        self.max_windows = settings.max_batch
        self.on_swap: list = []  # called with each new engine (the OpenAPI schema follows the served contract)

    def open(self, path) -> Engine:
        """Open ``path`` as the service serves it (verified whole — every file's hash, config.json's record and,
        with a key, its signature — and probed with a trial decode and simulate) without swapping it in."""
        s = self.settings
        key = s.artifact_key.get_secret_value() if s.artifact_key else None
        return load_engine(path, s.engine, s.threads, key=key, chunk=s.engine_chunk)

    def load(self, artifact=None) -> Engine:
        """Open ``artifact`` (default: the served folder; at start, the last calibration of the base where one is
        recorded) and only then swap it in. On any failure the served engine stays. A recorded calibration that
        cannot be served is replaced by the base, and the fallback is shown in ``/health`` (status "degraded")."""
        s = self.settings
        path = asked = Path(artifact or s.artifact)
        fallback = None
        if artifact is None and s.resume_calibrated and asked == self.base:  # a restart serves the last calibration
            resumed, why = resume_artifact(self.base, s.calibration_dir)
            if why:
                fallback = {"refused": "current.json", "why": why, "serving": self.base.name}
            path = resumed or asked
        try:
            engine = self.open(path)
        except (ArtifactError, OSError, ValueError) as e:
            if path == asked:
                raise
            log.error("the last calibrated artifact %s cannot be served (%s); serving %s", path, e, self.base)
            fallback = {"refused": path.name, "why": public(str(e), *self.roots), "serving": self.base.name}
            engine = self.open(asked)
        if fallback:
            log.error("calibration refused at start: %s", fallback["why"])
        with self.lock:
            self.engine, self.error, self.fallback = engine, None, fallback
            self.max_windows = windows_within(engine, s.max_batch, s.request_memory_mb)
            s.artifact = engine.folder
        for hook in self.on_swap:
            hook(engine)
        return engine

    def reload(self, artifact=None, calibration: bool = False) -> Engine:
        """``load`` for a running service, counted in the metrics; on failure the old engine keeps serving. Refused
        (CalibrationBusy) while a calibration runs — its swap would undo this one — unless it is that swap."""
        with self.calibrator.lock:
            if not calibration and (busy := self.calibrator.busy()):
                raise CalibrationBusy(f"{busy}: reload when it has finished (GET /health shows it)")
            self.reloading += 1
        try:
            engine = self.load(artifact)
        except (ArtifactError, OSError, ValueError):
            self.metrics.reloads.labels("failed").inc()
            raise
        finally:
            with self.calibrator.lock:
                self.reloading -= 1
        self.metrics.reloads.labels("ok").inc()
        return engine

    @property
    def roots(self) -> tuple[Path, ...]:
        """The folders whose absolute paths no answer shows: the artifact root, the base's, its calibrations'."""
        return (self.root, self.base.parent, calibration_dir(self.base, self.settings.calibration_dir))

    def reload_on_signal(self) -> None:
        """SIGHUP: reload the served artifact folder (e.g. after scripts/build_default_models.sh rewrote it)."""
        try:
            engine = self.reload()
            log.warning("SIGHUP: reloaded %s", engine.folder)
        except (ArtifactError, OSError, ValueError, CalibrationBusy) as e:
            log.error("SIGHUP: reload failed, still serving the previous model: %s", e)


# The dependencies are coroutines: FastAPI runs a plain function's dependency in a worker thread, a thread hop per
# dependency per request (16 % of the event loop's time under 64 clients, py-spy), for what is an attribute read.
async def get_state(request: Request) -> State:
    return request.app.state.alignnet


async def get_engine(request: Request) -> Engine:
    state: State = request.app.state.alignnet
    if state.engine is None:
        raise ArtifactError(f"no model loaded ({state.error or 'not started'})")
    return state.engine


StateDep = Annotated[State, Depends(get_state)]
EngineDep = Annotated[Engine, Depends(get_engine)]


async def in_worker(request: Request, state: State, work) -> Response:
    """Admit the request to the engine pool (503 when full), read its body (size-limited and on a deadline), and run
    ``work(body, content type, accept)`` in a worker thread."""
    state.pool.admit()
    try:
        body = await request.body()
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        return await state.pool.run(work, body, ctype, request.headers.get("accept", ""), trim=len(body) > 1 << 16)
    finally:
        state.pool.release()
