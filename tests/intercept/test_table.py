"""The plan table: every Conv/Dense layer with its quantizers, every float layer with the reason."""

import flax.linen as nn
import jax.numpy as jnp

from quantjax.intercept import (
    discover_float_layers,
    discover_layers,
    format_plan,
    plan_rows,
    resolve,
)


class _UserModel(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):  # [B, 8, 8, 1]
    x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.DenseGeneral(16, name="proj")(x)
    x = nn.relu(nn.Dense(8, name="hidden")(x))
    return nn.Dense(3, name="head")(x)


def test_every_layer_is_in_the_table_float_ones_with_their_reason():
  model, sample = _UserModel(), jnp.zeros((2, 8, 8, 1))
  layers = discover_layers(model, sample)
  assert [layer.path for layer in layers] == ["conv", "hidden", "head"]
  floats = {f.path: f for f in discover_float_layers(model, sample)}
  assert sorted(floats) == ["bn", "proj"]
  assert floats["proj"].kind == "DenseGeneral"
  assert "not nn.Conv or nn.Dense" in floats["proj"].reason
  assert "normalisation" in floats["bn"].reason

  plan = resolve(layers, weight={"name": "uniform", "bits": 4}, act={"name": "uniform", "bits": 4,
                 "signed": False}, first_layer={"act": None}, pattern="conv|hidden")
  rows = {r["layer"]: r for r in plan_rows(layers, plan, list(floats.values()))}
  assert list(rows) == ["conv", "hidden", "head", "bn", "proj"]
  assert rows["conv"]["weight"].startswith("uniform4/") and rows["conv"]["input"] == "float"
  assert rows["hidden"]["weight"].startswith("uniform4/") and rows["hidden"]["input"] != "float"
  assert rows["head"]["note"] == "float: no rule quantizes it"
  assert rows["proj"]["weight"] == "float" and rows["proj"]["note"] == floats["proj"].reason
  text = format_plan(layers, plan, list(floats.values())).splitlines()
  assert text[0].split() == ["layer", "kind", "weight", "input", "note"] and len(text) == 7
