"""Export an artifact's model to ONNX and TorchScript, with a parity check that refuses to write a failing file.

The exportable twin uses the plain-op LIF (same weights, same spikes as spikingjelly's). Parity is checked against
eager PyTorch with spikingjelly's LIF on held-out windows (or seeded random windows when none are given), probing
the spikes at every level of the SNN encoder through a separate temporary graph of the same kind:

- spikes must be identical, except that ONNX Runtime's convolutions round differently from PyTorch's, so a
  neuron whose membrane potential sits within float rounding of the threshold can flip. Such flips are counted and
  reported; more than ``MAX_FLIP_RATE`` of the spikes compared (1 in 100,000) fails the export;
- the outputs must agree to ``PARITY_ATOL`` (1e-4) on every window whose spikes are identical (a flipped spike
  legitimately changes its own window's output, which is reported separately).
TorchScript runs PyTorch's own kernels and has always matched exactly here.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alignnet.model.artifacts import ExportError, add_file, load_artifact, read_config, write_config  # noqa: F401
from alignnet.model.base import DecodePath, EmbedPath, SimulatePath
from alignnet.model.incremental import STREAM_FILE, IncrementalDecoder, save_weights, stream_weights

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
PARITY_ATOL = 1e-4
MAX_FLIP_RATE = 1e-5
STREAM_CHECK_BINS = 400  # bins streamed through the incremental decoder at export, against the window graph
STREAM_MEDIAN_ATOL = 1e-5  # the median bin's largest difference
MAX_STREAM_DIFF_BINS = 0.25  # bins allowed past PARITY_ATOL (after a flipped spike: up to a receptive field of them)
# and how far any one of them may be (normalised behavior, whose sd is 1): a flipped spike moved a bin by at most
# 0.004 in 48,000 bins of the default model and seven calibrations of it (docs/benchmarks.md, "How far a differing
# bin may be"); five times that, so rounding passes and a bin that is really wrong does not
MAX_SHORTCUT_DIFF = 0.02
MAX_TAIL_DIFF_WINDOWS = 0.25  # windows whose newest bins may pass PARITY_ATOL in the receptive-field graph
OPSET = 17


class SpikeProbe(nn.Module):
    """The spikes of every LIF layer that a path runs, flattened and concatenated: (B, n) (parity check only).

    Collected with forward hooks on the spiking activations, so it works for the decode path (SNN encoder) and the
    simulate path (SNN decoder) alike, and the collected tensors are part of the traced graph."""

    def __init__(self, path: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.path = path
        self.lifs = [m for m in model.modules() if getattr(m, "spiking", False)]
        self.train(path.training)  # exporters restore the wrapper's mode recursively afterwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in self.lifs]
        try:
            self.path(x)
        finally:
            for h in hooks:
                h.remove()
        return torch.cat([s.transpose(0, 1).reshape(s.shape[1], -1) for s in seen], dim=1)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, in_name: str, out_name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant by design
        torch.onnx.export(
            module, (example,), str(path), input_names=[in_name], output_names=[out_name],
            dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}}, opset_version=OPSET, dynamo=False,
        )


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
    traced.save(str(path))


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _run_torchscript(path: Path, x: np.ndarray) -> np.ndarray:
    mod = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return mod(torch.from_numpy(x)).numpy()


def export_artifact(
    folder: str | Path, formats: tuple[str, ...] = FORMATS, day: str | None = None,
    spikes: np.ndarray | None = None, behavior: np.ndarray | None = None, n_random: int = 16,
) -> dict[str, Any]:
    """Write decode/simulate graphs into the artifact. ``spikes``/``behavior`` are held-out windows in the model's
    normalised space; without them, seeded random windows are used. Returns the parity report.

    Stages: every graph exported into a temporary folder and checked against eager PyTorch (``_export_checked``),
    the decode graph's shortcuts (``_export_shortcuts``), then the files that passed moved in with their hashes and
    the report recorded in ``config.json`` (``_record_export``); a failed check writes nothing."""
    folder = Path(folder)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    eager, _, config = load_artifact(folder)
    plain, _, _ = load_artifact(folder, lif_impl="plain")
    day = day if day is not None else config.get("served_day")  # graphs read the served day's own channels
    spikes, behavior = _example_windows(eager, day, spikes, behavior, n_random)
    paths = {"decode": (DecodePath(plain, day), DecodePath(eager, day), spikes, "spikes", "behavior"),
             "simulate": (SimulatePath(plain, day), SimulatePath(eager, day), behavior, "behavior", "rates")}
    if hasattr(eager, "spike_embedding"):  # the latent the service's drift monitor watches
        paths["embed"] = (EmbedPath(plain, day), EmbedPath(eager, day), spikes, "spikes", "latent")
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        tmp = Path(tmp)
        staged = []
        for fmt in formats:
            for name, graph in paths.items():
                path, entry, got = _export_checked(fmt, name, graph, plain, eager, tmp)
                report[path.name] = entry
                staged.append((path.name, path))
                if name == "decode" and fmt == "onnx":
                    staged += _export_shortcuts(eager, plain, day, graph[2], got, path, tmp, report)
        for name, path in staged:  # every file passed: move them into the artifact and record their hashes
            add_file(folder, name, path)
    _record_export(folder, report, day, int(eager.config.window_bins))
    return report


def _example_windows(eager, day: str | None, spikes: np.ndarray | None, behavior: np.ndarray | None,
                     n: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows the graphs are checked on: the given ones, or ``n`` seeded random windows of the served day."""
    c = eager.config
    in_ch = eager.days[day].read_in.in_channels if day is not None else c.n_channels
    rng = np.random.default_rng(0)
    if spikes is None:
        spikes = np.log1p(rng.poisson(0.6, (n, in_ch, c.window_bins))).astype(np.float32)
    if behavior is None:
        behavior = rng.standard_normal((n, c.behavior_dims, c.window_bins)).astype(np.float32)
    return np.ascontiguousarray(spikes, np.float32), np.ascontiguousarray(behavior, np.float32)


