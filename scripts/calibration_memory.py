"""Peak memory of the largest POST /calibrate the service accepts (docs/benchmarks.md).

The service bounds one calibration by ``calibration_max_seconds`` and ``calibration_memory_mb`` through
``CALIBRATION_FIXED_MB`` and ``BYTES_PER_NUMBER`` (service/calibration.py): this script sends the largest block
those limits accept to the default model, waits for the calibration to end, and reports the service process's
peak resident memory above where it stood before the request, per number of the block, so the constants can be
checked against what they bound. Runs in a child process of its own, so the peak (Linux VmHWM, reset before the
request) is the service's.

    .venv/bin/python scripts/calibration_memory.py [--artifact DIR] [--memory-mb 3072] [--bins N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent("""
    import json, os, sys, tempfile
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, "tests")
    from conftest import service_client
    from alignnet.model.artifacts import model_contract
    from alignnet.service.http.app import create_app
    from alignnet.service.calibration import BYTES_PER_NUMBER, CALIBRATION_FIXED_MB, max_calibration_bins
    from alignnet.service.http.settings import DEFAULT_ARTIFACT, Settings

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    artifact, memory_mb, bins = sys.argv[1] or str(DEFAULT_ARTIFACT), float(sys.argv[2]), int(sys.argv[3])
    cal = tempfile.mkdtemp(prefix="alignnet-calmem-")
    settings = Settings(artifact=Path(artifact), calibration_dir=Path(cal), calibration_memory_mb=memory_mb)
    app = create_app(settings)
    with service_client(app) as client:
        config = app.state.alignnet.engine.config
        mc = model_contract(config)
        most = max_calibration_bins(config, settings.calibration_max_seconds, memory_mb)
        n = bins or most
        rng = np.random.default_rng(0)
        beh = np.cumsum(rng.normal(0, 0.05, (mc.behavior_dims, n)), 1)  # a smooth random walk
        beh -= beh.mean(1, keepdims=True)
        tuning = rng.normal(0, 1, (mc.n_channels, mc.behavior_dims))
        rate = np.exp(np.clip(tuning @ beh / (beh.std() + 1e-9) * 0.5, -3, 3)) * 20 * mc.bin_s
        counts = rng.poisson(rate).astype(float)
        body = json.dumps({"day": "memory", "spikes": counts.tolist(), "behavior": beh.tolist()})
        before = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        r = client.post("/calibrate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        done = app.state.alignnet.calibrator.wait(1800)
        peak, after = status("VmHWM"), status("VmRSS")
        numbers = n * (mc.n_channels + mc.behavior_dims)
        print(json.dumps({"artifact": Path(artifact).name, "bins": n, "most_accepted": most,
                          "seconds": n * mc.bin_s, "numbers": numbers, "body_mb": len(body) / 2**20,
                          "calibration_memory_mb": memory_mb, "rss_before_mb": before / 2**20,
                          "peak_mb": peak / 2**20, "peak_above_mb": (peak - before) / 2**20,
                          "rss_after_mb": after / 2**20, "fit_s": (done.get("report") or {}).get("fit_s"),
                          "bytes_per_number": (peak - before) / numbers, "bound_bytes_per_number": BYTES_PER_NUMBER,
                          "bound_fixed_mb": CALIBRATION_FIXED_MB, "within_bound": peak - before <= memory_mb * 2**20,
                          "state": done.get("state"), "error": done.get("error")}), flush=True)
    os._exit(0)  # the measurement is out; skip the interpreter's teardown of torch's and ONNX Runtime's threads
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default="", help="the served artifact (default: the default model)")
    ap.add_argument("--memory-mb", type=float, default=3072.0, help="calibration_memory_mb (the service's default)")
    ap.add_argument("--bins", type=int, default=0, help="bins to send (default: the most the limits accept)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory():
        out = subprocess.run([sys.executable, "-c", CHILD, args.artifact, str(args.memory_mb), str(args.bins)],
                             capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        sys.stderr.write(out.stdout[-2000:] + out.stderr[-4000:])
        return out.returncode or 1
    row = json.loads(lines[-1])
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
