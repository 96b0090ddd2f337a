"""XDF files (the format LabRecorder writes): read with pyxdf, written by a small writer of the XDF specification.

Reading is pyxdf's (streams, clock synchronisation, jitter removal). ``import_xdf`` picks the spike and behavior
streams by name or type and turns them into a day through ``bin_day``, the path every other importer takes.

Writing: LabRecorder is a C++ application and no maintained Python package writes XDF, so ``XdfWriter`` is a
hand-written writer of XDF 1.0 (https://github.com/sccn/xdf/wiki/Specifications): a file header, one header per
stream (the stream's LSL info XML), sample chunks, clock offsets and a footer per stream, written as they arrive
so a recording cut short still reads (pyxdf scans past a missing footer).

Conventions: a regular stream's sample describes the interval that ends at its stamp (the replayer and the
service's outlets stamp a bin when it ends), so a spike count sample's spikes are placed mid-interval and a
behavior sample at its interval's middle, which makes a recorded replay import back to the bins that were sent.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any, BinaryIO
from xml.sax.saxutils import escape

import numpy as np

from alignnet.recordings.checks import check_counts
from alignnet.recordings.dataset import DataError, Day
from alignnet.recordings.importers import bin_day

# XDF chunk tags
FILE_HEADER, STREAM_HEADER, SAMPLES, CLOCK_OFFSET, BOUNDARY, STREAM_FOOTER = 1, 2, 3, 4, 5, 6
# LSL channel format -> little-endian numpy type (strings are written apart)
NUMERIC = {"float32": "<f4", "double64": "<f8", "int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8"}


def _varlen(n: int) -> bytes:
    """XDF variable-length integer: one byte saying how many bytes follow (1, 4 or 8), then the value."""
    if n < 256:
        return struct.pack("<BB", 1, n)
    if n < 2 ** 32:
        return struct.pack("<BI", 4, n)
    return struct.pack("<BQ", 8, n)


class XdfWriter:
    """Writes an XDF 1.0 file chunk by chunk; thread-safe (one lock around each chunk)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self.streams: dict[int, dict[str, Any]] = {}
        self._f.write(b"XDF:")
        self._chunk(FILE_HEADER, b'<?xml version="1.0"?><info><version>1.0</version></info>')

    def _chunk(self, tag: int, content: bytes) -> None:
        with self._lock:
            self._f.write(_varlen(len(content) + 2) + struct.pack("<H", tag) + content)

    def add_stream(self, stream_id: int, info_xml: str, channel_format: str, channel_count: int) -> None:
        """Declare a stream with its LSL info XML (``StreamInfo.as_xml()``)."""
        if channel_format != "string" and channel_format not in NUMERIC:
            raise ValueError(f"XDF writer: channel format {channel_format!r} is not supported")
        self.streams[stream_id] = {"format": channel_format, "channels": int(channel_count), "first": None,
                                   "last": None, "count": 0, "offsets": []}
        self._chunk(STREAM_HEADER, struct.pack("<I", stream_id) + info_xml.encode("utf-8"))

    def samples(self, stream_id: int, values: Any, stamps: np.ndarray) -> None:
        """One chunk of samples: ``values`` (n, channels) numbers, or n lists of strings; ``stamps`` (n,)."""
        s = self.streams[stream_id]
        stamps = np.asarray(stamps, np.float64)
        n = len(stamps)
        if not n:
            return
        parts = [struct.pack("<I", stream_id), _varlen(n)]
        if s["format"] == "string":
            for t, row in zip(stamps.tolist(), values):
                parts.append(struct.pack("<Bd", 8, t))
                for v in row:
                    b = str(v).encode("utf-8")
                    parts += [_varlen(len(b)), b]
        else:
            x = np.ascontiguousarray(np.asarray(values).reshape(n, s["channels"]), NUMERIC[s["format"]])
            # each sample: the byte 8 (a stamp follows), the stamp as a double, then the channel values
            rec = np.dtype([("n", "u1"), ("t", "<f8"), ("x", x.dtype, (s["channels"],))])
            packed = np.empty(n, rec)
            packed["n"], packed["t"], packed["x"] = 8, stamps, x
            parts.append(packed.tobytes())
        self._chunk(SAMPLES, b"".join(parts))
        s["first"] = s["first"] if s["first"] is not None else float(stamps[0])
        s["last"], s["count"] = float(stamps[-1]), s["count"] + n

    def clock_offset(self, stream_id: int, collection_time: float, offset: float) -> None:
        self.streams[stream_id]["offsets"].append((collection_time, offset))
        self._chunk(CLOCK_OFFSET, struct.pack("<Idd", stream_id, collection_time, offset))

    def close(self) -> None:
        if self._f.closed:
            return
        for sid, s in self.streams.items():
            offsets = "".join(f"<offset><time>{t!r}</time><value>{v!r}</value></offset>" for t, v in s["offsets"])
            xml = (f'<?xml version="1.0"?><info><first_timestamp>{s["first"] or 0.0!r}</first_timestamp>'
                   f'<last_timestamp>{s["last"] or 0.0!r}</last_timestamp><sample_count>{s["count"]}</sample_count>'
                   f"<clock_offsets>{offsets}</clock_offsets></info>")
            self._chunk(STREAM_FOOTER, struct.pack("<I", sid) + xml.encode("utf-8"))
        self._f.close()

    def __enter__(self) -> XdfWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def info_xml(name: str, type_: str, channel_count: int, srate: float, channel_format: str, source_id: str,
             labels: list[str] | None = None) -> str:
    """A stream header's XML for streams that do not come from LSL (tests, conversions)."""
    channels = "".join(f"<channel><label>{escape(str(x))}</label></channel>" for x in labels or [])
    return (f'<?xml version="1.0"?><info><name>{escape(name)}</name><type>{escape(type_)}</type>'
            f"<channel_count>{channel_count}</channel_count><nominal_srate>{srate!r}</nominal_srate>"
            f"<channel_format>{channel_format}</channel_format><source_id>{escape(source_id)}</source_id>"
            f"<desc><channels>{channels}</channels></desc></info>")


