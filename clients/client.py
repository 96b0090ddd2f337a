"""Python client of the service: ``decode()`` and ``simulate()`` over HTTP, sync and async.

    from alignnet.clients import Client
    with Client("http://127.0.0.1:8000") as c:
        behavior = c.decode(counts)          # (C, T) or (B, C, T) counts -> (B, D, T)
        rates = c.simulate(behavior)         # (D, T) or (B, D, T) -> (B, C, T) expected counts per bin

Arrays travel as ``.npy`` bodies (no JSON float formatting, no pickles). Connection failures, timeouts and 5xx
answers are retried with exponential back-off; 4xx answers are not (the request itself is wrong) and raise
``ServiceError`` carrying the service's message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np

from alignnet.service.http.codec import NPY, from_npy, to_npy

RETRYABLE = (httpx.ConnectError, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError,
             httpx.ConnectTimeout)


class ServiceError(RuntimeError):
    """The service refused a request or could not be reached; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _parse(r: httpx.Response, what: str) -> np.ndarray:
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise ServiceError(f"{what}: HTTP {r.status_code}: {detail}", r.status_code)
    return from_npy(r.content)


class _Base:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2) -> None:
        if retries < 0 or timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")
        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff_s

    def _request(self, path: str, x: np.ndarray, params: dict[str, Any] | None = None) -> dict[str, Any]:
        params = {k: ("true" if v is True else "false" if v is False else v) for k, v in (params or {}).items()
                  if v is not None}
        return {"url": self.url + path, "content": to_npy(x), "params": params,
                "headers": {"content-type": NPY, "accept": NPY}}

    def _give_up(self, path: str, error: Exception | None, r: httpx.Response | None) -> ServiceError:
        if r is not None:
            return ServiceError(f"{path}: HTTP {r.status_code} after {self.retries + 1} tries: {r.text[:500]}",
                                r.status_code)
        return ServiceError(f"{path}: no answer from {self.url} after {self.retries + 1} tries "
                            f"({type(error).__name__}: {error})")


class Client(_Base):
    """Synchronous client. ``http``: an httpx.Client of your own (auth, proxies, a test transport)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2, http: httpx.Client | None = None) -> None:
        super().__init__(url, timeout, retries, backoff_s)
        self.http = http or httpx.Client(timeout=timeout)

    def _post(self, path: str, x: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        req = self._request(path, x, params)
        error, r = None, None
        for attempt in range(self.retries + 1):
            try:
                r = self.http.post(**req)
                if r.status_code < 500:
                    return _parse(r, path)
            except RETRYABLE as e:
                error, r = e, None
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise self._give_up(path, error, r)

    def decode(self, counts: np.ndarray) -> np.ndarray:
        """(C, T) or (B, C, T) spike counts per bin -> (B, D, T) behavior."""
        return self._post("/decode", counts)

    def simulate(self, behavior: np.ndarray, sample: bool = False, seed: int | None = None) -> np.ndarray:
        """(D, T) or (B, D, T) behavior -> (B, C, T) expected counts per bin (sampled counts with ``sample``)."""
        return self._post("/simulate", behavior, {"sample": sample, "seed": seed})

    def health(self) -> dict[str, Any]:
        return self.http.get(self.url + "/health").json()

    def model(self) -> dict[str, Any]:
        r = self.http.get(self.url + "/model")
        if r.status_code != 200:
            raise ServiceError(f"/model: HTTP {r.status_code}: {r.text[:500]}", r.status_code)
        return r.json()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client (httpx.AsyncClient); the same methods, awaited."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(url, timeout, retries, backoff_s)
        self.http = http or httpx.AsyncClient(timeout=timeout)

    async def _post(self, path: str, x: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        req = self._request(path, x, params)
        error, r = None, None
        for attempt in range(self.retries + 1):
            try:
                r = await self.http.post(**req)
                if r.status_code < 500:
                    return _parse(r, path)
            except RETRYABLE as e:
                error, r = e, None
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2**attempt)
        raise self._give_up(path, error, r)

    async def decode(self, counts: np.ndarray) -> np.ndarray:
        return await self._post("/decode", counts)

    async def simulate(self, behavior: np.ndarray, sample: bool = False, seed: int | None = None) -> np.ndarray:
        return await self._post("/simulate", behavior, {"sample": sample, "seed": seed})

    async def model(self) -> dict[str, Any]:
        r = await self.http.get(self.url + "/model")
        if r.status_code != 200:
            raise ServiceError(f"/model: HTTP {r.status_code}: {r.text[:500]}", r.status_code)
        return r.json()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
