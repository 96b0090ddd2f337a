"""One registry and one factory for every model (AlignNet, baselines and their tiny test variants)."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from alignnet.model.registration import _REGISTRY, register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = ["register_model", "registered", "list_models", "model_class", "model_config", "create_model"]


def registered() -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
    """The registry, with the built-in models registered: their modules import torch, so they are loaded on first
    use (a service on ONNX Runtime never imports torch)."""
    import alignnet.model.alignnet  # noqa: F401
    import alignnet.model.baselines  # noqa: F401
    import alignnet.model.yardsticks  # noqa: F401

    return _REGISTRY


def list_models() -> list[str]:
    return sorted(registered())


def model_class(name: str) -> type[nn.Module]:
    """The class behind a registered name (e.g. to ask ``needs_gradients`` before building it)."""
    if name not in registered():
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return registered()[name][0]


def model_config(name: str, **overrides: Any):
    """The resolved config dataclass of a registered model."""
    if name not in registered():
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    cls, defaults = registered()[name]
    valid = {f.name for f in fields(cls.config_class)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"{name}: unknown config field(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return cls.config_class(**{**defaults, **overrides})


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model: ``create_model("alignnet", n_channels=96)``."""
    cls, _ = registered()[name] if name in registered() else (None, None)
    cfg = model_config(name, **overrides)
    model = cls(cfg)
    model.model_name = name
    return model
