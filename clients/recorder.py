"""Record LSL streams into an XDF file, as LabRecorder does: every sample with its original stamp, plus the clock
offset of each stream's host every 5 s so readers (pyxdf) map stamps onto one clock.

``alignnet record session.xdf --stream NAME …`` (or ``Recorder`` in code). LabRecorder is the lab's tool of choice;
this one exists so tests and headless rigs can record without it. The file is written as samples arrive
(``alignnet.recordings.xdf.XdfWriter``); an interrupted recording still reads.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from alignnet.recordings.xdf import XdfWriter
from alignnet.service.http.launcher import ServiceUnavailable

log = logging.getLogger(__name__)

CLOCK_EVERY_S = 5.0  # LabRecorder's interval between clock-offset measurements


class Recorder:
    """Resolves streams by name, then pulls and writes them in a background thread until ``stop()``."""

    def __init__(self, path: str | Path, names: list[str], timeout: float = 10.0) -> None:
        import pylsl
        from pylsl.info import string2fmt

        self.pylsl = pylsl
        format_names = {v: k for k, v in string2fmt.items()}
        if not names:
            raise ValueError("name at least one stream to record")
        self.inlets: list[tuple[int, object, str]] = []
        infos = []
        for name in names:
            found = pylsl.resolve_byprop("name", name, 1, timeout)
            if not found:
                raise ServiceUnavailable(f"LSL stream {name!r} not found within {timeout:g} s")
            infos.append(found[0])
        self.writer = XdfWriter(path)
        self.counts = dict.fromkeys(names, 0)
        for sid, info in enumerate(infos, start=1):
            # raw stamps, as LabRecorder keeps them; the clock offsets written beside them let readers synchronise
            inlet = pylsl.StreamInlet(info, max_buflen=360, processing_flags=pylsl.proc_none)
            inlet.open_stream(timeout=timeout)
            full = inlet.info(timeout)  # with its desc (the resolved info has none)
            fmt = format_names[full.channel_format()]
            self.writer.add_stream(sid, full.as_xml(), fmt, full.channel_count())
            self.inlets.append((sid, inlet, full.name()))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xdf-recorder", daemon=True)
        self._thread.start()

    def _offsets(self) -> None:
        for sid, inlet, name in self.inlets:
            try:
                offset = inlet.time_correction(timeout=1.0)
            except Exception as e:  # a source gone mid-recording: its samples so far stay in the file
                log.warning("clock offset of %s unavailable: %s", name, e)
                continue
            self.writer.clock_offset(sid, self.pylsl.local_clock(), offset)

    def _run(self) -> None:
        next_clock = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_clock:
                self._offsets()
                next_clock = time.monotonic() + CLOCK_EVERY_S
            self._pull(0.02)
        self._pull(0.0)

    def _pull(self, timeout: float) -> None:
        for sid, inlet, name in self.inlets:
            try:
                x, ts = inlet.pull_chunk(timeout=timeout / max(1, len(self.inlets)), max_samples=4096)
            except self.pylsl.util.LostError:
                continue
            if ts:
                self.writer.samples(sid, x, np.asarray(ts))
                self.counts[name] += len(ts)

    def stop(self) -> dict[str, int]:
        """Finish: the last samples, one more clock offset, the footers. Returns samples written per stream."""
        self._stop.set()
        self._thread.join(10.0)
        self._offsets()
        for _, inlet, _ in self.inlets:
            inlet.close_stream()
        self.writer.close()
        return dict(self.counts)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        if not self.writer._f.closed:
            self.stop()
