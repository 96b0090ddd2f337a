"""The consumer side of the service's LSL output: read a decoded stream and time every sample against the input
stamp it carries (the bridge stamps each output with the LSL time of its input bin), as the demo and
``alignnet bench lsl`` do."""

from __future__ import annotations

import time

import numpy as np

from alignnet.service.http.launcher import ServiceUnavailable


class DecodedStream:
    """An inlet on ``name`` (resolved within ``timeout`` seconds); ``receive`` takes what arrives, records each
    sample's latency (now - its stamp) and keeps the newest sample."""

    def __init__(self, name: str, timeout: float = 30.0, hint: str = "") -> None:
        import pylsl

        self.pylsl = pylsl
        found = pylsl.resolve_byprop("name", name, 1, timeout)
        if not found:
            raise ServiceUnavailable(f"the service's decoded stream '{name}' did not appear within {timeout:g} s"
                                     + (f": {hint}" if hint else ""))
        # a short buffer and no post-processing: stamps stay the input's own, latency cannot hide in a backlog
        self.inlet = pylsl.StreamInlet(found[0], max_buflen=2, processing_flags=pylsl.proc_none)
        self.inlet.open_stream(timeout=10.0)
        self.latencies: list[float] = []
        self.last: np.ndarray | None = None
        self.received = 0

    def close(self) -> None:
        """Close the inlet before the service stops (an open inlet reports the outlet's end as an error)."""
        self.inlet.close_stream()

    def receive(self, until: float) -> int:
        """Take the samples that arrive before ``until`` (monotonic clock; in the past: only those already here).
        Returns how many arrived."""
        n = 0
        while True:
            sample, stamp = self.inlet.pull_sample(timeout=max(0.0, until - time.monotonic()))
            if sample is None:
                self.received += n
                return n
            self.latencies.append(self.pylsl.local_clock() - stamp)
            self.last = np.asarray(sample, np.float64)
            n += 1
