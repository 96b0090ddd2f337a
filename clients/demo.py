"""Closed-loop cursor demo (``alignnet demo``): the loop of ``alignnet.clients.loop`` run headless or behind a web page.

``alignnet demo`` starts ``alignnet serve --lsl`` with the chosen artifact, runs the loop and serves a web page
(WebSocket updates) showing targets, cursor, hits, time to target and latency. ``--headless --trials N --json F``
runs N trials without a page and reports success rate, time to target and latency percentiles.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from alignnet.clients.loop import DECODERS, artifact_root, closed_loop, resolve_decoder

__all__ = ["resolve_decoder", "run_headless", "run_page"]


def run_headless(artifact: Path, trials: int, day: int = 6, seed: int = 0, engine: str = "onnx",
                 port: int | None = None) -> dict:
    """Start the service on ``artifact``, run ``trials`` closed-loop trials, return the report."""
    if trials < 1:
        raise ValueError("--trials must be >= 1")
    with closed_loop(artifact, day, seed, engine, port) as (loop, _):
        loop.connect()
        t0 = time.monotonic()
        loop.run(trials)
        wall = time.monotonic() - t0
    return {**loop.summary(), "artifact": str(artifact), "engine": engine, "wall_s": round(wall, 1)}


def run_page(artifact: Path, day: int = 6, seed: int = 0, engine: str = "onnx", host: str = "127.0.0.1",
             port: int = 8001, service_port: int = 8000, announce=print) -> None:
    """Start the service, run the loop until stopped and serve the page on ``host:port``."""
    import uvicorn

    from alignnet.clients.demo_page import Decoders, LiveSimulation, demo_app

    with closed_loop(artifact, day, seed, engine, service_port) as (loop, service_url):
        thread = threading.Thread(target=loop.run, name="closed-loop", daemon=True)
        thread.start()
        live = LiveSimulation(loop, service_url).start()
        decoders = Decoders(artifact, artifact_root(artifact), service_url, DECODERS)
        announce(f"closed-loop demo: open http://{host}:{port}  (decoder {artifact}; service {service_url}/docs; "
                 "Ctrl-C to stop)")
        try:
            uvicorn.run(demo_app(loop, service_url, live, decoders), host=host, port=port, log_level="warning")
        finally:
            live.stop()
            loop.stop_event.set()
            thread.join(5)
