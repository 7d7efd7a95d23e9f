"""Everything a run is built from, resolved and validated from the config before any work."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import ml_collections

from quantjax import data, models
from quantjax.intercept import LayerInfo, QuantPlan, discover_layers, plan_from_config, sample_input
from quantjax.intercept.plan import check_quant_config

MODES = ("train", "ptq")  # gradient training (float or QAT) | post-training quantization


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  dataset: Any  # quantjax.data.Dataset
  model: nn.Module
  layers: list[LayerInfo]
  plan: QuantPlan  # empty for float runs

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
  dataset = data.get_dataset(config.dataset, data_dir=config.get("data_dir") or None)
  model = models.get_model(config.model, num_classes=dataset.spec.num_classes, **model_kwargs)
  layers = discover_layers(model, sample_input(dataset.spec.image_shape), train=False)
  plan = plan_from_config(config.get("quant"), layers) if quantized else QuantPlan()
  return Experiment(config=config, dataset=dataset, model=model, layers=layers, plan=plan)
