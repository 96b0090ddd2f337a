"""Export an artifact's model to ONNX and TorchScript, with a parity check that refuses to write a failing file.

The exportable twin uses the plain-op LIF (same weights, same spikes as spikingjelly's). Parity is checked against
eager PyTorch with spikingjelly's LIF on held-out windows (or seeded random windows when none are given): max
absolute difference of the outputs <= 1e-4, and identical spikes at every level of the SNN encoder (probed through a
separate temporary graph of the same kind).
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

from model.artifacts import add_file, load_artifact, read_config, write_config
from model.base import DecodePath, SimulatePath

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
PARITY_ATOL = 1e-4
OPSET = 17


class ExportError(RuntimeError):
    """Export failed or did not reproduce eager PyTorch; nothing was written."""


class SpikeProbe(nn.Module):
    """The SNN encoder's spikes, flattened and concatenated: (B, n) (for the parity check only)."""

    def __init__(self, model: nn.Module, day: str | None) -> None:
        super().__init__()
        self.model, self.day = model, day
        self.train(model.training)  # exporters restore the wrapper's mode recursively afterwards

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        adapter = self.model._adapter(self.day)
        x = adapter.read_in(spikes) if adapter is not None else spikes
        _, skips = self.model.encode_spikes(x)
        return torch.cat([s.transpose(0, 1).reshape(s.shape[1], -1) for s in skips], dim=1)


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
    normalised space; without them, seeded random windows are used. Returns the parity report."""
    folder = Path(folder)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    eager, contract, config = load_artifact(folder)
    plain, _, _ = load_artifact(folder, lif_impl="plain")
    c = eager.config
    in_ch = eager.days[day].read_in.in_channels if day is not None else c.n_channels
    rng = np.random.default_rng(0)
    if spikes is None:
        spikes = np.log1p(rng.poisson(0.6, (n_random, in_ch, c.window_bins))).astype(np.float32)
    if behavior is None:
        behavior = rng.standard_normal((n_random, c.behavior_dims, c.window_bins)).astype(np.float32)
    spikes, behavior = np.ascontiguousarray(spikes, np.float32), np.ascontiguousarray(behavior, np.float32)
    paths = {"decode": (DecodePath(plain, day), DecodePath(eager, day), spikes, "spikes", "behavior"),
             "simulate": (SimulatePath(plain, day), SimulatePath(eager, day), behavior, "behavior", "rates")}
    report: dict[str, Any] = {}
    has_snn = hasattr(eager, "encode_spikes")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        tmp = Path(tmp)
        staged = []
        for fmt in formats:
            ext = "onnx" if fmt == "onnx" else "pt"
            run = _run_onnx if fmt == "onnx" else _run_torchscript
            for name, (exportable, reference, x, in_name, out_name) in paths.items():
                example = torch.from_numpy(x[:2])  # a batch of 2: a batch of 1 would freeze the batch dimension
                path = tmp / f"{name}.{ext}"
                try:
                    if fmt == "onnx":
                        _export_onnx(exportable, example, path, in_name, out_name)
                    else:
                        _export_torchscript(exportable, example, path)
                    got = run(path, x)
                except Exception as e:  # exporters raise many types
                    raise ExportError(f"{fmt} export of {name} failed: {type(e).__name__}: {e}") from e
                with torch.no_grad():
                    want = reference(torch.from_numpy(x)).numpy()
                diff = float(np.abs(got - want).max())
                entry = {"max_abs_diff": diff, "windows": int(len(x))}
                if has_snn and name == "decode":
                    probe_path = tmp / f"probe.{ext}"
                    probe = SpikeProbe(plain, day)
                    if fmt == "onnx":
                        _export_onnx(probe, example, probe_path, "spikes", "probe")
                    else:
                        _export_torchscript(probe, example, probe_path)
                    with torch.no_grad():
                        ref_spikes = SpikeProbe(eager, day)(torch.from_numpy(x)).numpy()
                    mismatched = int((run(probe_path, x) != ref_spikes).sum())
                    entry["spike_mismatches"] = mismatched
                    entry["spikes_compared"] = int(ref_spikes.size)
                    if mismatched:
                        raise ExportError(f"{fmt} {name}: {mismatched} of {ref_spikes.size} spikes inside the SNN "
                                          "differ from eager PyTorch; nothing was written")
                if not diff <= PARITY_ATOL:
                    raise ExportError(f"{fmt} {name}: max |export - eager| = {diff:.3g} > {PARITY_ATOL}; "
                                      "nothing was written")
                report[f"{name}.{ext}"] = entry
                staged.append((f"{name}.{ext}", path))
        for name, path in staged:  # every file passed: move them into the artifact and record their hashes
            add_file(folder, name, path)
    config = read_config(folder)
    config.setdefault("export", {}).update({"parity": report, "day": day, "opset": OPSET,
                                            "torch": torch.__version__, "atol": PARITY_ATOL})
    write_config(folder, config)
    return report