# ---- reading -----------------------------------------------------------------------------------------------------
def where_it_ends(path: Path) -> str | None:
    """None for a whole XDF file, else where and how it ends early: a chunk cut off by the end of the file, or
    streams without the footer a recorder writes when it stops. Walks the chunk headers only (pyxdf reads a cut
    file without a word, so the check is ours)."""
    size, ends, headers, footers = path.stat().st_size, None, set(), set()
    with open(path, "rb") as f:
        if f.read(4) != b"XDF:":
            return None  # not XDF at all: pyxdf's error names it
        while (at := f.tell()) < size:
            width = f.read(1)[0]
            if width not in (1, 4, 8):
                return None  # not a chunk: pyxdf's error says the file is unreadable
            raw = f.read(width)
            if len(raw) < width:
                ends = f"a chunk header at byte {at:,} is cut off"
                break
            length = int.from_bytes(raw, "little")
            body = f.tell()
            if body + length > size:
                ends = f"the chunk at byte {at:,} declares {length:,} bytes but the file ends {size - body:,} bytes in"
                break
            head = f.read(min(length, 6))
            if len(head) == 6 and int.from_bytes(head[:2], "little") in (STREAM_HEADER, STREAM_FOOTER):
                sid = int.from_bytes(head[2:6], "little")
                (headers if int.from_bytes(head[:2], "little") == STREAM_HEADER else footers).add(sid)
            f.seek(body + length)
    if ends is None and headers - footers:
        ends = f"stream(s) {sorted(headers - footers)} have no footer, so the recording was not stopped cleanly"
    return None if ends is None else f"{ends} (of {size:,} bytes)"


def load_streams(path: str | Path, dejitter: bool = True) -> list[dict]:
    """Every stream of a whole XDF file, or a DataError naming the file (and, for a cut-off one, where it ends).
    Streams from several hosts are put on one clock by pyxdf's clock synchronisation (from the recorded clock
    offsets); streams that all come from one host already share its clock, and their offsets are measurement noise of
    tens of microseconds, so their stamps are kept as recorded (bins stamped alike on two streams stay alike)."""
    import pyxdf

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")

    def load(sync: bool) -> list[dict]:
        try:
            return pyxdf.load_xdf(str(path), synchronize_clocks=sync, dejitter_timestamps=dejitter,
                                  verbose=False)[0]
        except Exception as e:  # pyxdf raises many types for a truncated or foreign file
            raise DataError(f"{path}: not a readable XDF file ({type(e).__name__}: {e})") from e

    if problem := where_it_ends(path):
        raise DataError(f"{path}: the file is truncated: {problem}. A recording cut short is refused rather than "
                        "imported in part (its bins would look like a whole session)")
    streams = load(False)
    if not streams:  # pyxdf skips what it cannot parse
        raise DataError(f"{path}: not a readable XDF file (no stream in it)")
    if len({meta(s, "hostname") for s in streams}) > 1:
        streams = load(True)
    return streams


def meta(stream: dict, key: str, default: str = "") -> str:
    """A top-level field of a stream's info (pyxdf keeps each as a one-element list)."""
    v = stream["info"].get(key)
    return (v[0] if isinstance(v, list) and v else v) or default


def desc(stream: dict) -> dict:
    d = stream["info"].get("desc")
    return (d[0] if isinstance(d, list) and d else None) or {}


def channel_labels(stream: dict) -> list[str]:
    chans = (desc(stream).get("channels") or [{}])[0] or {}
    return [(c.get("label") or [""])[0] for c in chans.get("channel", [])]


def describe(streams: list[dict]) -> str:
    return ", ".join(f"'{meta(s, 'name')}' ({meta(s, 'type')}, {meta(s, 'channel_count')} ch, "
                     f"{float(meta(s, 'nominal_srate', '0')):g} Hz, {len(s['time_stamps'])} samples)"
                     for s in streams) or "none"


