"""`alignnet serve` as users start it, fuzzed through its OpenAPI schema by schemathesis: no input gives a 5xx."""

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from alignnet.service.launcher import serving

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(service_artifacts):
    with serving(service_artifacts[0]) as url:  # `alignnet serve` in a subprocess, stopped afterwards
        yield url


def test_serve_cli_answers(server):
    assert httpx.get(server + "/model").json()["contract"]["n_channels"] == 16
    assert "/decode" in httpx.get(server + "/openapi.json").json()["paths"]


def test_schemathesis_finds_no_server_error(server):
    exe = shutil.which("schemathesis", path=str(BIN))
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e .[dev])")
    r = subprocess.run([exe, "run", server + "/openapi.json", "--checks", "not_a_server_error",
                        "--max-examples", "40", "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "passed" in r.stdout


def test_unknown_artifact_is_a_clear_cli_error(tmp_path):
    r = subprocess.run([str(BIN / "alignnet"), "serve", "--artifact", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "nope" in r.stderr


def test_sighup_reloads_the_artifact_folder(service_artifacts, tmp_path):
    import os
    import shutil
    import signal
    import time

    import numpy as np

    served = tmp_path / "served"
    shutil.copytree(service_artifacts[0], served)
    counts = np.ones((1, 16, 20)).tolist()
    with serving(served) as url:
        pid = httpx.get(url + "/health").json()["pid"]  # the process to signal
        before = httpx.post(url + "/decode", json={"spikes": counts}).json()["behavior"]
        for f in served.iterdir():  # the folder is rewritten with another model
            shutil.copy(service_artifacts[1] / f.name, f)
        os.kill(pid, signal.SIGHUP)
        for _ in range(100):
            after = httpx.post(url + "/decode", json={"spikes": counts}).json()["behavior"]
            if after != before:
                break
            time.sleep(0.1)
        assert after != before
        assert 'alignnet_reloads_total{result="ok"} 1.0' in httpx.get(url + "/metrics").text
