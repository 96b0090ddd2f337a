"""The FastAPI app: ``create_app()``, routers per concern, the engine opened in ``lifespan``, domain errors mapped
to HTTP responses in one place. Run with ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.middleware.cors import CORSMiddleware
from threadpoolctl import threadpool_limits

from alignnet.model.artifacts import ArtifactError
from alignnet.model.drift import ADVISE_RECALIBRATION
from alignnet.service.calibration import (
    CalibrationBusy,
    Calibrator,
    calibration_dir,
    max_calibration_bins,
    resume_artifact,
)
from alignnet.service.engines import Engine, load_engine
from alignnet.service.http.bodies import as_float32, body_schema, parse, respond, run_engine, validate, windows_within
from alignnet.service.http.codec import NPY  # noqa: F401  (re-exported for clients and tests)
from alignnet.service.http.errors import (
    BadInput,
    Conflict,
    TooLarge,
    error_responses,
    install_handlers,
)
from alignnet.service.http.guard import Guard, public, require_admin, scrub, under_root
from alignnet.service.http.openapi import contract_openapi
from alignnet.service.http.pool import EnginePool
from alignnet.service.http.schemas import CalibrateRequest, DecodeRequest, ReloadRequest, SimulateRequest
from alignnet.service.http.settings import Settings
from alignnet.service.live.binning import BlockCollector
from alignnet.service.live.drift_monitor import DriftMonitor
from alignnet.service.live.lsl import Bridge, BridgeConfig, BridgeMetrics, Bridges
from alignnet.service.live.pipeline import BATCHER
from alignnet.service.live.routes import window_group

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


async def _in_worker(request: Request, state: State, work) -> Response:
    """Admit the request to the engine pool (503 when full), read its body (size-limited and on a deadline), and run
    ``work(body, content type, accept)`` in a worker thread."""
    state.pool.admit()
    try:
        body = await request.body()
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        return await state.pool.run(work, body, ctype, request.headers.get("accept", ""), trim=len(body) > 1 << 16)
    finally:
        state.pool.release()


INFERENCE_ERRORS = error_responses(408, 413, 415, 422, 503)
inference = APIRouter(tags=["inference"])


@inference.post("/decode", openapi_extra=body_schema(DecodeRequest, "float array (C, T) or (B, C, T) of counts"),
                responses={200: {"description": "behavior (B, D, T); JSON, or .npy with Accept: application/x-npy"},
                           **INFERENCE_ERRORS})
async def decode(request: Request, engine: EngineDep, state: StateDep):
    """Spike counts per bin -> behavior. JSON ``{"spikes": ...}`` or a ``.npy`` body."""

    def work(body: bytes, ctype: str, accept: str) -> Response:
        _, x = parse(body, ctype, DecodeRequest, "spikes", state.max_windows)
        wait = state.settings.http_batch_wait_s  # checked alone first: a bad request fails by itself, not its batch
        y, timing = run_engine(engine.decode if not state.http_batching else lambda x: BATCHER.run(
            window_group(BATCHER, engine, None, 1), engine.contract.preprocess_spikes(x), wait_s=wait), x)
        state.metrics.windows.labels("decode").inc(len(y))
        state.drift.observe_request(engine, x if x.ndim == 3 else x[None])
        c = engine.contract
        return respond(accept, {"behavior": y}, {"names": list(c.behavior_names), "bin_s": c.bin_s}, timing)

    return await _in_worker(request, state, work)


@inference.post("/simulate", openapi_extra=body_schema(SimulateRequest, "float array (D, T) or (B, D, T)"),
                responses={200: {"description": "rates (B, C, T); JSON, or .npy with Accept: application/x-npy"},
                           **INFERENCE_ERRORS})
async def simulate(request: Request, engine: EngineDep, state: StateDep, sample: bool = False,
                   seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None):
    """Behavior -> expected spike counts per bin (and sampled counts with ``sample``). JSON or a ``.npy`` body
    (then ``sample`` and ``seed`` are query parameters; the .npy answer holds the sampled counts when sampling)."""

    def work(body: bytes, ctype: str, accept: str) -> Response:
        req, y = parse(body, ctype, SimulateRequest, "behavior", state.max_windows)
        draw, rng_seed = (sample, seed) if req is None else (req.sample, req.seed)
        rates, timing = run_engine(engine.simulate, y)
        state.metrics.windows.labels("simulate").inc(len(rates))
        arrays = {"rates": rates}
        if draw:  # drawn a chunk at a time, so the GIL is released in between (/health stays quick)
            rng = np.random.default_rng(rng_seed)
            arrays = {"spikes": engine.in_chunks(lambda r: rng.poisson(r).astype(np.float32), rates), **arrays}
        return respond(accept, arrays, {"bin_s": engine.contract.bin_s}, timing)

    return await _in_worker(request, state, work)


meta = APIRouter(tags=["metadata"])


@meta.get("/health")
def health(state: StateDep) -> dict[str, Any]:
    """Whether a model is served ("degraded": a recorded calibration was refused at start, see ``fallback``), the
    LSL bridges, the last calibration, drift, the engine pool. No answer names a folder by its absolute path."""
    status = "no model" if state.engine is None else "degraded" if state.fallback else "ok"
    return scrub({"status": status, "model_loaded": state.engine is not None, "error": state.error,
                  "fallback": state.fallback, "lsl": state.bridges.status(), "calibration": state.calibrator.status,
                  "drift": state.drift.status(), "engine_pool": state.pool.status(),
                  "http_batching": None if not state.http_batching or state.engine is None else
                  dict(window_group(BATCHER, state.engine, None, 1).stats),
                  "pid": os.getpid()}, *state.roots)


@meta.get("/model", responses=error_responses(503))
def model_info(engine: EngineDep, state: StateDep) -> dict[str, Any]:
    cfg = engine.config
    return scrub({"model": cfg["model"], "engine": engine.kind, "artifact": engine.folder.name,
                  "config_sha256": cfg.get("integrity", {}).get("sha256"), "signed": "hmac_sha256" in cfg.get(
                      "integrity", {}), "max_windows": state.max_windows, "contract": engine.contract.to_dict(),
                  "versions": cfg.get("versions", {}), "metrics": cfg.get("metrics", {}),
                  "export": cfg.get("export", {})}, *state.roots)


@meta.get("/metrics", response_class=PlainTextResponse)
def metrics(state: StateDep) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


admin = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


@admin.post("/reload", openapi_extra=body_schema(ReloadRequest, None, required=False),
            responses=error_responses(401, 403, 408, 409, 413, 422))
async def reload(request: Request, state: StateDep) -> dict[str, Any]:
    """Swap in another artifact (a folder under the service's artifact root, relative to it), or re-read the
    served one: verified whole and probed before the swap; on any failure the served model stays (409)."""
    body = await request.body()
    req = validate(ReloadRequest, body or b"{}")
    path = under_root(req.artifact, state.root) if req.artifact else None
    try:
        engine = await asyncio.get_running_loop().run_in_executor(None, state.reload, path)
    except CalibrationBusy as e:
        raise Conflict(str(e)) from None
    except (ArtifactError, OSError, ValueError) as e:
        raise Conflict(f"reload failed, still serving the previous model: {public(str(e), *state.roots)}") from None
    return {"reloaded": True, "artifact": engine.folder.name, "model": engine.config["model"]}


@admin.post("/calibrate", status_code=202, openapi_extra=body_schema(CalibrateRequest, None),
            responses=error_responses(401, 403, 408, 409, 413, 422, 503))
async def calibrate(request: Request, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Fit a new day's read-in on a block of its binned spikes (few-shot with ``behavior``, zero-label without) in a
    worker; the current model keeps serving until the calibrated one is swapped in. Progress in ``/health``."""

    def work(body: bytes, ctype: str, accept: str) -> JSONResponse:
        s, c = state.settings, engine.contract
        most = max_calibration_bins(engine.config, s.calibration_max_seconds, s.request_memory_mb)
        limit = f"at most {most} bins ({most * c.bin_s:g} s; calibration_max_seconds, request_memory_mb)"
        if body.count(b",") > 2 * most * (c.n_channels + c.behavior_dims):  # before parsing: its numbers' memory
            raise TooLarge(f"the calibration block holds too many numbers: send {limit}")
        req = validate(CalibrateRequest, body)
        counts = as_float32(req.spikes, "spikes")
        if counts.ndim == 2 and counts.shape[1] > most:
            raise TooLarge(f"{counts.shape[1]} bins are too many to calibrate on: send {limit}")
        behavior = None if req.behavior is None else as_float32(req.behavior, "behavior")
        try:
            status = state.calibrator.start(state, counts, behavior, req.day)
        except CalibrationBusy as e:
            raise Conflict(str(e)) from None
        except ValueError as e:
            raise BadInput(str(e)) from None
        return JSONResponse(status_code=202, content=status)

    return await _in_worker(request, state, work)


def start_bridges(state: State) -> Bridges:
    """The LSL bridges the settings ask for, running against whatever engine is loaded (hot reload included)."""
    s = state.settings
    items = []
    sources = list(dict.fromkeys(s.lsl_sources)) or [s.lsl_source_name]
    if s.lsl_decode:
        for name in sources:  # one output per source; several sources cannot share one output name
            items.append(BridgeConfig("decode", name, s.lsl_source_type, s.lsl_output_name if len(sources) == 1
                                      else None, s.lsl_resolve_timeout_s, s.lsl_hop_bins,
                                      max(s.lsl_max_lag_bins, s.lsl_hop_bins), stall_s=s.lsl_stall_s,
                                      rate_tolerance=s.lsl_rate_tolerance,
                                      incremental=s.lsl_incremental))
    if s.lsl_simulate:
        items.append(BridgeConfig("simulate", s.lsl_behavior_name, s.lsl_behavior_type, None,
                                  s.lsl_resolve_timeout_s, s.lsl_hop_bins, max(s.lsl_max_lag_bins, s.lsl_hop_bins),
                                  stall_s=s.lsl_stall_s, sample=s.lsl_sample,
                                  rate_tolerance=s.lsl_rate_tolerance))
    collector = None
    if s.lsl_decode and s.lsl_calibrate_seconds > 0:  # zero-label calibration on the session's first seconds
        day = "lsl-" + time.strftime("%Y%m%d-%H%M%S")
        collector = BlockCollector(s.lsl_calibrate_seconds, lambda counts: state.calibrator.start(
            state, counts, None, day))
    BATCHER.wait_s = s.lsl_batch_wait_s  # how long a step waits for every source's bin
    batcher = BATCHER if s.lsl_decode and len(sources) > 1 else None  # several sources: their windows batch too
    first = next((c for c in items if c.direction == "decode"), None)  # calibration and drift watch one session
    return Bridges([Bridge(cfg, lambda: state.engine, state.metrics.lsl, collector if cfg is first else None,
                           (state.drift,) if cfg is first else (), batcher if cfg.direction == "decode" else None,
                           s.lsl_batch_workers)
                    .start() for cfg in items], batcher)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        blas = threadpool_limits(settings.blas_threads, user_api="blas")  # restored when the service stops
        try:
            state.load()
        except (ArtifactError, OSError, ValueError) as e:
            state.error = str(e)
            log.error("could not load %s: %s", settings.artifact, e)
        state.bridges = start_bridges(state)
        loop = asyncio.get_running_loop()
        try:  # only where the loop runs in the main thread (uvicorn; not TestClient's portal thread)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, state.reload_on_signal))
        except (RuntimeError, ValueError, NotImplementedError, AttributeError):
            pass
        try:
            yield
        finally:
            state.bridges.stop()
            state.pool.shutdown()
            blas.restore_original_limits()

    # the event loop asks for the GIL often and briefly; a 1-ms switch interval (Python's default is 5 ms) lets it in
    # sooner while a worker runs Python code, so /health and /metrics answer in milliseconds under load
    sys.setswitchinterval(0.001)
    app = FastAPI(title="AlignNet-BCI", version="0.1.0", lifespan=lifespan,
                  responses=error_responses(400, 403),  # any route: a Host or a web origin the settings do not allow
                  description="Decode spikes into behavior and simulate spikes from behavior. Array shapes and "
                  "limits in this schema are those of the model served when it was fetched.")
    app.state.alignnet = state
    app.add_middleware(Guard, state=state)
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["GET", "POST"],
                           allow_headers=["content-type", "accept", "authorization"])
    install_handlers(app)
    for router in (inference, meta, admin):
        app.include_router(router)
    contract_openapi(app, state)
    return app
