"""Request and answer bodies of the inference routes: JSON (validated by the pydantic schemas) or ``.npy`` in, the
engine call timed, JSON (orjson) or ``.npy`` out. These run in an engine worker, off the event loop."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from alignnet.service.http.codec import NPY, from_npy, to_npy
from alignnet.service.http.errors import BadInput, RequestInvalid, UnsupportedMedia


def run_engine(fn, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The engine call, and its duration as a Server-Timing header value (lets clients split network from compute).
    The engine applies the served contract (shape, dtype, NaN/inf/float32 overflow, negative counts: its one set of
    checks); a refusal is the input's fault, not the server's."""
    t = time.perf_counter()
    try:
        y = fn(x)
    except ValueError as e:
        raise BadInput(str(e)) from None
    return y, f"engine;dur={(time.perf_counter() - t) * 1e3:.3f}"


def body_schema(model: type[BaseModel], npy: str | None, required: bool = True) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if npy:
        content[NPY] = {"schema": {"type": "string", "format": "binary"}, "description": npy}
    return {"requestBody": {"required": required, "content": content}}


def validate(model: type[BaseModel], body: bytes) -> BaseModel:
    """A JSON body validated by its pydantic model; pydantic's error list in the 422 answer."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise RequestInvalid(e.errors(include_url=False, include_context=False, include_input=False)) from None


def as_float32(values: list, field: str) -> np.ndarray:
    """Validated JSON lists -> a float32 array, cast once; BadInput for ragged lists or numbers beyond any float.
    Beyond float32 becomes inf, which the contract refuses."""
    try:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float32)
    except ValueError:
        raise BadInput(f"{field} is ragged: every row (and every window) needs the same number of bins") from None
    except OverflowError:
        raise BadInput(f"{field} holds a number too large for float32") from None


def parse(body: bytes, ctype: str, model: type[BaseModel], field: str, limit: int) -> tuple[BaseModel | None,
                                                                                              np.ndarray]:
    """JSON (validated by the pydantic model) or a NumPy .npy body -> (the request, its array). JSON numbers are
    cast to float32 here, once; the contract checks shape and values. Runs in an engine worker."""
    if ctype == NPY:
        try:
            req, arr = None, from_npy(body)
        except ValueError as e:
            raise BadInput(str(e)) from None
    elif ctype == "application/json":
        req = validate(model, body)
        arr = as_float32(getattr(req, field), field)
    else:
        raise UnsupportedMedia(f"content-type {ctype!r} is not supported; send application/json or {NPY}")
    if arr.ndim == 3 and not 1 <= arr.shape[0] <= limit:
        raise BadInput(f"batch of {arr.shape[0]} windows: send 1 to {limit} (the limit of {limit} for this model)")
    return req, arr


def respond(accept: str, arrays: dict[str, np.ndarray], extra: dict[str, Any], timing: str) -> Response:
    """JSON by default (orjson straight from the arrays: a 256-window simulate encoded in 0.14 s instead of 2.5 s
    of json.dumps holding the GIL); the first array as .npy when the client accepts application/x-npy."""
    headers = {"Server-Timing": timing}
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise BadInput(f"the model's {name} are not finite for this input (values far outside the recorded "
                           "range?)")
    if NPY in accept:
        return Response(to_npy(next(iter(arrays.values())), dtype=None), media_type=NPY, headers=headers)
    return Response(encode_json(arrays, extra), media_type="application/json", headers=headers)


def encode_json(arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> bytes:
    """``{name: array, ..., **extra}`` as JSON, each array encoded a window at a time: orjson holds the GIL for a
    whole call, and a 256-window answer in one call kept /health waiting ~70 ms; between windows other threads run.
    (Joining orjson's encodings of the windows with commas is the only JSON written by hand here.)"""
    parts = []
    for name, a in arrays.items():
        windows = (orjson.dumps(np.ascontiguousarray(w), option=orjson.OPT_SERIALIZE_NUMPY) for w in a)
        parts.append(orjson.dumps(name) + b":[" + b",".join(windows) + b"]")
    rest = orjson.dumps(extra)[1:-1]
    return b"{" + b",".join(parts + ([rest] if rest else [])) + b"}"


def windows_within(engine, max_batch: int, memory_mb: float) -> int:
    """The most windows one request may hold: ``max_batch``, or fewer where a request of that many would need more
    than ``memory_mb`` (a JSON window costs about 3 x 32 bytes per number as Python objects: the request's numbers,
    and the answer's rates and sampled spikes; the engine runs in chunks, so its activations do not grow with it)."""
    c = engine.contract
    per_window = 3 * 32 * (c.n_channels + c.behavior_dims) * c.window_bins
    return max(1, min(max_batch, int(memory_mb * 2**20 // per_window)))
