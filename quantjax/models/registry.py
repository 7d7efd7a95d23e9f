"""Registry of models by name, so configs can name them as strings."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Decorator registering a model class (or a factory returning one) under `name`.

  Args:
    name: the name configs use, e.g. 'resnet20'.

  Returns:
    A decorator that records its argument and returns it unchanged.
  """

  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = factory
    return factory

  return wrap


def model_names() -> list[str]:
  """Sorted names of all registered models."""
  return sorted(_REGISTRY)


def get_model(name: str, *, num_classes: int, **kwargs) -> nn.Module:
  """Builds the model registered as `name`.

  Args:
    name: a registered name (see `model_names()`).
    num_classes: width of the logits the model returns.
    **kwargs: extra fields of that model, e.g. `width=0.5`.

  Returns:
    An unbound `nn.Module` called as `model.apply(variables, x, train)`.

  Raises:
    ValueError: for an unknown name (the message lists the valid names) or an unknown field.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(model_names())}")
  try:
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
  except TypeError as e:  # an unknown keyword argument of the dataclass or factory
    raise ValueError(f"model {name!r}: {e}") from None
