"""Engine work off the event loop: a bounded pool of worker threads with a bounded queue in front.

Parsing a big body, the network itself and encoding the answer all run in a worker, so ``/health`` and
``/metrics`` answer in milliseconds whatever is decoding; a request that finds every worker busy and the queue full
is refused at once (503 with Retry-After) instead of piling up memory. ONNX Runtime and torch release the GIL
while they compute.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alignnet.service.http.errors import Busy


def _libc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_TRIM = _libc_trim()


def release_memory() -> None:
    """Hand freed heap back to the system after a big request (glibc keeps it otherwise: 256-window requests left
    the service 250 MB larger for good). No library does this; it is one libc call."""
    if _TRIM is not None:
        _TRIM(0)


class EnginePool:
    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.capacity = workers, workers + queue
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="engine")
        self.pending = 0  # admitted requests, touched only on the event loop's thread

    def admit(self) -> None:
        """Reserve a place (Busy when none is left); pair with ``release``."""
        if self.pending >= self.capacity:
            raise Busy(f"all {self.workers} engine workers are busy and {self.capacity - self.workers} requests "
                       "wait; retry shortly")
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    async def run(self, fn: Callable[..., Any], *args: Any, trim: bool = False) -> Any:
        """``fn(*args)`` in a worker; with ``trim``, freed memory goes back to the system afterwards."""

        def job() -> Any:
            try:
                return fn(*args)
            finally:
                if trim:
                    release_memory()

        return await asyncio.get_running_loop().run_in_executor(self.executor, job)

    def status(self) -> dict[str, int]:
        return {"workers": self.workers, "in_flight": self.pending, "capacity": self.capacity}

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
