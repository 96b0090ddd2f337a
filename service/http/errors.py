"""The service's refusals: one exception per kind, one error body everywhere (``{"detail": str}``, plus ``errors``
for a body that fails the schema), the handlers that answer them, and the error responses each route documents."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from alignnet.model.artifacts import ArtifactError


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the service."""

    detail: str = Field(..., description="what was wrong, in words")
    errors: list[dict[str, Any]] | None = Field(None, description="schema violations, one per field (422 only)")


class ClientError(ValueError):
    """A request the service refuses: answered with ``status`` and an ErrorBody by one handler."""

    status = 422
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail, self.errors = detail, errors


class BadInput(ClientError):
    """Input that does not fit the served contract (422)."""


class RequestInvalid(ClientError):
    """A body or query that does not match the request schema (422, pydantic's error list in ``errors``)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:3])
        super().__init__(f"request does not match the schema ({where}{'; …' if len(errors) > 3 else ''})",
                         [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in errors[:20]])


class UnsupportedMedia(ClientError):
    """A body in a format the service does not read (415)."""

    status = 415


class Unauthorized(ClientError):
    """An admin request without the service's token (401)."""

    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ClientError):
    """A request the service's settings do not allow (403)."""

    status = 403


class TooLarge(ClientError):
    """A body over the size limit (413)."""

    status = 413


class BodyTimeout(ClientError):
    """A body that did not arrive within the body timeout (408)."""

    status = 408


class Conflict(ClientError):
    """A reload or calibration that could not happen now; the served model is unchanged (409)."""

    status = 409


class Busy(ClientError):
    """Every engine worker is busy and the queue is full (503, retry shortly)."""

    status = 503
    headers = {"Retry-After": "1"}


DESCRIPTIONS = {
    400: "a Host the service does not answer to (ALIGNNET_ALLOWED_HOSTS)",
    401: "admin token missing or wrong",
    403: "not allowed by the service's settings (a web origin, an admin route, a path outside the artifact root)",
    408: "the body did not arrive in time",
    409: "could not be done now; the served model is unchanged",
    413: "body over the size limit",
    415: "content type not read here",
    422: "input does not fit the schema or the served contract",
    503: "no model loaded, or every engine worker busy (retry)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of ``codes``, all with the one error body."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def answer(status: int, detail: str, errors: list | None = None, headers: dict[str, str] | None = None):
    content = {"detail": detail} if errors is None else {"detail": detail, "errors": errors}
    return JSONResponse(status_code=status, content=content, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Map every refusal to its status and the one error body."""

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError):
        return answer(exc.status, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(ArtifactError)
    async def no_model(_: Request, exc: ArtifactError):
        return answer(503, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        e = RequestInvalid(list(exc.errors()))
        return answer(422, e.detail, e.errors)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException):
        return answer(exc.status_code, str(exc.detail), None, exc.headers)
