"""Artifacts: a folder with ``config.json`` (architecture, data contract, format version, package and torch
versions, provenance, metrics, a SHA-256 per file) and ``model.safetensors``; exported graphs are added beside them.

Nothing is unpickled: weights are safetensors, everything else JSON. Every file is written atomically and
``config.json`` last, so a reader sees the old artifact or the new one, and a file changed afterwards fails its
hash at load.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignnet.model.atomic import atomic_path, atomic_write_json
from alignnet.model.contract import DataContract
from alignnet.model.integrity import IntegrityError, check, env_key, seal

if TYPE_CHECKING:  # torch is imported where weights are read or written, not by a service on ONNX Runtime
    from alignnet.model.base import BidirectionalModel

ARTIFACT_FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt or of another version; the message says what to do."""


class ExportError(RuntimeError):  # raised by training.export; defined here, where the CLI finds it without torch
    """Export failed or did not reproduce eager PyTorch; nothing was written."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("alignnet-bci")
    except Exception:
        return "unknown"


def save_artifact(
    folder: str | Path, model: BidirectionalModel, contract: DataContract, *,
    provenance: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write (or update) an artifact folder. Exported files already there keep their hashes. ``extra``: more
    top-level entries (``served_day``: the day whose read-in the service decodes through; ``model_contract``: the
    model space's contract when ``contract`` is that day's; ``latent_reference``: the training days' latent
    moments, for the drift monitor; ``channel_reference``: each model input channel's mean and standard deviation on the
    training days, for zero-label calibration)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not contract.is_fitted:
        raise ValueError("the data contract has no normalisation statistics: fit it on training data first")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        # one metadata entry: safetensors writes its metadata map in hash order, so two entries made identical
        # weights hash differently from run to run (the model's name is in config.json)
        save_file(state, str(tmp), metadata={"format": "pt"})
    previous = read_config(folder) if (folder / CONFIG).is_file() else {}
    files = {name: digest for name, digest in previous.get("files", {}).items()
             if name != WEIGHTS and (folder / name).is_file()}
    files[WEIGHTS] = sha256(folder / WEIGHTS)
    config = {
        "format_version": ARTIFACT_FORMAT_VERSION,
        "model": model.model_name,
        "model_config": {**_config_dict(model.config)},
        "causal_decode": bool(getattr(model, "causal_decode", False)),  # sees no bin after the one it decodes
        "days": {name: int(a.read_in.in_channels) for name, a in model.days.items()},
        "contract": contract.to_dict(),
        "versions": {"alignnet": _package_version(), "torch": torch.__version__, "python": platform.python_version()},
        "provenance": {**previous.get("provenance", {}), **(provenance or {}),
                       "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "metrics": {**previous.get("metrics", {}), **(metrics or {})},
        "files": files,
    }
    for key in EXTRA_KEYS:
        if key in previous:
            config[key] = previous[key]
    config.update(extra or {})
    write_config(folder, config)
    return folder


EXTRA_KEYS = ("served_day", "model_contract", "latent_reference", "channel_reference")


def _config_dict(cfg: Any) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def write_config(folder: Path, config: dict[str, Any]) -> None:
    """Write config.json with its integrity record (signed when ``ALIGNNET_ARTIFACT_KEY`` is set)."""
    atomic_write_json(Path(folder) / CONFIG, seal(config, env_key()))


def add_file(folder: str | Path, name: str, src: Path) -> None:
    """Move an exported file into the artifact and record its hash."""
    folder = Path(folder)
    config = read_config(folder)
    dst = folder / name
    shutil.move(str(src), str(dst))  # a rename (atomic) when src is on the same filesystem, as exporters arrange
    config["files"][name] = sha256(dst)
    write_config(folder, config)


def read_config(folder: str | Path, *, required: bool = False, key: str | None = None) -> dict[str, Any]:
    """config.json, checked against its integrity record (``required``: refuse one without a record; ``key``: and
    without a matching signature)."""
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: artifact folder not found")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; this folder is not an AlignNet-BCI artifact (train or export one)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); re-export the artifact") from e
    version = config.get("format_version")
    if version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {version!r}, this alignnet reads version {ARTIFACT_FORMAT_VERSION}; "
            "re-export it with a matching alignnet version"
        )
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: not an artifact's config (a JSON object is expected); re-export the artifact")
    for entry in ("model", "model_config", "contract", "files"):
        if entry not in config:
            raise ArtifactError(f"{path}: lacks '{entry}'; re-export the artifact")
    if not isinstance(config["files"], dict):
        raise ArtifactError(f"{path}: 'files' must map file names to SHA-256 hashes; re-export the artifact")
    try:
        check(config, str(path), required=required, key=key)
    except IntegrityError as e:
        raise ArtifactError(str(e)) from None
    return config


def model_contract(config: dict[str, Any]) -> DataContract:
    """The model space's contract (``contract`` is the served day's when an artifact decodes through a read-in)."""
    return DataContract.from_dict(config.get("model_contract", config["contract"]))


def verify_files(folder: str | Path, names: list[str] | None = None, *, required: bool = False,
                 key: str | None = None) -> dict[str, Any]:
    """Check the SHA-256 of the artifact's files (or of ``names``) and config.json's own record (``read_config``'s
    ``required`` and ``key``); returns the config."""
    folder = Path(folder)
    config = read_config(folder, required=required, key=key)
    for name in names or list(config["files"]):
        if name not in config["files"] or name != Path(name).name:
            raise ArtifactError(f"{folder}: {name} is not part of this artifact (files: {', '.join(config['files'])})")
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing from the artifact; re-export it")
        if sha256(path) != config["files"][name]:
            raise ArtifactError(
                f"{path}: SHA-256 does not match config.json: the file is corrupt or was changed after export; "
                "re-export the artifact"
            )
    return config


def seal_artifact(folder: str | Path) -> dict[str, Any]:
    """Record config.json's integrity (signed with ``ALIGNNET_ARTIFACT_KEY`` if set) after checking every file it
    lists against its hash: for artifacts written before records existed, or to sign one."""
    config = verify_files(folder)
    write_config(Path(folder), config)
    return read_config(folder, required=True, key=env_key())


def load_artifact(
    folder: str | Path, *, lif_impl: str | None = None, map_location: str = "cpu",
) -> tuple[BidirectionalModel, DataContract, dict[str, Any]]:
    """Load (model in eval mode, contract, config). ``lif_impl='plain'`` builds the exportable twin."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from alignnet.model.registry import create_model, registered

    folder = Path(folder)
    config = verify_files(folder, [WEIGHTS])
    overrides = dict(config["model_config"])
    if config["model"] not in registered():
        raise ArtifactError(f"{folder}: unknown model {config['model']!r}; is this alignnet too old?")
    valid = {f.name for f in fields(registered()[config["model"]][0].config_class)}
    if lif_impl is not None and "lif_impl" in valid:
        overrides["lif_impl"] = lif_impl
    try:
        model = create_model(config["model"], **overrides)
        for name, channels in config.get("days", {}).items():
            model.add_day(name, channels)
        state = load_file(str(folder / WEIGHTS), device=map_location)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{folder}: config.json does not describe a valid model ({e})") from e
    except SafetensorError as e:
        raise ArtifactError(f"{folder / WEIGHTS}: unreadable weights ({e}); re-export the artifact") from e
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        missing, unexpected = [str(e).splitlines()[1].strip()], []
    if missing or unexpected:
        raise ArtifactError(
            f"{folder}: weights do not match the architecture in config.json (missing or mismatched: "
            f"{missing[:5]}, unexpected: {unexpected[:5]}); the artifact is inconsistent, re-export it"
        )
    try:
        contract = DataContract.from_dict(config["contract"])
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{folder}: invalid data contract in config.json ({e})") from e
    return model.eval(), contract, config
