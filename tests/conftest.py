"""Shared fixtures: tiny simulated data built in seconds, and the real recordings when they are present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from alignnet.recordings.importers import simday_to_day
from alignnet.recordings.simulator import SimConfig, simulate_days

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    return Path(os.environ.get("ALIGNNET_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


def real_file(name: str) -> Path:
    path = real_data_dir() / "chewie" / name
    if not path.is_file():
        pytest.skip(f"real recording {path} not found (set ALIGNNET_REAL_DATA to the folder holding chewie/)")
    return path


@pytest.fixture(scope="session")
def tiny_sim_cfg() -> SimConfig:
    return SimConfig(n_days=3, trials_per_day=40, seed=7)


@pytest.fixture(scope="session")
def tiny_sim_days(tiny_sim_cfg):
    """Three simulated days (SimDay) of 40 trials."""
    return list(simulate_days(tiny_sim_cfg))


@pytest.fixture(scope="session")
def tiny_days(tiny_sim_days):
    """The same days binned at 20 ms (Day)."""
    return [simday_to_day(sd, 0.02, 0.04) for sd in tiny_sim_days]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


TINY_SIM_YAML = "neural:\n  n_channels: 16\n"
TINY_TRAIN_YAML = """
model: test-alignnet
model_config: {}
train: {window_bins: 20, hop_bins: 10, val_fraction: 0.2, days: all, seed: 0, device: cpu}
pretrain: {epochs: 2, batch_size: 8, lr: 0.003, max_steps_per_epoch: 4, progress: false}
finetune: {epochs: 2, batch_size: 8, lr: 0.003, max_steps_per_epoch: 4, progress: false}
evaluate:
  window_bins: 20
  hop_bins: 10
  cross_train_days: [0, 1]
  cross_test_day: 2
  train: {epochs: 2, batch_size: 8, max_steps_per_epoch: 4, progress: false}
  pretrain: {epochs: 1}
"""


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 3-day, 16-channel simulated dataset with 20-bin windows, written through the CLI. It uses the simulator's
    simple setting: these tests check the pipeline, and 14 training trials of 16 channels of the cortex setting
    (latent dynamics, trial gains) are too few for the tiny budgets to learn anything checkable."""
    from alignnet.cli.main import main

    root = tmp_path_factory.mktemp("tiny")
    (root / "sim.yaml").write_text(TINY_SIM_YAML)
    (root / "train.yaml").write_text(TINY_TRAIN_YAML)
    assert main(["data", "simulate", "--days", "3", "--trials", "24", "--out", str(root / "D"),
                 "--config", str(root / "sim.yaml"), "--window-bins", "20", "--setting", "simple"]) == 0
    return root


def make_service_artifact(folder: Path, seed: int) -> Path:
    """A tiny exported test-alignnet artifact (16 channels x 20 bins of 20 ms)."""
    import torch

    from alignnet.model import DataContract, create_model
    from alignnet.model.artifacts import save_artifact
    from alignnet.training.export import export_artifact

    torch.manual_seed(seed)
    model = create_model("test-alignnet").eval()
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=20, spike_scale=[0.7] * 16,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0])
    save_artifact(folder, model, contract)
    export_artifact(folder, ("onnx",))
    return folder


@pytest.fixture(scope="session")
def service_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    return make_service_artifact(root / "a", 0), make_service_artifact(root / "b", 1)


def wait_until(cond, timeout: float = 10.0, every: float = 0.02) -> bool:
    """Poll ``cond()`` until it is true (True) or ``timeout`` seconds pass (False)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return False


def service_client(app, **kwargs):
    """A TestClient that speaks to the app as a local client would: Host localhost, from 127.0.0.1 (the service
    answers only the hosts it is configured for, and its admin routes only loopback clients without a token)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://localhost", client=("127.0.0.1", 50000), **kwargs)
