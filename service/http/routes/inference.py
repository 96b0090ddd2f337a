"""``POST /decode`` and ``POST /simulate``: a request admitted to the engine pool, parsed once (JSON or .npy),
run on the served engine (``/decode`` batched across requests through the live pipeline's batcher when
``http_batch_wait_s`` is set), answered in the format asked for."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from alignnet.service.http.bodies import body_schema, parse, respond, run_engine
from alignnet.service.http.errors import error_responses
from alignnet.service.http.schemas import DecodeRequest, SimulateRequest
from alignnet.service.http.state import EngineDep, StateDep, in_worker
from alignnet.service.live.batcher import BATCHER
from alignnet.service.live.routes import window_group

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

    return await in_worker(request, state, work)


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

    return await in_worker(request, state, work)
