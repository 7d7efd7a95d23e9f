"""Small quantized models (random weights, perturbed BatchNorm) for the export and intsim tests."""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
import pytest

from configs import default
from quantjax.intercept import quantized_apply, quantized_init
from quantjax.train import experiment

UNIFORM_W = dict(name="uniform", bits=8, granularity="channel", scale_method="lsq")
UNIFORM_A = dict(name="uniform", bits=8, signed=False, scale_method="max")

# family -> (weight spec, input spec) of the middle layers; first/last layers keep 8-bit uniform.
FAMILIES = {
    "uniform8": (UNIFORM_W, UNIFORM_A),
    "uniform4": (dict(UNIFORM_W, bits=4), dict(UNIFORM_A, bits=4)),
    "uniform_pow2": (dict(name="uniform", bits=6, scale_method="pow2"),
                     dict(name="uniform", bits=5, signed=False, scale_method="pow2")),
    "uniform_affine_act": (dict(UNIFORM_W, bits=4),
                           dict(name="uniform", bits=4, symmetric=False, scale_method="max")),
    "pact": (dict(UNIFORM_W, bits=4), dict(name="pact", bits=4)),
    "esb": (dict(name="esb", bits=4, significant_bits=2, granularity="channel", alpha="learned"),
            dict(name="esb", bits=4, significant_bits=2, signed=False)),
    "esb_midrise": (dict(name="esb", bits=4, significant_bits=3),
                    dict(name="esb", bits=3, significant_bits=1, signed=False)),
    "nuuq": (dict(name="nuuq", num_levels=5, container_bits=6), UNIFORM_A),
    "liss": (dict(name="liss", bits=4, int_bits=8), dict(name="liss", bits=3, int_bits=7)),
    "pot": (dict(name="pot", bits=4, granularity="channel"), dict(name="pot", bits=4,
                                                                    signed=False)),
    "fixed_point": (dict(name="fixed_point", bits=6), dict(name="fixed_point", bits=7)),
}

MODELS = {
    "lenet5": {},
    "sequential": dict(num_stages=2, narrow_stages=1, narrow=4, wide=6),
    "resnet20": {},
    "vgg_small": dict(width=0.0625),
}


def make_config(data_dir: str, model: str, family: str) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data_dir = data_dir
  config.model = model
  config.model_kwargs = ml_collections.ConfigDict(MODELS[model])
  weight, act = FAMILIES[family]
  config.quant.weight = ml_collections.ConfigDict(weight)
  config.quant.act = ml_collections.ConfigDict(act)
  config.quant.first_layer.weight = ml_collections.ConfigDict(UNIFORM_W)
  config.quant.last_layer.weight = ml_collections.ConfigDict(UNIFORM_W)
  return config


def _perturb_bn(variables, rng):
  """Non-trivial BatchNorm: random statistics, and some negative γ (exercises sign flips)."""
  def visit(params, stats):
    for name, sub in params.items():
      if name.startswith(("bn", "stem_bn", "shortcut_bn")) and "scale" in sub:
        c = sub["scale"].shape[0]
        sub["scale"] = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c, p=[0.3, 0.7])
        sub["bias"] = rng.normal(0, 0.3, c)
        stats[name]["mean"] = rng.normal(0, 0.5, c)
        stats[name]["var"] = rng.uniform(0.3, 2.0, c)
      elif isinstance(sub, dict) and name in stats:
        visit(sub, stats[name])
  visit(variables["params"], variables.get("batch_stats", {}))
  return variables


@functools.cache
def _run(data_dir, model, family, seed=0):
  config = make_config(data_dir, model, family)
  exp = experiment.build(config, training=False)
  images, labels = exp.dataset.raw("test", np.arange(16))  # the raw uint8 digits
  x = exp.dataset.normalise(images)
  rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
  # Jitted: eagerly, each quantizer op compiles a program of its own (ResNet-20: 20 s of 428).
  init = jax.jit(lambda r, x: quantized_init(exp.model, exp.plan)(r, x, train=False))
  variables = init(rngs, x)
  variables = jax.tree_util.tree_map(lambda a: np.array(a), jax.device_get(dict(variables)))
  variables = _perturb_bn(variables, np.random.default_rng(seed))
  return exp, variables, images, labels


@pytest.fixture
def quantized_run(data_dir):
  """`make(model, family)` -> (experiment, numpy variables, uint8 images, labels)."""
  return lambda model, family: _run(data_dir, model, family)


def fake_quant_logits(exp, variables, x):
  apply = quantized_apply(exp.model, exp.plan, training=False)
  return np.asarray(jax.jit(lambda v, x: apply(v, x, train=False))(variables, x))