def _export_to(fmt: str, module, example: torch.Tensor, path: Path, in_name: str, out_name: str) -> None:
    if fmt == "onnx":
        _export_onnx(module, example, path, in_name, out_name)
    else:
        _export_torchscript(module, example, path)


def _export_checked(fmt: str, name: str, graph: tuple, plain, eager, tmp: Path
                    ) -> tuple[Path, dict[str, Any], np.ndarray]:
    """One graph exported to ``tmp`` and run on its windows: (its file, its parity entry, its outputs). An
    ExportError (and nothing written) where it differs from eager PyTorch by more than float rounding."""
    exportable, reference, x, in_name, out_name = graph
    ext = "onnx" if fmt == "onnx" else "pt"
    run = _run_onnx if fmt == "onnx" else _run_torchscript
    example = torch.from_numpy(x[:2])  # a batch of 2: a batch of 1 would freeze the batch dimension
    path = tmp / f"{name}.{ext}"
    try:
        _export_to(fmt, exportable, example, path, in_name, out_name)
        got = run(path, x)
    except Exception as e:  # exporters raise many types
        raise ExportError(f"{fmt} export of {name} failed: {type(e).__name__}: {e}") from e
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    clean = np.ones(len(x), bool)  # windows whose SNN spikes are identical
    entry: dict[str, Any] = {"windows": int(len(x))}
    if hasattr(eager, "encode_spikes"):
        clean = _check_spikes(fmt, name, graph, plain, eager, example, tmp / f"probe.{ext}", run, entry)
    if not clean.any():
        raise ExportError(f"{fmt} {name}: no window with identical spikes to compare outputs on; nothing was written")
    diff = float(np.abs(got - want)[clean].max())
    entry["max_abs_diff"] = diff
    if (~clean).any():
        entry["max_abs_diff_windows_with_flips"] = float(np.abs(got - want)[~clean].max())
    if not diff <= PARITY_ATOL:
        raise ExportError(f"{fmt} {name}: max |export - eager| = {diff:.3g} > {PARITY_ATOL}; nothing was written")
    return path, entry, got


def _check_spikes(fmt: str, name: str, graph: tuple, plain, eager, example: torch.Tensor, probe_path: Path, run,
                  entry: dict[str, Any]) -> np.ndarray:
    """The SNN's spikes inside the exported graph against eager PyTorch's: which windows have identical spikes
    (outputs are compared on those), counted into ``entry``; an ExportError where more differ than float rounding
    at the threshold explains."""
    exportable, reference, x, in_name, _ = graph
    _export_to(fmt, SpikeProbe(exportable, plain), example, probe_path, in_name, "probe")
    with torch.no_grad():
        ref_spikes = SpikeProbe(reference, eager)(torch.from_numpy(x)).numpy()
    flips = run(probe_path, x) != ref_spikes
    clean = ~flips.any(axis=1)
    entry.update(spike_mismatches=int(flips.sum()), spikes_compared=int(ref_spikes.size),
                 windows_with_flips=int((~clean).sum()))
    if flips.sum() > MAX_FLIP_RATE * ref_spikes.size:
        raise ExportError(f"{fmt} {name}: {int(flips.sum())} of {ref_spikes.size} spikes inside the SNN differ from "
                          "eager PyTorch (more than float rounding at the threshold explains); nothing was written")
    return clean


