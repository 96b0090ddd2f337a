"""Runtime engines behind one interface: ``decode(counts) -> behavior`` and ``simulate(behavior) -> rates``.

ONNX Runtime (default; threads configurable), TorchScript, or eager PyTorch. All three apply the artifact's data
contract identically: the same ``preprocess``/``postprocess`` functions of ``model.contract`` around the network.
Inputs and outputs are in data units: spike counts per bin (B, C, T) in, behavior (B, D, T) out; behavior in,
expected spike counts per bin (B, C, T) out.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from alignnet.model.artifacts import ArtifactError, verify_files
from alignnet.model.contract import DataContract
from alignnet.model.incremental import STREAM_FILE, load_weights
from alignnet.service.live.pipeline import LiveStream, RowGroup

log = logging.getLogger(__name__)

ENGINES = ("onnx", "torchscript", "eager")
_ROWS_LOCK = threading.Lock()  # an engine's incremental rows are made once, whichever stream asks first


class Engine:
    """Base: contract handling shared by every engine; subclasses run the two graphs on normalised arrays."""

    kind = "?"
    files: tuple[str, ...] = ()

    def __init__(self, folder: str | Path, threads: int = 1, key: str | None = None, chunk: int = 16) -> None:
        self.folder = Path(folder)
        self.threads = int(threads)
        self.chunk = int(chunk)
        if self.threads < 1 or self.chunk < 1:
            raise ValueError(f"threads and chunk must be >= 1, got {threads} and {chunk}")
        self.config = check_artifact(self.folder, self.kind, key)
        try:
            self.contract = DataContract.from_dict(self.config["contract"])
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{self.folder}: config.json holds an invalid data contract ({e})") from None
        if not self.contract.is_fitted:
            raise ArtifactError(f"{self.folder}: the artifact's contract has no normalisation statistics")

    # ---- the interface -----------------------------------------------------------------------------------------
    def decode(self, counts: np.ndarray) -> np.ndarray:
        """(B, C, T) spike counts -> (B, D, T) behavior in data units."""
        return self.decode_scaled(self.contract.preprocess_spikes(counts))

    def decode_scaled(self, x: np.ndarray) -> np.ndarray:
        """(B, C, T) model input (``contract.preprocess_spikes``: checked and normalised) -> (B, D, T) behavior."""
        return self.contract.postprocess_behavior(self.in_chunks(self._decode, x))

    tail_bins = 0  # the receptive-field window of the artifact's decode_tail graph (0: it has none)
    tail_hops = 0  # newest bins that graph serves

    def decode_newest(self, counts: np.ndarray, k: int = 1) -> np.ndarray:
        """(B, C, T) clean counts (finite, non-negative: the live path's ring buffer) -> (B, D, k) behavior of the
        newest ``k`` bins: from the receptive-field graph where there is one (the same numbers, less work;
        ``training/tail.py``), else from the whole window."""
        if 0 < k <= self.tail_hops:
            x = np.ascontiguousarray(self.contract.scale_counts(counts[..., -self.tail_bins:]))
            return self.contract.postprocess_behavior(self.in_chunks(self._decode_tail, x)[..., -k:])
        return self.decode(counts)[..., -k:]

    @property
    def can_stream(self) -> bool:
        """Whether the artifact decodes incrementally (``decode_stream.npz``, written by export for causal models)."""
        return STREAM_FILE in self.config["files"] and "stream" in (self.config.get("export") or {})

    def open_stream(self, batcher=None) -> LiveStream:
        """A new incremental decoder for one live source (``service/live/pipeline.py``: a row of this engine's
        ``RowGroup``, stepped in batches with the other sources' rows by ``batcher``, the process's one by default),
        starting as an empty ring buffer does."""
        if not self.can_stream:
            raise ArtifactError(f"{self.folder}: no {STREAM_FILE}; re-export the artifact to decode incrementally")
        with _ROWS_LOCK:
            if self.rows is None:
                self.rows = RowGroup(load_weights(self.folder / STREAM_FILE), self.contract)
        return LiveStream(self.contract, self.rows, batcher)

    rows: RowGroup | None = None

    def _decode_tail(self, x: np.ndarray) -> np.ndarray:
        return self._run("decode_tail", x)

    def simulate(self, behavior: np.ndarray) -> np.ndarray:
        """(B, D, T) behavior in data units -> (B, C, T) non-negative expected spike counts per bin."""
        y = self.contract.preprocess_behavior(behavior)
        return self.contract.postprocess_rates(self.in_chunks(self._simulate, y))

    def in_chunks(self, fn, x: np.ndarray) -> np.ndarray:
        """``fn`` on at most ``chunk`` windows at a time: a network's activations grow with the batch (a 256-window
        simulate in one call took the service from 0.4 to 4.3 GB), its answers do not; work on many windows in one C
        call also holds the GIL (the service draws its Poisson samples through this too)."""
        if len(x) <= self.chunk:
            return fn(x)
        return np.concatenate([fn(x[i:i + self.chunk]) for i in range(0, len(x), self.chunk)])

    def probe(self) -> None:
        """A trial decode and simulate of one window, checked for the contract's shapes and finite values: an
        artifact whose graphs and config.json disagree is refused here, before it serves (ArtifactError)."""
        c = self.contract
        counts = np.ones((1, *c.spike_shape), np.float32)
        behavior = np.asarray(c.behavior_mean, np.float32)[None, :, None].repeat(c.window_bins, axis=2)
        for name, fn, x, shape in (("decode", self.decode, counts, (1, *c.behavior_shape)),
                                   ("simulate", self.simulate, behavior, (1, *c.spike_shape))):
            try:
                y = np.asarray(fn(x))
            except Exception as e:  # any runtime's failure on the probe is the artifact's fault, reported as such
                raise ArtifactError(f"{self.folder}: a trial {name} of one window failed ({type(e).__name__}: "
                                    f"{str(e)[:300]}); config.json does not match the model's graphs") from None
            if y.shape != shape or not np.all(np.isfinite(y)):
                raise ArtifactError(f"{self.folder}: a trial {name} of one window gave shape {y.shape} (config.json "
                                    f"says {shape}){'' if np.all(np.isfinite(y)) else ' with non-finite values'}; "
                                    "config.json does not match the model's graphs")

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

    def __init__(self, folder: str | Path, threads: int = 1, key: str | None = None, chunk: int = 16,
                 optimization: str = "all") -> None:
        super().__init__(folder, threads, key, chunk)
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
        optional = tuple(n for n in ("embed", "decode_tail") if f"{n}.onnx" in self.config["files"])
        tail = (self.config.get("export") or {}).get("tail") if "decode_tail" in optional else None
        if tail:
            self.tail_bins, self.tail_hops = int(tail["bins"]), int(tail["hops"])
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

    def __init__(self, folder: str | Path, threads: int = 1, key: str | None = None, chunk: int = 16) -> None:
        super().__init__(folder, threads, key, chunk)
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

    def __init__(self, folder: str | Path, threads: int = 1, key: str | None = None, chunk: int = 16,
                 lif_impl: str | None = None) -> None:
        super().__init__(folder, threads, key, chunk)
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


def check_artifact(folder: str | Path, kind: str, key: str | None = None) -> dict:
    """Check that an artifact is whole for an engine (without loading it): the engine's files present, every file
    it lists and config.json itself matching their hashes (and its signature, with ``key``); returns its config."""
    classes = {"onnx": OnnxEngine, "torchscript": TorchScriptEngine, "eager": EagerEngine}
    if kind not in classes:
        raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
    folder = Path(folder)
    files = list(classes[kind].files) or ["model.safetensors"]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: no {', '.join(missing)}; run `alignnet export {folder}` first")
    config = verify_files(folder, required=True, key=key)  # every file it lists, once; config.json's record
    unlisted = [f for f in files if f not in config["files"]]
    if unlisted:
        raise ArtifactError(f"{folder}: {', '.join(unlisted)} is not part of this artifact (files: "
                            f"{', '.join(config['files'])})")
    return config


def load_engine(folder: str | Path, kind: str = "onnx", threads: int = 1, key: str | None = None,
                chunk: int = 16, probe: bool = True) -> Engine:
    """Open an artifact with the named engine ('onnx' by default), verified whole (``check_artifact``) and, with
    ``probe``, checked by a trial decode and simulate."""
    classes = {"onnx": OnnxEngine, "torchscript": TorchScriptEngine, "eager": EagerEngine}
    if kind not in classes:
        raise ValueError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
    engine = classes[kind](folder, threads, key, chunk)
    if probe:
        engine.probe()
    return engine
