"""ResNet-20 and ResNet-18 for 32x32 inputs: parameter counts, block layout, call order."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from quantjax import models

CIFAR = (1, 32, 32, 3)  # [B, H, W, C]


def _params(name):
  model = models.get_model(name, num_classes=10)
  x = np.zeros(CIFAR, np.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]


def _count(tree) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def test_resnet20_parameter_count():
  # Convs have no bias (BatchNorm follows); each BatchNorm has a scale and a bias per channel.
  stem = 3 * 3 * 3 * 16 + 2 * 16  # 464
  block16 = 2 * (3 * 3 * 16 * 16) + 2 * (2 * 16)  # 4,672
  block32 = 2 * (3 * 3 * 32 * 32) + 2 * (2 * 32)  # 18,560
  block64 = 2 * (3 * 3 * 64 * 64) + 2 * (2 * 64)  # 73,984
  # First block of stages 2 and 3: 3x3 conv Cin -> C, 3x3 conv C -> C, 1x1 projection Cin -> C.
  down32 = 3 * 3 * 16 * 32 + 3 * 3 * 32 * 32 + 16 * 32 + 3 * (2 * 32)  # 14,528
  down64 = 3 * 3 * 32 * 64 + 3 * 3 * 64 * 64 + 32 * 64 + 3 * (2 * 64)  # 57,728
  head = 64 * 10 + 10  # 650
  total = stem + 3 * block16 + down32 + 2 * block32 + down64 + 2 * block64 + head
  assert total == 272_474  # the 0.27 M of He et al. plus 2,752 for the two projections
  assert _count(_params("resnet20")) == 272_474


def test_resnet18_parameter_count():
  def block(cin, c):  # two 3x3 convs, two BatchNorms, and a projection when cin != c
    projection = cin * c + 2 * c if cin != c else 0
    return 3 * 3 * cin * c + 3 * 3 * c * c + 2 * (2 * c) + projection

  stem = 3 * 3 * 3 * 64 + 2 * 64  # 1,856
  stages = sum(block(cin, c) + block(c, c)
               for cin, c in [(64, 64), (64, 128), (128, 256), (256, 512)])
  head = 512 * 10 + 10
  assert stem + stages + head == 11_173_962
  assert _count(_params("resnet18")) == 11_173_962


@pytest.mark.parametrize(("name", "blocks"), [("resnet20", 3), ("resnet18", 2)])
def test_conv_call_order_and_projection_shortcuts(name, blocks):
  model = models.get_model(name, num_classes=10)
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
      out = next_fun(*args, **kwargs)
      calls.append(("/".join(context.module.scope.path), out.shape[1:]))
      return out
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(CIFAR, np.float32),
                                      train=False))
  widths = (16, 32, 64) if name == "resnet20" else (64, 128, 256, 512)
  expected = [("stem_conv", (32, 32, widths[0]))]
  for s, c in enumerate(widths, start=1):
    size = 32 // 2 ** (s - 1)  # stride 2 in the first block of every stage after the first
    for b in range(blocks):
      layers = ["conv1", "conv2"] + (["shortcut_conv"] if s > 1 and b == 0 else [])
      expected += [(f"stage{s}_block{b}/{layer}", (size, size, c)) for layer in layers]
  expected.append(("head", (10,)))
  assert calls == expected


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_convs_have_no_bias_and_every_conv_has_a_batch_norm(name):
  params = _params(name)
  flat = {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  convs = [p.removesuffix("/kernel") for p, leaf in flat.items()
           if p.endswith("/kernel") and leaf.ndim == 4]
  assert not any(p.endswith("/bias") and p.removesuffix("/bias") in convs for p in flat)
  for conv in convs:
    bn = conv.replace("conv", "bn")  # stem_conv -> stem_bn, conv1 -> bn1, shortcut_conv -> ..._bn
    assert f"{bn}/scale" in flat, conv
