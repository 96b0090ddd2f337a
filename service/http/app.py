"""The FastAPI app: ``create_app()`` mounts the routes (``routes/``: inference, metadata, admin), opens the engine in
``lifespan``, starts the LSL bridges and maps domain errors to HTTP responses in one place (``errors.py``). Run with
``uvicorn --factory alignnet.service.http.app:create_app``."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from threadpoolctl import threadpool_limits

from alignnet.model.artifacts import ArtifactError
from alignnet.service.http.codec import NPY  # noqa: F401  (re-exported for clients and tests)
from alignnet.service.http.errors import error_responses, install_handlers
from alignnet.service.http.guard import Guard
from alignnet.service.http.openapi import contract_openapi
from alignnet.service.http.routes import ROUTERS
from alignnet.service.http.settings import Settings
from alignnet.service.http.state import State
from alignnet.service.live.batcher import BATCHER
from alignnet.service.live.binning import BlockCollector
from alignnet.service.live.lsl import Bridge, BridgeConfig, Bridges

log = logging.getLogger(__name__)


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
    return Bridges([Bridge(cfg, state, state.metrics.lsl, collector if cfg is first else None,
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
    for router in ROUTERS:
        app.include_router(router)
    contract_openapi(app, state)
    return app
