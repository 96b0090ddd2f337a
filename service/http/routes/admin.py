"""``POST /reload`` and ``POST /calibrate``, behind the admin token (``require_admin``): swap in another artifact,
or fit a new day's read-in in a worker while the current model keeps serving."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from alignnet.model.artifacts import ArtifactError
from alignnet.service.calibration import CalibrationBusy, max_calibration_bins
from alignnet.service.http.bodies import as_float32, body_schema, validate
from alignnet.service.http.errors import BadInput, Conflict, TooLarge, error_responses
from alignnet.service.http.guard import public, require_admin, under_root
from alignnet.service.http.schemas import CalibrateRequest, ReloadRequest
from alignnet.service.http.state import EngineDep, StateDep, in_worker

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
        most = max_calibration_bins(engine.config, s.calibration_max_seconds, s.calibration_memory_mb)
        limit = f"at most {most} bins ({most * c.bin_s:g} s; calibration_max_seconds, calibration_memory_mb)"
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

    return await in_worker(request, state, work)
