"""`alignnet serve` as users start it, fuzzed through its OpenAPI schema by schemathesis: no input gives a 5xx."""

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from alignnet.service.http.launcher import serving

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(service_artifacts, tmp_path_factory):
    # `alignnet serve` in a subprocess, stopped afterwards; a calibration the fuzzer manages to start is written to a
    # folder of its own, so no later test's service resumes it
    cal = tmp_path_factory.mktemp("fuzz-calibrations")
    with serving(service_artifacts[0], ["--calibration-dir", str(cal)]) as url:
        yield url


def test_serve_cli_answers(server):
    assert httpx.get(server + "/model").json()["contract"]["n_channels"] == 16
    assert "/decode" in httpx.get(server + "/openapi.json").json()["paths"]


# Every check schemathesis has, on random (valid and invalid) and on valid-only bodies. /calibrate is run apart
# without positive_data_acceptance: its behavior must have as many bins as its spikes, a rule between two fields
# that JSON Schema cannot state, so some schema-valid bodies are rightly refused (422).
FUZZ_RUNS = {
    "all routes but /calibrate": ["--checks", "all", "--exclude-path", "/calibrate", "--max-examples", "40"],
    "valid bodies only": ["--checks", "all", "--mode", "positive", "--include-path", "/decode", "--include-path",
                          "/simulate", "--max-examples", "40"],
    "/calibrate": ["--checks", "all", "--exclude-checks", "positive_data_acceptance", "--include-path", "/calibrate",
                   "--max-examples", "20"],
}


@pytest.mark.parametrize("run", list(FUZZ_RUNS))
def test_schemathesis_finds_nothing(server, run):
    exe = shutil.which("schemathesis", path=str(BIN))
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e .[dev])")
    r = subprocess.run([exe, "run", server + "/openapi.json", *FUZZ_RUNS[run], "--seed", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "passed" in r.stdout and "failed" not in r.stdout


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
