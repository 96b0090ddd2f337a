"""The FastAPI app: ``create_app()``, routers per concern, the engine opened in ``lifespan``, domain errors mapped
to HTTP responses in one place. Run with ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ValidationError

from alignnet.model.artifacts import ArtifactError
from alignnet.service.binning import BlockCollector
from alignnet.service.calibration import Calibrator, resume_artifact
from alignnet.service.codec import NPY, from_npy, to_npy
from alignnet.service.drift_monitor import DriftMonitor
from alignnet.service.engines import Engine, load_engine
from alignnet.service.lsl import Bridge, BridgeConfig, BridgeMetrics, Bridges
from alignnet.service.schemas import CalibrateRequest, DecodeRequest, ReloadRequest, SimulateRequest
from alignnet.service.settings import Settings

log = logging.getLogger(__name__)

class ClientError(ValueError):
    """A request the service refuses: answered with ``status`` and ``{"detail": detail}`` by one handler."""

    status = 422

    def __init__(self, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else "request does not match the schema")
        self.detail = detail


class BadInput(ClientError):
    """Input that does not fit the served contract (422)."""


class RequestInvalid(ClientError):
    """A JSON body that does not match the request schema: pydantic's error list, as FastAPI answers it (422)."""


class TooLarge(ClientError):
    """A body over the size limit."""

    status = 413


class UnsupportedMedia(ClientError):
    """A body in a format the service does not read."""

    status = 415


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
                           "training days' / their total variance (recalibration advised above 0.5)",
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

    def load(self, artifact=None) -> Engine:
        path = artifact or self.settings.artifact
        if artifact is None and self.settings.resume_calibrated:  # a restart serves the last calibrated day
            path = resume_artifact(self.settings.artifact, self.settings.calibration_dir) or path
        engine = load_engine(path, self.settings.engine, self.settings.threads)  # may raise: old engine stays
        with self.lock:
            self.engine, self.error = engine, None
            self.settings.artifact = engine.folder
        return engine

    def reload(self, artifact=None) -> Engine:
        """``load`` for a running service, counted in the metrics; on failure the old engine keeps serving."""
        try:
            engine = self.load(artifact)
        except (ArtifactError, OSError, ValueError):
            self.metrics.reloads.labels("failed").inc()
            raise
        self.metrics.reloads.labels("ok").inc()
        return engine

    def reload_on_signal(self) -> None:
        """SIGHUP: reload the served artifact folder (e.g. after scripts/build_default_models.sh rewrote it)."""
        try:
            engine = self.reload()
            log.warning("SIGHUP: reloaded %s", engine.folder)
        except (ArtifactError, OSError, ValueError) as e:
            log.error("SIGHUP: reload failed, still serving the previous model: %s", e)


def get_state(request: Request) -> State:
    return request.app.state.alignnet


def get_engine(request: Request) -> Engine:
    state: State = request.app.state.alignnet
    if state.engine is None:
        raise ArtifactError(f"no model loaded ({state.error or 'not started'})")
    return state.engine