def _export_shortcuts(eager, plain, day: str | None, x: np.ndarray, got: np.ndarray, decode_path: Path, tmp: Path,
                      report: dict[str, Any]) -> list[tuple[str, Path]]:
    """The decode graph's shortcuts for the live path — the receptive-field graph and the incremental stream —
    each written only where it matches the decode graph; their entries go into ``report``."""
    staged = []
    tail = _export_tail(eager, plain, day, x, got, tmp)
    if tail is not None:
        report["decode_tail.onnx"] = tail
        if tail["written"]:
            staged.append(("decode_tail.onnx", tmp / "decode_tail.onnx"))
    in_ch = x.shape[1]
    stream = _export_stream(eager, plain, day, in_ch, decode_path, tmp)
    if stream is not None:
        report[STREAM_FILE] = stream
        if stream["written"]:
            staged.append((STREAM_FILE, tmp / STREAM_FILE))
    return staged


def _record_export(folder: Path, report: dict[str, Any], day: str | None, window_bins: int) -> None:
    """The parity report and the shortcuts written, in ``config.json`` (an older shortcut not written again is
    dropped)."""
    config = read_config(folder)
    config.setdefault("export", {}).update({"parity": report, "day": day, "opset": OPSET,
                                            "torch": torch.__version__, "atol": PARITY_ATOL})
    if report.get("decode_tail.onnx", {}).get("written"):
        config["export"]["tail"] = {k: report["decode_tail.onnx"][k] for k in ("bins", "receptive_field", "hops")}
    else:
        _drop_shortcut(folder, config, "tail", "decode_tail.onnx")
    if report.get(STREAM_FILE, {}).get("written"):
        config["export"]["stream"] = {"file": STREAM_FILE, "window_bins": window_bins}
    else:
        _drop_shortcut(folder, config, "stream", STREAM_FILE)
    write_config(folder, config)


def _drop_shortcut(folder: Path, config: dict[str, Any], key: str, file: str) -> None:
    """No shortcut graph this export (none, or one that failed its check): an older one must not stay behind."""
    config["export"].pop(key, None)
    if config["files"].pop(file, None) is not None:
        (folder / file).unlink(missing_ok=True)


def _mostly_equal(diff: np.ndarray, max_fraction: float) -> tuple[float, int, bool]:
    """The check of a shortcut graph against the window graph, from each window's (or bin's) largest difference:
    (median, how many past ``PARITY_ATOL``, passed). A spike that rounding flips at the threshold moves a few, and
    each by little; a wrong shortcut moves them all, or some by much. Passed: the median within
    ``STREAM_MEDIAN_ATOL``, at most ``max_fraction`` past ``PARITY_ATOL``, and none past ``MAX_SHORTCUT_DIFF`` (a
    NaN fails)."""
    median, over = float(np.median(diff)), int((diff > PARITY_ATOL).sum())
    bounded = bool(np.all(diff <= MAX_SHORTCUT_DIFF))
    return median, over, bool(median <= STREAM_MEDIAN_ATOL and over <= max_fraction * len(diff) and bounded)


