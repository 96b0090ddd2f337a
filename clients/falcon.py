"""A served artifact behind FALCON's decoder interface (``falcon_challenge.interface.BCIDecoder``), the interface other
groups use to compare decoders across days (Karpowicz et al. 2024, https://github.com/snel-repo/falcon-challenge).

FALCON calls ``reset(dataset_tags)`` when a session starts, then ``predict(bins)`` once per 20-ms bin with one row of
spike counts per session in the batch, and wants the behavior of that bin back. ``FalconDecoder`` keeps one ring
buffer of the artifact's window per batch row, as the LSL bridge does, so each prediction is the newest bin of the
window that ends at it: what a live user gets (causal models only see the past). An artifact that decodes
incrementally (``decode_stream.npz``) gives those numbers from cached columns instead. Held-out sessions can be
calibrated first through the new-day path (``calibrate``, from FALCON's few-shot calibration files), and ``reset``
then picks each session's calibrated artifact.

``alignnet falcon ARTIFACT --split m2 --data DIR`` runs FALCON's own evaluator on the data a lab has downloaded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from alignnet.service.engines import Engine, load_engine
from alignnet.service.live.pipeline import LiveStream

log = logging.getLogger(__name__)


def _interface():
    try:
        from falcon_challenge.config import FalconConfig, FalconTask
        from falcon_challenge.interface import BCIDecoder
    except ImportError as e:  # an optional dependency: scripts/setup.sh installs it
        raise ImportError(f"FALCON needs the falcon-challenge package ({e}); install it with "
                          "`pip install --no-deps falcon-challenge==1.0.2` and `pip install -e '.[falcon]'`") from None
    return BCIDecoder, FalconConfig, FalconTask


BCIDecoder, FalconConfig, FalconTask = _interface()


def check_fits(engine: Engine, cfg: FalconConfig) -> None:
    """The artifact must read the task's channels at its bin width and give its output dimensions."""
    c, problems = engine.contract, []
    if c.n_channels != cfg.n_channels:
        problems.append(f"it reads {c.n_channels} channels, FALCON {cfg.task.name} gives {cfg.n_channels}")
    if c.behavior_dims != cfg.out_dim:
        problems.append(f"it decodes {c.behavior_dims} dimensions, FALCON {cfg.task.name} scores {cfg.out_dim}")
    if abs(c.bin_s * 1000 - cfg.bin_size_ms) > 1e-6:
        problems.append(f"its bins are {c.bin_s * 1e3:g} ms, FALCON's {cfg.bin_size_ms} ms")
    if problems:
        raise ValueError(f"artifact {engine.folder.name} does not fit FALCON {cfg.task.name}: " + "; ".join(problems))


