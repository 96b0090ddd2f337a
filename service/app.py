"""The FastAPI app: ``create_app()``, routers per concern, the engine opened in ``lifespan``, domain errors mapped
to HTTP responses in one place. Run with ``uvicorn --factory service.app:create_app``."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from model.artifacts import ArtifactError
from service.engines import Engine, load_engine
from service.settings import Settings

log = logging.getLogger(__name__)

Number = float | int


class DecodeRequest(BaseModel):
    """One window (C x T) or a batch (B x C x T) of spike counts per bin."""

    model_config = ConfigDict(strict=True, extra="forbid")
    spikes: list[list[Number]] | list[list[list[Number]]] = Field(..., description="counts per bin, channels x bins")


class SimulateRequest(BaseModel):
    """One window (D x T) or a batch (B x D x T) of behavior."""

    model_config = ConfigDict(strict=True, extra="forbid")
    behavior: list[list[Number]] | list[list[list[Number]]] = Field(..., description="behavior, dims x bins")
    sample: bool = Field(False, description="also draw Poisson spike counts from the simulated rates")
    seed: int | None = Field(None, description="seed of the sampling")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    artifact: str | None = Field(None, description="artifact folder to load (default: the current one)")


class BadInput(ValueError):
    """Input that does not fit the served contract."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("alignnet_requests_total", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("alignnet_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        self.windows = Counter("alignnet_windows_total", "windows processed", ["path"], registry=self.registry)
        self.reloads = Counter("alignnet_reloads_total", "model reloads", ["result"], registry=self.registry)


class State:
    """The served engine; swapped atomically on reload (requests hold their own reference)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.error: str | None = None
        self.lock = threading.Lock()
        self.metrics = Metrics()

    def load(self, artifact=None) -> Engine:
        path = artifact or self.settings.artifact
        engine = load_engine(path, self.settings.engine, self.settings.threads)  # may raise: old engine stays
        with self.lock:
            self.engine, self.error = engine, None
            self.settings.artifact = engine.folder
        return engine


def get_state(request: Request) -> State:
    return request.app.state.alignnet


def get_engine(request: Request) -> Engine:
    state: State = request.app.state.alignnet
    if state.engine is None:
        raise ArtifactError(f"no model loaded ({state.error or 'not started'})")
    return state.engine


StateDep = Annotated[State, Depends(get_state)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def _batch(x: list, shape: tuple[int, int], what: str, max_batch: int) -> np.ndarray:
    """JSON nested lists -> (B, *shape) float32. Values (NaN, inf, float32 overflow, negative counts) are checked by
    the engine's data contract, the same checks every engine applies."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except ValueError:
        raise BadInput(f"{what} is ragged: every window needs {shape[0]} rows of {shape[1]} bins") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != shape:
        raise BadInput(f"{what} must be a window of {shape[0]} x {shape[1]} or a batch of them, "
                       f"got shape {tuple(arr.shape)}")
    if arr.shape[0] > max_batch:
        raise BadInput(f"batch of {arr.shape[0]} windows exceeds the limit of {max_batch}")
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which the contract refuses
        return arr.astype(np.float32)


def _run(fn, x: np.ndarray) -> np.ndarray:
    try:
        return fn(x)
    except ValueError as e:  # the contract's checks: the input, not the server, is at fault
        raise BadInput(str(e)) from None


inference = APIRouter(tags=["inference"])


@inference.post("/decode")
def decode(req: DecodeRequest, engine: EngineDep, state: StateDep) -> dict[str, Any]:
    c = engine.contract
    x = _batch(req.spikes, c.spike_shape, "spikes", state.settings.max_batch)
    y = _run(engine.decode, x)
    state.metrics.windows.labels("decode").inc(len(x))
    return {"behavior": y.tolist(), "names": list(c.behavior_names), "bin_s": c.bin_s}


@inference.post("/simulate")
def simulate(req: SimulateRequest, engine: EngineDep, state: StateDep) -> dict[str, Any]:
    c = engine.contract
    y = _batch(req.behavior, c.behavior_shape, "behavior", state.settings.max_batch)
    rates = _run(engine.simulate, y)
    state.metrics.windows.labels("simulate").inc(len(y))
    out: dict[str, Any] = {"rates": rates.tolist(), "bin_s": c.bin_s}
    if req.sample:
        out["spikes"] = np.random.default_rng(req.seed).poisson(rates).tolist()
    return out


meta = APIRouter(tags=["metadata"])


@meta.get("/health")
def health(state: StateDep) -> dict[str, Any]:
    return {"status": "ok" if state.engine is not None else "no model", "model_loaded": state.engine is not None,
            "error": state.error, "lsl": {"state": "disabled"}}


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
        engine = state.load(req.artifact)
    except (ArtifactError, OSError, ValueError) as e:
        state.metrics.reloads.labels("failed").inc()
        return JSONResponse(status_code=409, content={"detail": f"reload failed, still serving the previous model: "
                                                                f"{e}"})
    state.metrics.reloads.labels("ok").inc()
    return {"reloaded": True, "artifact": str(engine.folder), "model": engine.config["model"]}


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
        yield

    app = FastAPI(title="AlignNet-BCI", version="0.1.0", lifespan=lifespan,
                  description="Decode spikes into behavior and simulate spikes from behavior.")
    app.state.alignnet = state

    @app.middleware("http")
    async def limits_and_metrics(request: Request, call_next):
        length = request.headers.get("content-length")
        route = request.url.path
        if length is not None and int(length) > settings.max_body_bytes:
            state.metrics.requests.labels(route, "413").inc()
            return JSONResponse(status_code=413, content={
                "detail": f"request body of {length} bytes exceeds {settings.max_body_bytes}"})
        t = time.perf_counter()
        response = await call_next(request)
        state.metrics.latency.labels(route).observe(time.perf_counter() - t)
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(ArtifactError)
    async def no_model(_: Request, exc: ArtifactError):
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    for router in (inference, meta, admin):
        app.include_router(router)
    return app