def _export_tail(eager, plain, day: str | None, x: np.ndarray, full: np.ndarray, tmp: Path) -> dict[str, Any] | None:
    """``decode_tail.onnx``: the causal decoder on its receptive field only (``training/tail.py``), written when its
    newest bins match the full window's ONNX graph: the median window within ``STREAM_MEDIAN_ATOL`` and at most
    ``MAX_TAIL_DIFF_WINDOWS`` of the windows past ``PARITY_ATOL``. The two graphs usually agree exactly, but not
    always: the demo's live calibration met 1.26e-4 in 2 runs of 10 and, when this check was all-or-nothing, failed
    whole on it (ONNX Runtime may run the cropped input's convolutions another way, and a spike at the threshold
    that rounding flips moves its window's newest bins). A wrong receptive field moves every window. Where the check
    fails the artifact goes without the file (the live path decodes whole windows, which passed their own check),
    with a warning and the figures in the report."""
    from alignnet.training.tail import tail_model, tail_plan

    n_in = x.shape[1]
    plan = tail_plan(eager, day, n_in)
    if plan is None:
        return None
    bins, hops = plan["bins"], plan["hops"]
    path = tmp / "decode_tail.onnx"
    short = np.ascontiguousarray(x[..., -bins:])
    try:
        _export_onnx(DecodePath(tail_model(plain, bins).eval(), day), torch.from_numpy(short[:2]), path,
                     "spikes", "behavior")
        got = _run_onnx(path, short)
    except Exception as e:  # exporters raise many types
        raise ExportError(f"onnx export of decode_tail failed: {type(e).__name__}: {e}") from e
    diff = np.abs(got[..., -hops:] - full[..., -hops:]).reshape(len(x), -1).max(axis=1)  # per window
    median, over, written = _mostly_equal(diff, MAX_TAIL_DIFF_WINDOWS)
    report = {**plan, "windows": int(len(x)), "max_abs_diff_newest_bins": float(diff.max()),
              "median_abs_diff_newest_bins": median, "windows_over_atol": over, "written": written}
    if not written:
        log.warning("decode_tail.onnx not written: the newest %d bins of %d of %d windows differ from the full "
                    "window's by more than %g (max %.3g, allowed %g; median %.3g); the live path will decode whole "
                    "windows", hops, report["windows_over_atol"], len(x), PARITY_ATOL, diff.max(), MAX_SHORTCUT_DIFF,
                    report["median_abs_diff_newest_bins"])
    return report


def _export_stream(eager, plain, day: str | None, n_in: int, decode_onnx: Path,
                   tmp: Path) -> dict[str, Any] | None:
    """``decode_stream.npz``: the causal AlignNet's weights for incremental decoding (``model/incremental.py``),
    written when a stream of seeded random bins decodes as the newest bin of each window through the exported graph.

    A spike at the threshold that rounding flips (numpy and ONNX Runtime sum in different orders) changes the bins
    after it, up to a receptive field's worth, so some bins may differ; a wrong stream differs everywhere. It is
    written when the median bin is within ``STREAM_MEDIAN_ATOL`` and at most ``MAX_STREAM_DIFF_BINS`` of the bins
    are past ``PARITY_ATOL``. Otherwise the artifact goes without it (the live path decodes windows) and the report
    says why: the window graphs are what the artifact serves, and they passed their own checks. A window shorter
    than the receptive field never matches (its newest bin sees the window's zero padding, the stream sees the
    bins before it), so that case is named rather than measured: the receptive field as measured in the window
    reaches its first bin."""
    if not getattr(plain, "causal_decode", False) or not hasattr(plain, "spike_encoder"):
        return None
    from alignnet.model.streaming import offline_twin
    from alignnet.training.tail import receptive_field

    c = plain.config
    rf = receptive_field(eager, day, n_in)
    if rf >= c.window_bins:
        log.warning("decode_stream.npz not written: the decoder's newest bin reaches the first bin of its %d-bin "
                    "window (a window no longer than its receptive field); the live path will decode windows",
                    c.window_bins)
        return {"written": False, "receptive_field": rf, "window_bins": int(c.window_bins),
                "reason": "window no longer than the receptive field"}
    weights = stream_weights(plain, day)
    x = np.log1p(np.random.default_rng(1).poisson(0.6, (STREAM_CHECK_BINS, n_in))).astype(np.float32)
    want = offline_twin(lambda w: _run_onnx(decode_onnx, w), x, c.window_bins)  # (T, D), normalised
    got = IncrementalDecoder(weights, c.window_bins).run(x.T[None])[0].T
    diff = np.abs(got - want).max(axis=1)
    median, over, written = _mostly_equal(diff, MAX_STREAM_DIFF_BINS)
    report = {"bins": int(len(diff)), "max_abs_diff": float(diff.max()), "median_abs_diff": median,
              "bins_over_atol": over}
    if not written:
        report["written"] = False
        log.warning("decode_stream.npz not written: %d of %d bins differ from the window graph's newest bin by more "
                    "than %g (max %.3g, allowed %g; median %.3g); the live path will decode windows",
                    report["bins_over_atol"], len(diff), PARITY_ATOL, report["max_abs_diff"], MAX_SHORTCUT_DIFF,
                    report["median_abs_diff"])
        return report
    save_weights(tmp / STREAM_FILE, weights)
    return {**report, "written": True}
