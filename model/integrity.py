"""config.json's own integrity record, and an optional signature over the whole artifact.

``config.json`` lists the SHA-256 of every other file of an artifact; its ``integrity`` entry holds the SHA-256 of
config.json itself (its canonical JSON without that entry), so an edited ``window_bins`` or a changed file hash is
caught like a flipped weight. Hashes catch accidents, not tampering: whoever rewrites a file can rewrite the hashes.
With a key (``ALIGNNET_ARTIFACT_KEY`` in the environment when the artifact is written, the service's
``artifact_key`` setting when it is served) the entry also holds an HMAC-SHA256 of the same bytes, which covers every
file through the hashes it lists; a service with a key refuses an artifact that is unsigned or signed otherwise.
The stdlib ``hmac``/``hashlib`` do the cryptography; only the canonical form is ours.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

KEY_ENV = "ALIGNNET_ARTIFACT_KEY"
FIELD = "integrity"


class IntegrityError(ValueError):
    """config.json does not match its integrity record or signature (the message says what to do)."""


def env_key() -> str | None:
    """The signing key of this process (``ALIGNNET_ARTIFACT_KEY``), or None."""
    return os.environ.get(KEY_ENV) or None


def canonical(config: dict[str, Any]) -> bytes:
    """The bytes that are hashed and signed: sorted keys, no whitespace, the integrity entry left out."""
    body = {k: v for k, v in config.items() if k != FIELD}
    return json.dumps(json.loads(json.dumps(body)), sort_keys=True, separators=(",", ":")).encode()


def _mac(key: str, data: bytes) -> str:
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()


def seal(config: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """``config`` with its integrity entry: the SHA-256 of its canonical form, signed with ``key`` if given."""
    data = canonical(config)
    record = {"sha256": hashlib.sha256(data).hexdigest()}
    if key:
        record["hmac_sha256"] = _mac(key, data)
    return {**{k: v for k, v in config.items() if k != FIELD}, FIELD: record}


def check(config: dict[str, Any], where: str, *, required: bool = False, key: str | None = None) -> None:
    """IntegrityError unless config.json matches its record (and, with ``key``, its signature). An artifact without
    a record (written before records existed) passes unless ``required`` or a key is given."""
    record = config.get(FIELD)
    if record is None:
        if required or key:
            raise IntegrityError(f"{where}: config.json has no integrity record (written by an older alignnet); "
                                 "re-export the artifact or seal it with `alignnet seal`")
        return
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise IntegrityError(f"{where}: config.json's integrity record is malformed; re-export the artifact")
    data = canonical(config)
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), record["sha256"]):
        raise IntegrityError(f"{where}: config.json was changed after it was written (its SHA-256 does not match "
                             "its integrity record); re-export the artifact")
    if key:
        signature = record.get("hmac_sha256")
        if not isinstance(signature, str):
            raise IntegrityError(f"{where}: the artifact is not signed, and this service only serves artifacts "
                                 f"signed with its key (write it with {KEY_ENV} set, or `alignnet seal`)")
        if not hmac.compare_digest(_mac(key, data), signature):
            raise IntegrityError(f"{where}: the artifact's signature does not match this service's key: it was "
                                 "signed with another key or altered after signing")
