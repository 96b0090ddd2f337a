"""Runtime engines behind one interface: ``decode(counts) -> behavior`` and ``simulate(behavior) -> rates``.

ONNX Runtime (default; threads configurable), TorchScript, or eager PyTorch. All three apply the artifact's data
contract identically: the same ``preprocess``/``postprocess`` functions of ``model.contract`` around the network.
Inputs and outputs are in data units: spike counts per bin (B, C, T) in, behavior (B, D, T) out; behavior in,
expected spike counts per bin (B, C, T) out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from alignnet.model.artifacts import ArtifactError, verify_files
from alignnet.model.contract import DataContract

log = logging.getLogger(__name__)

ENGINES = ("onnx", "torchscript", "eager")


class Engine:
    """Base: contract handling shared by every engine; subclasses run the two graphs on normalised arrays."""

    kind = "?"
    files: tuple[str, ...] = ()

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        self.folder = Path(folder)
        self.threads = int(threads)
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.config = check_artifact(self.folder, self.kind)
        self.contract = DataContract.from_dict(self.config["contract"])
        if not self.contract.is_fitted:
            raise ArtifactError(f"{self.folder}: the artifact's contract has no normalisation statistics")

    # ---- the interface -----------------------------------------------------------------------------------------
    def decode(self, counts: np.ndarray) -> np.ndarray:
        """(B, C, T) spike counts -> (B, D, T) behavior in data units."""
        x = self.contract.preprocess_spikes(counts)
        return self.contract.postprocess_behavior(self._decode(x))

    def simulate(self, behavior: np.ndarray) -> np.ndarray:
        """(B, D, T) behavior in data units -> (B, C, T) non-negative expected spike counts per bin."""
        y = self.contract.preprocess_behavior(behavior)
        return self.contract.postprocess_rates(self._simulate(y))

    def embed(self, counts: np.ndarray) -> np.ndarray | None:
        """(B, C, T) spike counts -> (B, L) AlignNet latent vectors (None where the artifact has no embed graph:
        other models, or an artifact exported before it existed)."""
        if not self.can_embed:
            return None
        return self._run("embed", np.ascontiguousarray(self.contract.preprocess_spikes(counts), np.float32))

    @property
    def can_embed(self) -> bool:
        return False

    def _decode(self, x: np.ndarray) -> np.ndarray:
        return self._run("decode", np.ascontiguousarray(x, np.float32))

    def _simulate(self, y: np.ndarray) -> np.ndarray:
        return self._run("simulate", np.ascontiguousarray(y, np.float32))

    def _run(self, path: str, x: np.ndarray) -> np.ndarray:
        """Run the 'decode' or 'simulate' graph on a normalised float32 array."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"engine": self.kind, "threads": self.threads, "model": self.config["model"],
                "artifact": str(self.folder)}


class OnnxEngine(Engine):
    kind = "onnx"
    files = ("decode.onnx", "simulate.onnx")

    def __init__(self, folder: str | Path, threads: int = 1, optimization: str = "all") -> None:
        super().__init__(folder, threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if optimization not in levels:
            raise ValueError(f"optimization must be one of {', '.join(levels)}, got {optimization!r}")
        opts.graph_optimization_level = levels[optimization]
        # spinning threads burn a core between decodes; a real-time loop on a shared machine is better without
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        optional = ("embed",) if "embed.onnx" in self.config["files"] else ()
        for name in ("decode", "simulate", *optional):
            path = self.folder / f"{name}.onnx"
            try:
                self.sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types for a corrupt graph
                raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {e}); "
                                    "re-export the artifact") from e

    @property
    def can_embed(self) -> bool:
        return "embed" in self.sessions

    def _run(self, path: str, x: np.ndarray) -> np.ndarray:
        sess = self.sessions[path]
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class TorchScriptEngine(Engine):
    kind = "torchscript"
    files = ("decode.pt", "simulate.pt")

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        super().__init__(folder, threads)
        import torch

        torch.set_num_threads(self.threads)
        self.torch = torch
        self.modules = {}
        optional = ("embed",) if "embed.pt" in self.config["files"] else ()
        for name in ("decode", "simulate", *optional):
            path = self.folder / f"{name}.pt"
            try:
                self.modules[name] = torch.jit.load(str(path), map_location="cpu").eval()
            except Exception as e:
                raise ArtifactError(f"{path}: TorchScript cannot load it ({type(e).__name__}: {e}); "
                                    "re-export the artifact") from e

    @property
    def can_embed(self) -> bool:
        return "embed" in self.modules

    def _run(self, path: str, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.modules[path](self.torch.from_numpy(x)).numpy()


class EagerEngine(Engine):
    """Eager PyTorch with the training-time model (spikingjelly's LIF), or the plain-op twin."""

    kind = "eager"

    def __init__(self, folder: str | Path, threads: int = 1, lif_impl: str | None = None) -> None:
        super().__init__(folder, threads)
        import torch

        from alignnet.model.artifacts import load_artifact

        torch.set_num_threads(self.threads)
        self.torch = torch
        self.model, _, _ = load_artifact(self.folder, lif_impl=lif_impl)

    @property
    def can_embed(self) -> bool:
        return hasattr(self.model, "spike_embedding")

    def _run(self, path: str, x: np.ndarray) -> np.ndarray:
        fn = {"decode": self.model.decode, "simulate": self.model.simulate,
              "embed": getattr(self.model, "spike_embedding", None)}[path]
        with self.torch.inference_mode():  # through the served day's read-in, as the exported graphs are
            return fn(self.torch.from_numpy(x), self.config.get("served_day")).numpy()


def check_artifact(folder: str | Path, kind: str) -> dict:
    """Check that an artifact holds intact files for an engine (without loading it); returns its config."""
    classes = {"onnx": OnnxEngine, "torchscript": TorchScriptEngine, "eager": EagerEngine}
    if kind not in classes:
        raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
    folder = Path(folder)
    files = list(classes[kind].files) or ["model.safetensors"]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: no {', '.join(missing)}; run `alignnet export {folder}` first")
    return verify_files(folder, files)


def load_engine(folder: str | Path, kind: str = "onnx", threads: int = 1) -> Engine:
    """Open an artifact with the named engine ('onnx' by default)."""
    if kind == "onnx":
        return OnnxEngine(folder, threads)
    if kind == "torchscript":
        return TorchScriptEngine(folder, threads)
    if kind == "eager":
        return EagerEngine(folder, threads)
    raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
