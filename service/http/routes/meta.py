"""``GET /health``, ``/model`` and ``/metrics``: what is served and how it is doing (no answer names a folder by its
absolute path)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from alignnet.service.http.errors import error_responses
from alignnet.service.http.guard import scrub
from alignnet.service.http.state import EngineDep, StateDep
from alignnet.service.live.batcher import BATCHER
from alignnet.service.live.routes import window_group

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