class FalconDecoder(BCIDecoder):
    """An artifact (ONNX Runtime by default) as a FALCON decoder, batched across sessions."""

    def __init__(self, task_config: FalconConfig, artifact: str | Path, batch_size: int = 1, engine: str = "onnx",
                 threads: int = 1) -> None:
        super().__init__(task_config, batch_size)
        self.kind, self.threads = engine, threads
        self.base = load_engine(artifact, engine, threads=threads)
        check_fits(self.base, task_config)
        self.calibrated: dict[str, Engine] = {}  # session hash -> its calibrated engine
        self.latencies_s: list[float] = []
        self.set_batch_size(batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = int(batch_size)
        c = self.base.contract
        self.ring = np.zeros((self.batch_size, c.n_channels, c.window_bins), np.float32)
        self.active: list[Engine] = [self.base] * self.batch_size
        self.streams = [self._stream(e) for e in self.active]  # incremental decoders where the artifact has one

    @staticmethod
    def _stream(engine: Engine):
        return engine.open_stream() if engine.can_stream else None

    def session(self, tag) -> str:
        return self._task_config.hash_dataset(Path(str(tag)).stem)

    def reset(self, dataset_tags: list = [""]) -> None:  # noqa: B006 - FALCON's signature
        """A new batch of sessions: empty history, and each session's calibrated artifact where there is one."""
        self.ring[:] = 0.0
        for i in range(self.batch_size):
            tag = dataset_tags[i] if i < len(dataset_tags) else ""
            self.active[i] = self.calibrated.get(self.session(tag), self.base) if tag else self.base
            self.streams[i] = self._stream(self.active[i])

    def predict(self, neural_observations: np.ndarray) -> np.ndarray:
        """(batch, channels) counts of one bin -> (batch, out_dim) behavior of that bin."""
        t = time.perf_counter()
        x = np.maximum(np.nan_to_num(np.asarray(neural_observations, np.float32), nan=0.0, posinf=0.0), 0.0)
        b = len(x)
        if x.ndim != 2 or x.shape[1] != self.ring.shape[1] or b > self.batch_size:
            raise ValueError(f"predict takes (batch <= {self.batch_size}, {self.ring.shape[1]}) spike counts, got "
                             f"{x.shape}")
        self.ring[:b, :, :-1] = self.ring[:b, :, 1:]  # numpy copies overlapping slices safely
        self.ring[:b, :, -1] = x
        out = np.zeros((b, self.base.contract.behavior_dims), np.float32)
        for engine in {id(e): e for e in self.active[:b]}.values():  # one call per artifact in use
            rows = [i for i in range(b) if self.active[i] is engine]
            if self.streams[rows[0]] is not None:  # incremental: the ring's newest bin, from cached columns
                out[rows] = LiveStream.push_many([self.streams[i] for i in rows], x[rows])
            else:
                out[rows] = engine.decode_newest(self.ring[rows], 1)[:, :, -1]
        self.latencies_s.append(time.perf_counter() - t)
        return out

    def on_done(self, dones: np.ndarray) -> None:
        """A trial ended: nothing to do (history carries across trials, as in a live session)."""

    def calibrate(self, files: list[Path], out: Path, seconds: float | None = None,
                  train: dict | None = None) -> dict[str, dict]:
        """Calibrate each held-out session on its FALCON calibration file (few-shot: spikes and behavior) through
        the new-day path, writing artifacts under ``out``; ``reset`` then serves each session its own."""
        from alignnet.recordings.falcon import load_falcon
        from alignnet.training.calibrate import calibrate_block
        from alignnet.training.export import export_artifact

        reports = {}
        for f in files:
            counts, behavior = load_falcon(f, self._task_config.task)[:2]
            if seconds:
                n = int(round(seconds / self.base.contract.bin_s))
                counts, behavior = counts[:n], behavior[:n]
            key = self.session(f)
            folder = Path(out) / key
            reports[key] = calibrate_block(self.base.folder, counts.T, behavior.T, key, folder, train)
            if self.kind != "eager":  # eager runs the weights themselves
                export_artifact(folder, (self.kind,))
            self.calibrated[key] = load_engine(folder, self.kind, threads=self.threads)
            log.info("calibrated FALCON session %s on %s (%d bins)", key, Path(f).name, len(counts))
        return reports

    def latency_ms(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_s) * 1e3
        if not lat.size:
            return {}
        return {"bins": int(lat.size), "p50": round(float(np.percentile(lat, 50)), 3),
                "p99": round(float(np.percentile(lat, 99)), 3), "mean": round(float(lat.mean()), 3)}


def evaluate(artifact: Path, split: str, data: Path, *, batch_size: int | None = None, calibrate: bool = False,
             calibration_dir: Path | None = None, engine: str = "onnx", work: Path | None = None) -> dict:
    """FALCON's own local evaluation (``FalconEvaluator.evaluate``, phase minival) of an artifact on the FALCON data
    under ``data`` (``data/<split>/minival/*.nwb``; with ``calibrate``, ``data/<split>/held_out_calib/*.nwb`` first)."""
    import os
    import tempfile

    from falcon_challenge.evaluator import RECOMMENDED_BATCH_SIZES, FalconEvaluator

    task = getattr(FalconTask, split)
    work = Path(work or tempfile.mkdtemp("-falcon"))
    os.environ["EVAL_DATA_PATH"] = str(data)
    os.environ.setdefault("PREDICTION_PATH_LOCAL", str(work / "prediction.pkl"))
    os.environ.setdefault("GT_PATH", str(work / "gt.pkl"))
    decoder = FalconDecoder(FalconConfig(task=task), artifact, batch_size or RECOMMENDED_BATCH_SIZES[task], engine)
    result: dict = {"artifact": str(artifact), "split": split}
    if calibrate:
        calib = sorted((Path(data) / split).glob("*calib*/*.nwb"))
        if not calib:
            raise FileNotFoundError(f"no calibration files (*calib*/*.nwb) under {Path(data) / split}")
        result["calibration"] = decoder.calibrate(calib, calibration_dir or work / "calibrated")
    evaluator = FalconEvaluator(eval_remote=False, split=split, dataloader_workers=0)
    scores = evaluator.evaluate(decoder, phase="minival")
    result["scores"] = {k: float(v) for k, v in scores["submission_result"][f"minival_split_{split}"].items()}
    result["per_bin_latency_ms"] = decoder.latency_ms()
    return result
