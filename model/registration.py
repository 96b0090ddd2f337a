"""Where models register themselves (``@register_model``). Apart from ``alignnet.model.registry``, which loads
the built-in model modules on first use: those modules import this one, never the registry, so no import runs in a
circle."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {}


def register_model(name: str, **defaults: Any) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@register_model("alignnet")``; stack it with other names and defaults for variants."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if not hasattr(cls, "config_class"):
            raise TypeError(f"{cls.__name__} needs a config_class attribute to be registered")
        _REGISTRY[name] = (cls, dict(defaults))
        return cls

    return wrap
