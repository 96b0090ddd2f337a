"""AlignNet-BCI models: networks, baselines, data contract and artifacts. Pure: no optimizers, datasets or HTTP.

The names below load on first use (PEP 562): the networks import torch, which a service on ONNX Runtime never needs
(importing it cost that process ~250 MB and a second at start)."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"BidirectionalModel": "alignnet.model.base", "DecodePath": "alignnet.model.base",
          "SimulatePath": "alignnet.model.base", "DataContract": "alignnet.model.contract",
          "create_model": "alignnet.model.registry", "list_models": "alignnet.model.registry",
          "model_config": "alignnet.model.registry", "register_model": "alignnet.model.registry"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'alignnet.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
