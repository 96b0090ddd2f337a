"""The design card's layout installs: the root folders (model/, service/, ...) become ``alignnet.model``,
``alignnet.service``, ... in a built wheel (what ``pip install .`` installs), package data included, and the
editable install of ``scripts/setup.sh`` maps the same names onto the folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of what the Dockerfile copies (pyproject.toml, README.md, the package-dir folders)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*-calibrated"))
    return src


@pytest.fixture(scope="module")
def wheel(checkout, tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="77")
    # built from the copy: setuptools builds in the source folder, and a build/ left in the checkout would hold
    # stale modules for the next build
    src, out = checkout, tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, cwd=out)
    (found,) = out.glob("alignnet_bci-*.whl")
    return found


def test_the_wheel_holds_the_root_folders_under_one_namespace(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("model", "recordings", "training", "service", "service/http", "service/live", "bench",
                    "clients", "cli"):
        assert f"alignnet/{package}/__init__.py" in names, package
    assert "alignnet/service/lsl_api.cfg" in names
    assert "alignnet/service/default_models/alignnet-quick/decode_stream.npz" in names
    assert any(n.startswith("alignnet/clients/static/") for n in names)
    assert not any(n.startswith(("model/", "service/", "tests/")) for n in names), "a root folder leaked out"


def test_the_installed_wheel_imports_and_runs(wheel, tmp_path):
    """Unpacked, first on the path, from a folder away from the repository: every package imports from the
    wheel (not from the source folders) and the command answers."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import alignnet.service.http.app, alignnet.clients, alignnet.bench.load, alignnet.cli.main, "
            "alignnet.service.http.settings as s; import alignnet.model as m; "
            "print(m.__file__); print(s.DEFAULT_MODELS.is_dir())")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    model_file, defaults = run.stdout.split()
    assert Path(model_file).is_relative_to(site) and defaults == "True"
    cli = subprocess.run([sys.executable, "-m", "alignnet", "--help"], env=env, cwd=tmp_path, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "serve" in cli.stdout, cli.stderr


def test_the_editable_install_maps_the_root_folders():
    code = "import alignnet.model, alignnet.service.live.pipeline as p; print(alignnet.model.__file__, p.__file__)"
    run = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    model_file, pipeline_file = map(Path, run.stdout.split())
    if not model_file.is_relative_to(ROOT):
        pytest.skip(f"alignnet is installed from {model_file.parent.parent}, not editable from this checkout")
    assert model_file == ROOT / "model" / "__init__.py"
    assert pipeline_file == ROOT / "service" / "live" / "pipeline.py"


def test_a_checkout_on_the_path_imports_its_own_folders(checkout):
    """``PYTHONPATH=<checkout>`` without installing it (the GPU machine's scripts, a benchmark's baseline tree):
    every package comes from that checkout, not from the editable install of this one."""
    code = "import alignnet.model, alignnet.service.http.routes as r; print(alignnet.model.__file__, r.__file__)"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(checkout)}, cwd="/",
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert all(Path(f).is_relative_to(checkout) for f in run.stdout.split()), run.stdout
