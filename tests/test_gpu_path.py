"""The GPU path's pieces that a CPU can check: a training step torch.compile takes whole, the throughput bench,
and the switches (compile, precision, data on the device) resolved per device. The CUDA run of the same bench skips
without a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignnet.cli.main import main as cli
from alignnet.training.throughput import graph_breaks, step_rate
from alignnet.training.trainer import TrainConfig, as_numbers


def test_the_pretraining_step_has_no_graph_break():
    """Loss parts stay tensors until after the step, so dynamo sees the whole forward as one graph (the float()
    calls of InfoNCE's logging used to break it)."""
    g = graph_breaks("test-alignnet", batch=4, stage="pretrain")
    assert g["graph_breaks"] == 0 and g["graphs"] == 1, g["reasons"]


def test_loss_parts_become_numbers_after_the_step():
    parts = {"loss": torch.tensor(1.5), "accuracy": torch.tensor(True), "mse": torch.tensor(0.25, dtype=torch.float64)}
    assert as_numbers(parts) == {"loss": 1.5, "accuracy": 1.0, "mse": 0.25}
    assert as_numbers({}) == {}


def test_switches_resolve_per_device_and_refuse_nonsense():
    cfg = TrainConfig()
    assert cfg.compile == "auto" and cfg.data_on_device == "auto" and cfg.precision == "fp32"
    assert not cfg.wants("compile", torch.device("cpu")) and cfg.wants("compile", torch.device("cuda"))
    assert TrainConfig(compile=True).wants("compile", torch.device("cpu"))
    assert not TrainConfig(data_on_device=False).wants("data_on_device", torch.device("cuda"))
    for bad in ({"compile": "yes"}, {"precision": "fp16"}, {"data_on_device": 1.5}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_a_compiled_fit_compiles_its_step_once(monkeypatch):
    """The GPU path's switches together on the CPU (compile, data kept on the device, channels-last, the learning
    rate scaled with the batch), through the Trainer's own fit, with validation between epochs. The step compiles
    once: it recompiled for each kind of LIF membrane state a call started from (three times), and a day's smaller
    last batch would be another shape. ``aot_eager`` traces as inductor does, without generating code."""
    from torch._dynamo.utils import counters

    from alignnet.model import DataContract, create_model
    from alignnet.training.trainer import Trainer
    from alignnet.training.windows import DayWindows

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, **kw: real(model, backend="aot_eager"))
    rng = np.random.default_rng(0)
    days = [DayWindows(f"d{k}", rng.poisson(1.0, (n, 16, 20)).astype(np.float32),
                       rng.normal(size=(n, 2, 20)).astype(np.float32)) for k, n in enumerate((45, 37, 11))]
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=20).fit(days[0].counts, days[0].behavior)
    torch.manual_seed(0)
    model = create_model("test-alignnet")
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(stage="pretrain", epochs=2, batch_size=16, lr=3e-3, lr_batch=8, compile=True,
                      data_on_device=True, channels_last=True, progress=False)
    trainer = Trainer(model, cfg)
    counters.clear()
    fit = trainer.fit(days[:2], days[2:], contract)
    assert counters["frames"]["ok"] == 1 and counters["stats"]["unique_graphs"] == 1
    assert fit["windows_seen"] == 2 * (2 * 16 + 2 * 16)  # full batches only: 45 -> 2 x 16, 37 -> 2 x 16
    assert trainer.peak_lr == pytest.approx(3e-3 * 2 ** 0.5)
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in trainer.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_device_names_resolve_or_are_refused_by_name():
    from alignnet.training.trainer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "meta", "cuda:99"):
        with pytest.raises(ValueError, match="device"):
            resolve_device(bad)


def test_bf16_step_trains_on_cpu_and_tracks_fp32():
    """bf16 autocast runs the same step: finite, and close to fp32's loss on the same seeded windows."""
    fp32 = step_rate("test-alignnet", batch=8, steps=2, device="cpu", precision="fp32", warmup=1)
    bf16 = step_rate("test-alignnet", batch=8, steps=2, device="cpu", precision="bf16", warmup=1)
    assert fp32["finite"] and bf16["finite"] and fp32["windows_per_s"] > 0 and bf16["windows_per_s"] > 0
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)


def test_bench_train_cli_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert cli(["bench", "train", "--model", "test-alignnet", "--batch", "8", "--steps", "2", "--device", "cpu",
                "--compile", "off", "--precision", "fp32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["variants"]
    assert row["device"] == "cpu" and not row["compiled"] and row["speed_vs_first"] == 1.0
    assert np.isfinite(row["loss"]) and "windows/s" in capsys.readouterr().out


def test_device_check_script_runs_end_to_end_as_a_dry_run(tmp_path):
    """scripts/device_check.sh with QUICK=1 on the CPU: the same steps a GPU machine runs (tests, throughput, a
    small evaluation), at tiny sizes, each leaving its figures under OUT."""
    import os
    import subprocess
    import sys

    out = tmp_path / "device"
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "SKIP_INSTALL": "1", "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/device_check.sh"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((out / "train.json").read_text())["variants"][0]["device"] == "cpu"
    assert json.loads((out / "evaluate" / "results.json").read_text())["protocols"]["single-day"]
    assert "passed" in (out / "pytest.txt").read_text() and (out / "device.txt").is_file()


def test_paper_scale_script_runs_end_to_end_as_a_dry_run(tmp_path):
    """scripts/paper_scale.sh with QUICK=1 on the CPU: simulate (days in worker processes), train the paper config,
    Table 1 with every protocol, and the timings of each stage."""
    import os
    import subprocess
    import sys

    out = tmp_path / "paper"
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/paper_scale.sh"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    timings = json.loads((out / "timings.json").read_text())
    assert timings["device"] == "cpu" and set(timings["seconds"]) == {"simulate", "train", "evaluate"}
    assert all(s > 0 for s in timings["seconds"].values()) and (out / "timings.png").stat().st_size > 1000
    assert set(timings["train_stages"]) == {"pretrain", "finetune"}
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert {"single-day", "cross-day", "pretrain"} <= set(results["protocols"])
    workers = min(os.cpu_count() or 1, 3)  # auto: as many as cores and days (memory is plenty at this size)
    assert f"simulating days ({workers} worker" in (out / "simulate.txt").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU figures wait for a GPU run")
def test_bench_train_on_cuda_compiled_bf16():
    fast = step_rate("test-alignnet", batch=64, steps=5, device="cuda", compile_mode="reduce-overhead",
                     precision="bf16")
    assert fast["device"].startswith("cuda") and fast["finite"] and fast["windows_per_s"] > 0