StateDep = Annotated[State, Depends(get_state)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def _run(fn, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The engine call, and its duration as a Server-Timing header value (lets clients split network from compute).
    The engine applies the served contract (shape, dtype, NaN/inf/float32 overflow, negative counts: its one set of
    checks); a refusal is the input's fault, not the server's."""
    t = time.perf_counter()
    try:
        y = fn(x)
    except ValueError as e:
        raise BadInput(str(e)) from None
    return y, f"engine;dur={(time.perf_counter() - t) * 1e3:.3f}"


def _body_schema(model: type[BaseModel], npy: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        NPY: {"schema": {"type": "string", "format": "binary"}, "description": npy}}}}


async def _body(request: Request) -> bytes:
    """The request body, refused (413) beyond the size limit (a chunked body has no content-length for the
    middleware to check)."""
    body = await request.body()
    limit = request.app.state.alignnet.settings.max_body_bytes
    if len(body) > limit:
        raise TooLarge(f"request body of {len(body)} bytes exceeds {limit}")
    return body


def _validate(model: type[BaseModel], body: bytes) -> BaseModel:
    """A JSON body validated by its pydantic model; pydantic's error list as the 422 answer."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise RequestInvalid(e.errors(include_url=False, include_context=False, include_input=False)) from None


async def _parse(request: Request, model: type[BaseModel], field: str) -> tuple[BaseModel | None, np.ndarray]:
    """JSON (validated by the pydantic model) or a NumPy .npy body -> (the request, its array). JSON numbers are
    cast to float32 here, once; the contract checks shape and values."""
    body = await _body(request)
    settings = request.app.state.alignnet.settings
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype == NPY:
        try:
            req, arr = None, from_npy(body)
        except ValueError as e:
            raise BadInput(str(e)) from None
    elif ctype == "application/json":
        req = _validate(model, body)
        try:
            with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the contract refuses
                arr = np.asarray(getattr(req, field), dtype=np.float32)
        except ValueError:
            raise BadInput(f"{field} is ragged: every window needs the same number of rows and bins") from None
        except OverflowError:
            raise BadInput(f"{field} holds a number too large for float32") from None
    else:
        raise UnsupportedMedia(f"content-type {ctype!r} is not supported; send application/json or {NPY}")
    if arr.ndim == 3 and not 1 <= arr.shape[0] <= settings.max_batch:
        raise BadInput(f"batch of {arr.shape[0]} windows: send 1 to {settings.max_batch} (the limit of "
                       f"{settings.max_batch})")
    return req, arr


def _respond(request: Request, arrays: dict[str, np.ndarray], extra: dict[str, Any], timing: str) -> Response:
    """JSON by default; the first array as .npy when the client accepts application/x-npy."""
    headers = {"Server-Timing": timing}
    if NPY in request.headers.get("accept", ""):
        return Response(to_npy(next(iter(arrays.values())), dtype=None), media_type=NPY, headers=headers)
    return JSONResponse({**{k: v.tolist() for k, v in arrays.items()}, **extra}, headers=headers)


inference = APIRouter(tags=["inference"])


@inference.post("/decode", openapi_extra=_body_schema(DecodeRequest, "float array (C, T) or (B, C, T) of counts"),
                responses={200: {"description": "behavior (B, D, T); JSON, or .npy with Accept: application/x-npy"}})
async def decode(request: Request, engine: EngineDep, state: StateDep):
    """Spike counts per bin -> behavior. JSON ``{"spikes": ...}`` or a ``.npy`` body."""
    _, x = await _parse(request, DecodeRequest, "spikes")
    y, timing = _run(engine.decode, x)
    state.metrics.windows.labels("decode").inc(len(y))
    state.drift.observe_request(engine, x if x.ndim == 3 else x[None])
    c = engine.contract
    return _respond(request, {"behavior": y}, {"names": list(c.behavior_names), "bin_s": c.bin_s}, timing)


@inference.post("/simulate", openapi_extra=_body_schema(SimulateRequest, "float array (D, T) or (B, D, T)"),
                responses={200: {"description": "rates (B, C, T); JSON, or .npy with Accept: application/x-npy"}})
async def simulate(request: Request, engine: EngineDep, state: StateDep, sample: bool = False,
                   seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None):
    """Behavior -> expected spike counts per bin (and sampled counts with ``sample``). JSON or a ``.npy`` body
    (then ``sample`` and ``seed`` are query parameters; the .npy answer holds the sampled counts when sampling)."""
    req, y = await _parse(request, SimulateRequest, "behavior")
    if req is not None:
        sample, seed = req.sample, req.seed
    rates, timing = _run(engine.simulate, y)
    state.metrics.windows.labels("simulate").inc(len(rates))
    arrays = {"rates": rates}
    if sample:
        arrays = {"spikes": np.random.default_rng(seed).poisson(rates).astype(np.float32), **arrays}
    return _respond(request, arrays, {"bin_s": engine.contract.bin_s}, timing)


meta = APIRouter(tags=["metadata"])


@meta.get("/health")
def health(state: StateDep) -> dict[str, Any]:
    return {"status": "ok" if state.engine is not None else "no model", "model_loaded": state.engine is not None,
            "error": state.error, "lsl": state.bridges.status(), "calibration": state.calibrator.status,
            "drift": state.drift.status(), "pid": os.getpid()}


@meta.get("/model")
def model_info(engine: EngineDep) -> dict[str, Any]:
    cfg = engine.config
    return {"model": cfg["model"], "engine": engine.kind, "artifact": str(engine.folder),
            "contract": engine.contract.to_dict(), "versions": cfg.get("versions", {}),
            "metrics": cfg.get("metrics", {}), "export": cfg.get("export", {})}


@meta.get("/metrics", response_class=PlainTextResponse)
def metrics(state: StateDep) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


admin = APIRouter(tags=["admin"])


@admin.post("/reload")
def reload(req: ReloadRequest, state: StateDep) -> dict[str, Any]:
    try:
        engine = state.reload(req.artifact)
    except (ArtifactError, OSError, ValueError) as e:
        return JSONResponse(status_code=409, content={"detail": f"reload failed, still serving the previous model: "
                                                                f"{e}"})
    return {"reloaded": True, "artifact": str(engine.folder), "model": engine.config["model"]}


@admin.post("/calibrate", status_code=202)
async def calibrate(request: Request, engine: EngineDep, state: StateDep) -> JSONResponse:
    """Fit a new day's read-in on a block of its binned spikes (few-shot with ``behavior``, zero-label without) in a
    worker; the current model keeps serving until the calibrated one is swapped in. Progress in ``/health``."""
    req = _validate(CalibrateRequest, await _body(request))
    try:
        with np.errstate(over="ignore"):
            counts = np.asarray(req.spikes, dtype=np.float32)
            behavior = None if req.behavior is None else np.asarray(req.behavior, dtype=np.float32)
    except (ValueError, OverflowError):
        raise BadInput("spikes and behavior must be rectangular arrays of numbers within float32") from None
    try:
        status = state.calibrator.start(state, counts, behavior, req.day)
    except ValueError as e:
        raise BadInput(str(e)) from None
    except RuntimeError as e:
        return JSONResponse(status_code=409, content={"detail": str(e)})
    return JSONResponse(status_code=202, content=status)


class LimitsAndMetrics:
    """Body-size limit and per-route request metrics, as plain ASGI middleware (with Starlette's BaseHTTPMiddleware a
    /health round trip measured 2.4 ms, with this 1.75 ms, in one pair of runs of scripts/http_overhead.py)."""

    ROUTES = {"/decode", "/simulate", "/health", "/model", "/metrics", "/reload", "/calibrate", "/docs",
              "/openapi.json"}

    def __init__(self, app, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics, limit = self.state.metrics, self.state.settings.max_body_bytes
        route = scope["path"] if scope["path"] in self.ROUTES else "other"  # bounded label values
        length = dict(scope["headers"]).get(b"content-length", b"0").decode("latin-1")
        if not length.isdigit() or int(length) > limit:
            metrics.requests.labels(route, "413").inc()
            response = JSONResponse(status_code=413, content={"detail": f"request body of {length} bytes exceeds "
                                                                        f"{limit}"})
            await response(scope, receive, send)
            return
        status = {"code": 500}

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            metrics.latency.labels(route).observe(time.perf_counter() - t)
            metrics.requests.labels(route, str(status["code"])).inc()


def start_bridges(state: State) -> Bridges:
    """The LSL bridges the settings ask for, running against whatever engine is loaded (hot reload included)."""
    s = state.settings
    items = []
    if s.lsl_decode:
        items.append(BridgeConfig("decode", s.lsl_source_name, s.lsl_source_type, s.lsl_output_name,
                                  s.lsl_resolve_timeout_s, s.lsl_hop_bins, max(s.lsl_max_lag_bins, s.lsl_hop_bins)))
    if s.lsl_simulate:
        items.append(BridgeConfig("simulate", s.lsl_behavior_name, s.lsl_behavior_type, None,
                                  s.lsl_resolve_timeout_s, s.lsl_hop_bins, max(s.lsl_max_lag_bins, s.lsl_hop_bins),
                                  sample=s.lsl_sample))
    collector = None
    if s.lsl_decode and s.lsl_calibrate_seconds > 0:  # zero-label calibration on the session's first seconds
        day = "lsl-" + time.strftime("%Y%m%d-%H%M%S")
        collector = BlockCollector(s.lsl_calibrate_seconds, lambda counts: state.calibrator.start(
            state, counts, None, day))
    return Bridges([Bridge(cfg, lambda: state.engine, state.metrics.lsl, collector if cfg.direction == "decode"
                           else None, (state.drift,)).start() for cfg in items])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = State(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
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

    app = FastAPI(title="AlignNet-BCI", version="0.1.0", lifespan=lifespan,
                  description="Decode spikes into behavior and simulate spikes from behavior.")
    app.state.alignnet = state

    app.add_middleware(LimitsAndMetrics, state=state)

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError):
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(ArtifactError)
    async def no_model(_: Request, exc: ArtifactError):
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    for router in (inference, meta, admin):
        app.include_router(router)
    return app
