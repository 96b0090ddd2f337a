"""What stands between the network and the model: per-route metrics, the Origin check, the body deadline, the admin
token and the artifact root.

The CORS answers are Starlette's ``CORSMiddleware``. FastAPI's ``max_body_size`` would limit bodies too, but it sits
outside every user middleware and answers in plain text; the limit here answers in the service's one JSON error
body. The rest has no library and is written here.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request

from alignnet.service.http.errors import BodyTimeout, Forbidden, TooLarge, Unauthorized, answer

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Guard:
    """Plain ASGI middleware (with Starlette's BaseHTTPMiddleware a /health round trip measured 2.4 ms, with this
    1.75 ms, in one pair of runs of scripts/http_overhead.py):

    - per-route request counts and latency (bounded label values);
    - requests naming a host the settings do not list are refused (400);
    - browser requests from another origin are refused (403) unless listed in ``cors_origins``: a page on any site
      can otherwise make a visitor's browser POST to a service on their own machine;
    - a declared body over the limit is refused at once, a chunked one as soon as it passes the limit (413);
    - the whole body must arrive within ``body_timeout_s`` (408), so a client that declares 20 bytes and sends 2
      cannot hold a connection."""

    ROUTES = {"/decode", "/simulate", "/health", "/model", "/metrics", "/reload", "/calibrate", "/docs",
              "/openapi.json"}

    def __init__(self, app, state) -> None:
        self.app, self.state = app, state
        self.hosts, self.origins = state.settings.allowed_host_list, state.settings.cors_origin_list  # once

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics, settings = self.state.metrics, self.state.settings
        route = scope["path"] if scope["path"] in self.ROUTES else "other"
        status = {"code": 500}

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t = time.perf_counter()
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if problem := unknown_host(headers, self.hosts):
                await answer(400, problem)(scope, receive, send_and_note)
                return
            if problem := foreign_origin(headers, self.origins):
                await answer(403, problem)(scope, receive, send_and_note)
                return
            length, limit = headers.get("content-length", "0"), settings.max_body_bytes
            if not length.isdigit() or int(length) > limit:  # answered here in JSON; Starlette's is plain text
                await answer(413, f"request body of {length[:30]} bytes exceeds {limit}")(scope, receive,
                                                                                        send_and_note)
                return
            await self.app(scope, bounded(receive, settings.body_timeout_s, limit), send_and_note)
        finally:
            metrics.latency.labels(route).observe(time.perf_counter() - t)
            metrics.requests.labels(route, str(status["code"])).inc()


def unknown_host(headers: dict[str, str], allowed: list[str]) -> str | None:
    """Why a request's Host header is refused (a DNS-rebinding page reaches a local service under its own name), or
    None. Starlette's TrustedHostMiddleware does the same but answers in plain text; every error here is JSON."""
    if "*" in allowed:
        return None
    host = headers.get("host", "")
    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name in allowed:
        return None
    return (f"host {host[:100]!r} is not one this service answers to; add it to ALIGNNET_ALLOWED_HOSTS "
            "(comma-separated)")


def foreign_origin(headers: dict[str, str], allowed: list[str]) -> str | None:
    """Why a request's Origin is refused, or None: no Origin (not a browser's cross-site request), the service's own
    origin (its /docs page), or one the settings allow."""
    origin = headers.get("origin")
    if origin is None or origin in allowed or "*" in allowed:
        return None
    if urlsplit(origin).netloc == headers.get("host"):
        return None
    return (f"requests from the web origin {origin[:100]!r} are refused; allow it with ALIGNNET_CORS_ORIGINS "
            "(comma-separated origins)")


def bounded(receive, seconds: float, limit: int):
    """``receive`` with the whole request body due within ``seconds`` (BodyTimeout after) and at most ``limit``
    bytes (TooLarge as soon as it passes); later messages (the client's disconnect) pass through unbounded."""
    end = asyncio.get_running_loop().time() + seconds
    done, size = False, 0

    async def bounded_receive():
        nonlocal done, size
        if done:
            return await receive()
        try:
            async with asyncio.timeout_at(end):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(f"the request body did not arrive within {seconds:g} s") from None
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise TooLarge(f"request body exceeds {limit} bytes")
        if message["type"] != "http.request" or not message.get("more_body", False):
            done = True
        return message

    return bounded_receive


async def require_admin(request: Request) -> None:
    """Admin routes: with ``admin_token`` set, ``Authorization: Bearer <token>`` (401 otherwise); without one, only
    clients on this machine (403 for others), so a service bound to 0.0.0.0 cannot be reconfigured from the network
    by default."""
    settings = request.app.state.alignnet.settings
    if settings.admin_token is not None:
        expected = f"Bearer {settings.admin_token.get_secret_value()}".encode()
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            raise Unauthorized("this route needs the service's admin token: Authorization: Bearer <token>")
        return
    if request.client is None or request.client.host not in LOOPBACK:
        raise Forbidden("admin routes answer clients on this machine only; set ALIGNNET_ADMIN_TOKEN to allow "
                        "others with a token")


def under_root(name: str, root: Path) -> Path:
    """The artifact folder ``name`` (relative to ``root``, or absolute inside it) resolved, links included; Forbidden
    for anything outside ``root``, with a message that says nothing about whether such a path exists."""
    refusal = Forbidden("artifact must be a folder under the service's artifact root (give a path relative to it)")
    root = root.resolve()
    try:
        path = (root / name).resolve()
    except (ValueError, OSError):  # a NUL byte, an unencodable name: not a folder under the root either
        raise refusal from None
    if path != root and root not in path.parents:
        raise refusal
    return path


# an absolute path of two or more parts (not a route such as /decode, nor the s of spikes/s)
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def public(message: str, *roots: Path) -> str:
    """A message with the service's own folders taken out: each root's absolute path made relative to it, and any
    other absolute path cut to its last part (what an answer may name: a folder the operator knows by name)."""
    for root in roots:
        if root is not None:
            full = str(Path(root).resolve())
            message = message.replace(full + "/", "").replace(full, ".")
    return ABSOLUTE_PATH.sub(lambda m: m.group(1), message)


def scrub(value: Any, *roots: Path) -> Any:
    """``public`` applied to every string of a JSON-like answer (dicts, lists), so that no answer carries a path."""
    if isinstance(value, str):
        return public(value, *roots)
    if isinstance(value, dict):
        return {k: scrub(v, *roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, *roots) for v in value]
    return value
