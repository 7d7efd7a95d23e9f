"""Every registered quantizer honours the contract, and has its own test module."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import quantizers

HERE = os.path.dirname(__file__)


def _roles(q):
  for role in quantizers.ROLES:
    try:
      q.validate_role(role)
    except ValueError:
      continue
    yield role


@pytest.mark.parametrize("name", quantizers.names())
def test_every_quantizer_has_a_test_module(name):
  assert os.path.exists(os.path.join(HERE, f"test_{name}.py")), f"tests/quantizers/test_{name}.py"


@pytest.mark.parametrize("name", quantizers.names())
def test_contract(name):
  q = quantizers.from_dict({"name": name})
  assert hash(q) == hash(quantizers.from_dict({"name": name})), "configs must be hashable for jit"
  roles = list(_roles(q))
  assert roles, f"{name} accepts no role"
  for role in roles:
    x = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
    if role == "act":
      x = jax.nn.relu(x)
    params, state = q.init(x, role)
    out, new_state = q.apply(x, params, state, role, False)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    assert np.isfinite(np.asarray(out)).all()
    # Fewer distinct values than inputs: it quantizes.
    assert len(np.unique(np.asarray(out))) < x.size // 2
    grads = jax.grad(
        lambda v, p, s=state, r=role: jnp.sum(q.apply(v, p, s, r, True)[0] ** 2),
        argnums=(0, 1))(x, params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads[0]).sum()) > 0, f"{name} passes no gradient to its input"
    assert q.bits > 0 and isinstance(q.describe(), str)


def test_unknown_name_lists_all():
  with pytest.raises(ValueError) as e:
    quantizers.get("nope")
  for name in quantizers.names():
    assert name in str(e.value)


def _define(name, module="notebook"):
  """A fresh quantizer class, as a notebook cell defines one (same module and name each run)."""
  cls = type("Apot", (quantizers.base.Quantizer,), {"__module__": module})
  return quantizers.registry.register(name)(dataclasses.dataclass(frozen=True, kw_only=True)(cls))


def test_a_redefined_class_replaces_itself_but_no_other_class_takes_a_name():
  try:
    first = _define("test_redefined")
    second = _define("test_redefined")  # the cell run again
    assert second is not first and quantizers.get("test_redefined") is second
    with pytest.raises(ValueError, match="'test_redefined' is already registered by Apot"):
      _define("test_redefined", module="elsewhere")
    with pytest.raises(ValueError, match="'uniform' is already registered"):
      _define("uniform")
  finally:
    quantizers.registry._REGISTRY.pop("test_redefined", None)
