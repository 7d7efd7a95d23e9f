"""README "Quantizing your own model", step by step, on a Flax model no registry knows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from quantjax.export.lower import lower
from quantjax.intercept import (
  Rule,
  discover_float_layers,
  discover_layers,
  format_plan,
  quantized_apply,
  quantized_init,
  resolve,
)
from quantjax.intsim import Emulator
from quantjax.train.state import TrainState
from quantjax.train.steps import make_train_step
from tests.intsim import reference


class MyNet(nn.Module):
  """The user's model: plain flax.linen, nothing quantjax-specific."""

  @nn.compact
  def __call__(self, x, train=False):  # [B, 8, 8, 1]
    x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))  # [B, 8, 8, 8]
    x = nn.max_pool(x, (2, 2), (2, 2))  # [B, 4, 4, 8]
    x = x.reshape(x.shape[0], -1)  # [B, 128]
    x = nn.relu(nn.Dense(32, name="hidden")(x))
    return nn.Dense(4, name="head")(x)  # [B, 4]


def test_quantize_fine_tune_export_and_emulate_your_own_model():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)  # [B, H, W, C] raw images
  labels = (pixels.reshape(64, -1).mean(-1) > 127).astype(np.int32) * 2
  mean, std = np.array([0.5]), np.array([0.25])
  images = jnp.asarray((pixels / 255.0 - mean) / std, jnp.float32)
  model = MyNet()

  # 1. The plan: default W4A4, 8-bit first and last layer weights, the image input float.
  layers = discover_layers(model, images[:2])
  plan = resolve(layers, weight={"name": "uniform", "bits": 4, "granularity": "channel"},
                 act={"name": "uniform", "bits": 4, "signed": False},
                 first_layer={"weight": {"bits": 8}, "act": None},
                 last_layer={"weight": {"bits": 8}},
                 rules=[Rule(pattern="hidden", act={"bits": 6})])
  table = format_plan(layers, plan, discover_float_layers(model, images[:2]))
  assert [line.split()[0] for line in table.splitlines()[2:]] == ["conv", "hidden", "head"]

  # 2. Fine-tune: a TrainState whose apply_fn applies the plan, and quantjax's train step.
  variables = quantized_init(model, plan)(jax.random.key(0), images[:16], train=False)
  state = TrainState.create(
      apply_fn=quantized_apply(model, plan, training=None), params=variables["params"],
      tx=optax.adam(1e-3), quant_state=variables.get("quant_state", {}))
  step = jax.jit(make_train_step(model, plan, num_classes=4, seed=0))
  losses = []
  for i in range(10):
    state, metrics = step(state, {"image": images[i * 6:(i + 1) * 6 + 16],
                                  "label": jnp.asarray(labels[i * 6:(i + 1) * 6 + 16])})
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  logits = state.apply_fn(state.variables(), images, train=False)

  # 3. Export by tracing and emulate in integers.
  graph = lower("my_net", model, state.variables(), plan, (8, 8, 1), mean, std)
  out, stats = Emulator(graph)(pixels)
  np.testing.assert_array_equal(out, reference.run(graph, pixels)[0])  # bit-exact
  assert sum(s["overflows"] for s in stats.values()) == 0
  agreement = np.mean(np.argmax(out, -1) == np.argmax(np.asarray(logits), -1))
  assert agreement >= 0.9