def pick(streams: list[dict], what: str, choice: str | None, default_type: str, path: Path) -> dict:
    """The stream named ``choice`` (or, failing that, of type ``choice``), else the one stream of ``default_type``."""
    if choice:
        found = [s for s in streams if meta(s, "name") == choice] or \
            [s for s in streams if meta(s, "type") == choice]
    else:
        found = [s for s in streams if meta(s, "type") == default_type]
    what_flag = f"--{what}-stream"
    if not found:
        asked = f"named or typed {choice!r}" if choice else f"of type {default_type!r}"
        raise DataError(f"{path}: no {what} stream {asked}; streams in the file: {describe(streams)}; pick one with "
                        f"{what_flag} NAME")
    if len(found) > 1:
        raise DataError(f"{path}: {len(found)} {what} streams match ({describe(found)}); pick one with "
                        f"{what_flag} NAME")
    if not len(found[0]["time_stamps"]):
        raise DataError(f"{path}: the {what} stream '{meta(found[0], 'name')}' holds no samples")
    return found[0]


def numbers(stream: dict, what: str, path: Path) -> np.ndarray:
    """A stream's samples (n, channels) as float64, or a DataError when it carries text (markers, not data)."""
    x = np.asarray(stream["time_series"])
    if x.ndim != 2 or x.dtype.kind not in "iuf":
        raise DataError(f"{path}: {what} stream '{meta(stream, 'name')}' carries text, not numbers")
    return x.astype(np.float64)


def spike_times(stream: dict, path: Path) -> tuple[np.ndarray, np.ndarray, int, float | None]:
    """(spike times, channels, channel count, the stream's sample period or None) of a spike stream: regular
    streams carry counts per sample; an irregular one carries one spike per sample (its value: the channel)."""
    x, t = numbers(stream, "spike", path), np.asarray(stream["time_stamps"], np.float64)
    rate = float(meta(stream, "nominal_srate", "0"))
    if rate <= 0:  # spike events: the value is the channel index
        if x.ndim != 2 or x.shape[1] != 1:
            raise DataError(f"{path}: irregular spike stream '{meta(stream, 'name')}' has {x.shape[1]} channels; an "
                            "event stream carries one: the channel index of each spike")
        ch = x[:, 0]
        if not np.all(np.isfinite(ch)) or (ch < 0).any() or (ch != np.round(ch)).any():
            raise DataError(f"{path}: spike events must be non-negative channel indices")
        n = max(len(channel_labels(stream)), int(ch.max()) + 1 if len(ch) else 0)
        return t, ch.astype(np.int64), n, None
    dt = 1.0 / rate
    check_counts(x, dt, f"{path}: spike stream '{meta(stream, 'name')}': ")
    ti, ci = np.nonzero(x)
    reps = x[ti, ci].astype(np.int64)
    return np.repeat(t[ti] - dt / 2, reps), np.repeat(ci, reps), x.shape[1], dt


def import_xdf(path: str | Path, bin_s: float | None, smooth_s: float | None, spikes: str | None = None,
               behavior: str | None = None, name: str | None = None) -> Day:
    """A recorded LSL session -> a day: the spike stream (default: the one of type 'Spikes') and the behavior stream
    (default: type 'Behavior'), on their synchronised LSL stamps, binned at ``bin_s`` (default: the spike stream's
    own sample period, or 20 ms for spike events) and behavior smoothed over ``smooth_s`` (default: 2 bins for spike
    events, none for a stream of counts). The whole overlap of the two streams is one continuous session."""
    path = Path(path)
    streams = load_streams(path)
    s_spk = pick(streams, "spike", spikes, "Spikes", path)
    s_beh = pick(streams, "behavior", behavior, "Behavior", path)
    times, chans, n_channels, period = spike_times(s_spk, path)
    bin_s = bin_s or period or 0.02
    if period is not None and abs(bin_s / period - round(bin_s / period)) > 1e-6:
        raise DataError(f"{path}: the spike stream runs at {1 / period:g} Hz; bins of {bin_s * 1e3:g} ms are not a "
                        "whole number of its samples")
    smooth_s = smooth_s if smooth_s is not None else (0.0 if period else 2 * bin_s)
    beh = numbers(s_beh, "behavior", path)
    b_rate = float(meta(s_beh, "nominal_srate", "0"))
    b_period = 1.0 / b_rate if b_rate > 0 else 0.0
    b_end = np.asarray(s_beh["time_stamps"], np.float64)  # each sample covers (stamp - period, stamp]
    bt = b_end - b_period / 2
    s_t = np.asarray(s_spk["time_stamps"], np.float64)
    start = max(s_t[0] - (period or 0.0), b_end[0] - b_period)
    stop = min(s_t[-1], b_end[-1])
    if stop - start < 2 * bin_s:
        raise DataError(f"{path}: the spike and behavior streams overlap for {max(stop - start, 0):.3f} s only")
    day = bin_day(name or path.stem, times, chans, n_channels, bt, beh, np.array([start]), np.array([stop]), None,
                  bin_s, smooth_s, source=str(path))
    day.extra["xdf_streams"] = np.array([meta(s_spk, "name"), meta(s_beh, "name")])
    return day
