"""Registry of models by name, so configs can name them as strings."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Decorator registering a model class (or factory) under `name`."""

  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory
    return factory

  return wrap


def model_names() -> list[str]:
  return sorted(_REGISTRY)


def get_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
  """The model registered as `name`; unknown names and fields raise one-line errors."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(model_names())}")
  try:
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ValueError(f"model {name!r}: {e}") from None
