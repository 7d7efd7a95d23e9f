"""Everything a run is built from, resolved and validated from the config before any work."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import flax.linen as nn
import ml_collections

from quantjax import data, models
from quantjax.intercept import (
  LayerInfo,
  QuantPlan,
  conv,
  discover_layers,
  plan_from_config,
  sample_input,
)
from quantjax.intercept.plan import check_quant_config
from quantjax.train import sharding

MODES = ("train", "ptq")  # gradient training (float or QAT) | post-training quantization


# (field, lowest valid value, whether the lowest is allowed, kind): values outside cannot make
# sense (a negative learning rate ascends the loss; keep_checkpoints=0 deletes the final one).
_TRAINING_RANGES = (
    ("learning_rate", 0.0, False, float),
    ("keep_checkpoints", 1, True, int),
    ("log_every_steps", 1, True, int),
    ("checkpoint_every_steps", 1, True, int),
    ("eval_every_epochs", 0.0, True, float),
    ("warmup_epochs", 0.0, True, float),
    ("weight_decay", 0.0, True, float),
    ("grad_clip_norm", 0.0, True, float),
    ("num_devices", 0, True, int),
)


def check_training_values(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError for a training field whose value cannot make sense."""
  for name, low, inclusive, kind in _TRAINING_RANGES:
    if name not in config:
      continue
    value = config[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and number and float(value) != int(value):
      number = False
    if not number or math.isnan(value) or (value < low if inclusive else value <= low):
      valid = f"{'at least' if inclusive else 'above'} {low}"
      raise ValueError(f"{name}={value!r} cannot be used; valid: "
                       f"{'an integer' if kind is int else 'a number'} {valid}")
  momentum = config.get("momentum", 0.0)
  if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum={momentum!r} cannot be used; valid: [0, 1)")
  conv.check_kernel_grad(config.get("conv_kernel_grad", "auto"))


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  dataset: Any  # quantjax.data.Dataset
  model: nn.Module
  layers: list[LayerInfo]
  plan: QuantPlan  # empty for float runs

  def step_macs(self, batch_size: int) -> int:
    """Multiply-adds of the Conv/Dense layers' forward pass over `batch_size` examples."""
    return batch_size * sum(layer.macs for layer in self.layers)

  @property
  def num_classes(self) -> int:
    return self.dataset.spec.num_classes


def build(config: ml_collections.ConfigDict, *, quantized: bool = True,
          training: bool = True) -> Experiment:
  """Dataset, model, layers and quantization plan; raises ValueError on any bad name or value.

  `training=False` (evaluation of a finished workdir) skips the checks of `init_from`, which only
  training reads.
  """
  if config.get("mode", "train") not in MODES:
    raise ValueError(f"mode={config.mode!r} is not valid; choose one of {', '.join(MODES)}")
  for name in ("batch_size", "eval_batch_size"):
    if int(config.get(name, 1)) < 1:
      raise ValueError(f"{name}={config.get(name)!r} must be a positive integer")
  if config.num_epochs <= 0:
    raise ValueError(f"num_epochs={config.num_epochs!r} must be positive")
  if training:
    check_training_values(config)
  init_from = (config.get("init_from") or "") if training else ""
  if training and config.get("require_init_from") and not init_from:
    raise ValueError("this config fine-tunes a float checkpoint: set "
                     "--config.init_from=<workdir of a configs/float.py run>")
  if init_from and not os.path.isdir(os.path.join(init_from, "checkpoints")):
    raise ValueError(f"init_from={init_from!r} holds no checkpoints (expected "
                     f"{os.path.join(init_from, 'checkpoints')})")
  model_kwargs = dict(config.get("model_kwargs") or {})
  # Check names and quantizer specs before touching the dataset (which may need preparing).
  if quantized:
    check_quant_config(config.get("quant"))
  if config.model not in models.model_names():
    models.get_model(config.model, num_classes=2)  # raises the registry's error
  dataset = data.get_dataset(config.dataset, data_dir=config.get("data_dir") or None,
                             source_dir=config.get("source_dir") or None)
  model = models.get_model(config.model, num_classes=dataset.spec.num_classes, **model_kwargs)
  layers = discover_layers(model, sample_input(dataset.spec.image_shape), train=False)
  plan = plan_from_config(config.get("quant"), layers) if quantized else QuantPlan()
  return Experiment(config=config, dataset=dataset, model=model, layers=layers, plan=plan)


def choose_cpu_devices(config: ml_collections.ConfigDict, exp: Experiment | None = None) -> bool:
  """Before JAX starts: one CPU device per core for this config's training if
  `config.cpu_devices` asks for it ('auto': a step of at least 1 G forward multiply-adds;
  `sharding.cpu_devices_for_training`). `exp`: the config's experiment, if already built (building
  one starts no backend). Returns whether it set one device per core."""
  exp = exp or build(config)
  return sharding.cpu_devices_for_training(config.get("cpu_devices", "auto"),
                                           exp.step_macs(config.batch_size))
