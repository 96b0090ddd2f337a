"""The OpenAPI schema of the served model: the request bodies' array shapes and value ranges come from the contract
being served (re-generated after every reload or calibration), so a schema-driven client or fuzzer can build a
valid body, and every error any route can answer is listed with the one error body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from alignnet.model.contract import DataContract
from alignnet.service.calibration import min_calibration_bins
from alignnet.service.http.schemas import CalibrateRequest, DecodeRequest, ReloadRequest, SimulateRequest

COUNT = {"type": "number", "minimum": 0, "maximum": 1e6}  # spike counts per bin
VALUE = {"type": "number", "minimum": -1e6, "maximum": 1e6}  # behavior in data units


def _matrix(rows: int | None, cols: int | None, number: dict[str, Any], min_cols: int = 1) -> dict[str, Any]:
    row = {"type": "array", "items": number, "minItems": cols or min_cols}
    if cols:
        row["maxItems"] = cols
    out = {"type": "array", "items": row, "minItems": rows or 1}
    if rows:
        out["maxItems"] = rows
    return out


def _window_or_batch(rows: int, cols: int, number: dict[str, Any], max_windows: int, what: str) -> dict[str, Any]:
    window = _matrix(rows, cols, number)
    return {"anyOf": [window, {"type": "array", "items": window, "minItems": 1, "maxItems": max_windows}],
            "description": f"one window ({rows} {what} x {cols} bins) or a batch of 1 to {max_windows} windows"}


def request_schemas(c: DataContract | None, max_windows: int, calibrate_bins: int | None) -> dict[str, Any]:
    """The four request bodies' JSON schemas, shaped by the contract ``c`` (generic when no model is loaded)."""
    schemas = {m.__name__: m.model_json_schema() for m in (DecodeRequest, SimulateRequest, CalibrateRequest,
                                                           ReloadRequest)}
    if c is None:
        return schemas
    channels = c.n_channels if c.units_matched else None
    schemas["DecodeRequest"]["properties"]["spikes"] = _window_or_batch(c.n_channels, c.window_bins, COUNT,
                                                                        max_windows, "channels")
    schemas["SimulateRequest"]["properties"]["behavior"] = _window_or_batch(c.behavior_dims, c.window_bins, VALUE,
                                                                            max_windows, "behavior variables")
    calibrate = schemas["CalibrateRequest"]["properties"]
    calibrate["spikes"] = _matrix(channels, None, COUNT, calibrate_bins or 1)
    calibrate["spikes"]["description"] = f"counts, channels x at least {calibrate_bins} contiguous bins"
    calibrate["day"] = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
    return schemas


def contract_openapi(app: FastAPI, state) -> None:
    """Make ``app.openapi()`` describe the served contract, and forget the cached schema at every swap."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        engine = state.engine
        contract = engine.contract if engine is not None else None
        bins = None if engine is None else min_calibration_bins(engine.config)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schemas(contract, state.max_windows, bins))
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    state.on_swap.append(lambda engine: setattr(app, "openapi_schema", None))
