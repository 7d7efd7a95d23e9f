"""The model registry: names, errors that list the valid names, keyword pass-through."""

import flax.linen as nn
import pytest

from quantjax import models
from quantjax.models import registry

BUILT_IN = ["lenet5", "resnet18", "resnet20", "sequential", "vgg_small"]


def test_built_in_names_are_registered_sorted():
  assert models.model_names() == BUILT_IN


def test_unknown_name_lists_every_valid_name():
  with pytest.raises(ValueError, match=r"unknown model 'resnet21'; valid models: ") as err:
    models.get_model("resnet21", num_classes=10)
  assert str(err.value).endswith(", ".join(BUILT_IN))


def test_unknown_field_is_a_value_error_naming_it():
  with pytest.raises(ValueError, match=r"model 'lenet5': .*'depth'"):
    models.get_model("lenet5", num_classes=10, depth=3)
  with pytest.raises(ValueError, match=r"model 'resnet20': .*'width'"):
    models.get_model("resnet20", num_classes=10, width=2.0)


def test_fields_and_num_classes_reach_the_model():
  model = models.get_model("lenet5", num_classes=7, width=0.5)
  assert (model.num_classes, model.width) == (7, 0.5)
  assert models.get_model("resnet20", num_classes=100).num_classes == 100


def test_register_adds_a_model_and_refuses_a_duplicate(monkeypatch):
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

  @models.register("tiny_mlp")
  class TinyMLP(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
      return nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))

  assert "tiny_mlp" in models.model_names()
  assert isinstance(models.get_model("tiny_mlp", num_classes=3), TinyMLP)
  with pytest.raises(ValueError, match=r"model 'lenet5' is already registered by LeNet5"):
    models.register("lenet5")(TinyMLP)
