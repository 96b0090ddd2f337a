"""``alignnet bench load --rate R`` offers requests open loop: each at its own time, whether or not the ones before
it were answered, with latency counted from when it was due. Checked against a stand-in service whose /decode
answers one request at a time in 20 ms (capacity 50 a second)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest


@pytest.fixture(scope="module")
def slow_service():
    import uvicorn
    from fastapi import FastAPI

    from alignnet.service.http.launcher import free_port

    app = FastAPI()
    lock = asyncio.Lock()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/decode")
    async def decode():
        async with lock:  # one at a time: 50 requests a second at most
            await asyncio.sleep(0.02)
        return {"behavior": []}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not server.started and time.monotonic() < end:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


def test_open_loop_below_capacity_waits_for_nothing(slow_service):
    from alignnet.bench.load import _open_loop

    r = asyncio.run(_open_loop(slow_service, 20.0, 2.0, "json", (2, 4)))
    assert r["offered"] == 40 and r["requests"] == 40 and r["error_count"] == 0
    assert 20 <= r["latency"]["p50_ms"] < 60, r  # its own 20 ms, nothing queued


def test_open_loop_beyond_capacity_shows_the_queue(slow_service):
    """Offered twice the capacity, requests queue: the last of 2 s of them waits ~1 s. A closed-loop client (the
    next request sent when the last is answered) would report ~20 ms here, at any load."""
    from alignnet.bench.load import _load, _open_loop

    r = asyncio.run(_open_loop(slow_service, 100.0, 2.0, "json", (2, 4)))
    assert r["offered"] == 200 and r["error_count"] == 0
    assert r["latency"]["max_ms"] > 600, r
    closed = asyncio.run(_load(slow_service, 1, 1.0, "json", (2, 4)))
    assert closed["latency"]["p99_ms"] < 100, closed


def test_rate_is_checked():
    from alignnet.bench.load import http_load

    with pytest.raises(ValueError, match="--rate"):
        http_load(None, rate=0.0)
