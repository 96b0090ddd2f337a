"""The demo's web page, both directions of the model at once: the cursor decoded from the subject's spikes, a scrolling
raster of those incoming spikes, and beside it a raster of spikes *simulated* live from the cursor's movement (the
service's ``/simulate`` on the last window of cursor positions), with the correlation of the two. A selector swaps
the served decoder (``/reload``) without restarting anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from pathlib import Path

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

STATIC = Path(__file__).resolve().parent / "static"
RASTER_BINS = 100  # bins a raster shows (2 s of 20-ms bins)
CORR_BLOCK = 5  # bins summed per block before correlating incoming with simulated spikes (100 ms)
SMOOTHING = "none: the cursor is the newest decoded bin, as served"

log = logging.getLogger(__name__)


class LiveSimulation:
    """A thread that, every ``every_s``, simulates the last window of cursor positions through the service and keeps
    the bins that are new since its last call: expected counts, and Poisson spikes drawn from them for the raster."""

    def __init__(self, loop, service_url: str, every_s: float = 0.2, seed: int = 0) -> None:
        from alignnet.clients.client import Client

        self.loop, self.client, self.every_s = loop, Client(service_url, timeout=5.0, retries=0), every_s
        self.rng = np.random.default_rng(seed)
        self.rates: deque = deque(maxlen=10 * RASTER_BINS)  # (bin index, expected counts (C,))
        self.spikes: deque = deque(maxlen=10 * RASTER_BINS)  # (bin index, Poisson counts (C,))
        self.done = -1  # the newest bin simulated
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="live-simulation", daemon=True)

    def start(self) -> LiveSimulation:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.step()
                self.error = None
            except Exception as e:  # the service may be swapping models or restarting: shown, retried
                self.error = f"{type(e).__name__}: {e}"

    def step(self) -> int:
        """Simulate the newest window; returns how many new bins it added."""
        with self.loop._lock:
            cursor, last = np.array(self.loop.cursor_bins), self.loop.bins_total - 1
        if len(cursor) < self.loop.window_bins or last <= self.done:
            return 0
        rates = self.client.simulate(cursor.T[None].astype(np.float32))[0]  # (C, W)
        new = min(last - self.done, rates.shape[1])
        with self._lock:
            for k in range(rates.shape[1] - new, rates.shape[1]):
                index = last - (rates.shape[1] - 1 - k)
                self.rates.append((index, rates[:, k]))
                self.spikes.append((index, self.rng.poisson(np.maximum(rates[:, k], 0)).astype(int)))
        self.done = last
        return new

    def since(self, index: int) -> tuple[list[int], list[list[int]]]:
        with self._lock:
            rows = [(i, s) for i, s in self.spikes if i > index][-RASTER_BINS:]
        return [i for i, _ in rows], [s.tolist() for _, s in rows]

    def correlation(self) -> float | None:
        """Pearson r of incoming spike counts and simulated expected counts over the last raster's bins, both summed
        in blocks of ``CORR_BLOCK`` bins per channel (single 20-ms bins hold about one spike: mostly Poisson noise)."""
        with self._lock:
            rates = dict(list(self.rates)[-RASTER_BINS:])
        with self.loop._lock:
            recent = list(self.loop.recent)[-10 * RASTER_BINS:]
            first = self.loop.bins_total - len(recent)
        pairs = [(recent[i - first], rates[i]) for i in sorted(rates) if 0 <= i - first < len(recent)]
        n = len(pairs) // CORR_BLOCK * CORR_BLOCK
        if n < 2 * CORR_BLOCK:
            return None
        x = np.stack([p[0] for p in pairs[-n:]]).reshape(n // CORR_BLOCK, CORR_BLOCK, -1).sum(1).ravel()
        y = np.stack([p[1] for p in pairs[-n:]]).reshape(n // CORR_BLOCK, CORR_BLOCK, -1).sum(1).ravel()
        if x.std() == 0 or y.std() == 0:
            return None
        return round(float(np.corrcoef(x, y)[0, 1]), 3)


def incoming_since(loop, index: int) -> tuple[list[int], list[list[int]]]:
    """Bin indices and spike counts (C,) of the subject's bins after ``index`` (at most a raster's worth)."""
    with loop._lock:
        total, recent = loop.bins_total, list(loop.recent)[-RASTER_BINS:]
    first = total - len(recent)
    rows = [(first + k, r) for k, r in enumerate(recent) if first + k > index]
    return [i for i, _ in rows], [r.astype(int).tolist() for _, r in rows]


class Decoders:
    """The decoders the page offers: the default models, the artifact the demo started with, or any folder under the
    service's artifact root; switching one in is the service's ``/reload``."""

    def __init__(self, started: Path, root: Path, service_url: str, defaults: dict[str, Path]) -> None:
        self.root, self.url = Path(root).resolve(), service_url
        self.choices = {name: Path(p).resolve() for name, p in defaults.items()}
        started = Path(started).resolve()
        if started not in self.choices.values():
            self.choices[started.name] = started
        self.current = next(n for n, p in self.choices.items() if p == started)

    def listing(self) -> dict:
        return {"choices": list(self.choices), "current": self.current, "root": str(self.root)}

    def switch(self, name: str) -> dict:
        import httpx

        try:
            path = self.choices.get(name) or Path(name).expanduser().resolve()
            rel = os.path.relpath(path, self.root)
        except (ValueError, OSError, RuntimeError):  # NUL bytes, an unknown ~user, a link loop
            rel = ".."
        if rel.startswith(".."):
            return {"ok": False, "error": f"{name}: the demo's service serves artifacts under {self.root} only"}
        try:
            r = httpx.post(self.url + "/reload", json={"artifact": rel}, timeout=60.0)
        except httpx.HTTPError as e:
            return {"ok": False, "error": f"the service did not answer ({type(e).__name__})"}
        if r.status_code != 200:
            return {"ok": False, "error": r.json().get("detail", r.text)}
        self.current = name if name in self.choices else str(path)
        return {"ok": True, "current": self.current, "model": r.json().get("model")}


class DecoderChoice(BaseModel):
    name: str = Field(..., min_length=1, max_length=1024)


def demo_app(loop, service_url: str, live: LiveSimulation | None = None, decoders: Decoders | None = None):
    """A small FastAPI app: the page, and a WebSocket that streams the loop's state (and the rasters' new bins) at
    25 Hz."""
    app = FastAPI(title="AlignNet-BCI closed-loop demo")

    def state() -> dict:
        return {**loop.snapshot(), "service": service_url, "smoothing": SMOOTHING,
                "decoder": decoders.current if decoders else None}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "demo.html").read_text()

    app.get("/state")(state)

    @app.get("/drift")
    def drift() -> dict:
        from alignnet.clients.recalibrate import service_drift

        return service_drift(service_url) or {}

    @app.post("/calibrate", status_code=202)
    def calibrate() -> dict:
        from alignnet.clients.recalibrate import LiveCalibration

        return LiveCalibration(loop, service_url).start()

    @app.get("/decoders")
    def decoder_list() -> dict:
        return decoders.listing() if decoders else {"choices": [], "current": None}

    @app.post("/decoder")
    def decoder_switch(choice: DecoderChoice) -> dict:
        if decoders is None:
            return {"ok": False, "error": "this page cannot switch decoders"}
        return decoders.switch(choice.name)

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        seen_in = seen_sim = -1
        try:
            while True:
                msg = state()
                idx, rows = incoming_since(loop, seen_in)
                msg["raster_in"] = {"index": idx, "rows": rows}
                seen_in = idx[-1] if idx else seen_in
                if live is not None:
                    idx, rows = live.since(seen_sim)
                    msg["raster_sim"] = {"index": idx, "rows": rows}
                    seen_sim = idx[-1] if idx else seen_sim
                    msg["correlation"], msg["simulation_error"] = live.correlation(), live.error
                await socket.send_json(msg)
                await asyncio.sleep(0.04)
        except (WebSocketDisconnect, RuntimeError):
            return

    return app
