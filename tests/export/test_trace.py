"""Export by tracing: every bundled model and a model defined only here lower and run bit-exactly.

The graph comes from what the model computes (quantjax.export.trace), so a model nobody
registered exports like the bundled ones; the NumPy int64 reference (tests/intsim/reference.py)
checks the emulator on each graph, and the fake-quant model checks that the graph computes the
model.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax.export import export_run, lower
from quantjax.export.trace import trace
from quantjax.intercept import quantized_apply, quantized_init
from quantjax.intercept.layers import discover_layers
from quantjax.intercept.plan import resolve
from quantjax.intsim import Emulator
from quantjax.models.resnet import ResNet, resnet18
from tests.intsim import reference
from tests.intsim.conftest import FAMILIES, UNIFORM_W, _perturb_bn

IMAGE_SHAPE = (28, 28, 1)
MEAN, STD = (0.1307,), (0.3081,)


class _TinyNet(nn.Module):
  """A model registered nowhere, built from what the integer graph supports.

  conv-BN-ReLU, max-pool, a projected residual block, a global `nn.avg_pool`, flatten,
  dense-ReLU-BN (a BatchNorm that cannot fold into the dense), dense.
  """

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 28, 28, 1]
    def bn(name):
      return nn.BatchNorm(use_running_average=not train, name=name)

    x = nn.relu(bn("bn_stem")(nn.Conv(6, (3, 3), name="stem")(x)))  # conv bias folds with BN
    x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, 14, 14, 6]
    y = nn.Conv(8, (3, 3), (2, 2), padding=1, use_bias=False, name="conv_a")(x)  # [B, 7, 7, 8]
    y = nn.relu(bn("bn_a")(y))
    y = bn("bn_b")(nn.Conv(8, (3, 3), padding="SAME", use_bias=False, name="conv_b")(y))
    s = bn("bn_proj")(nn.Conv(8, (1, 1), (2, 2), use_bias=False, name="proj")(x))
    x = nn.relu(s + y)
    x = nn.avg_pool(x, x.shape[1:3])  # [B, 1, 1, 8]
    x = x.reshape(x.shape[0], -1)  # [B, 8]
    x = bn("bn_fc")(nn.relu(nn.Dense(12, name="fc")(x)))  # BN after ReLU: into the requant
    return nn.Dense(10, name="head")(x)


def _quantize(model, family="uniform8", seed=0, count=8):
  """(plan, NumPy variables with perturbed BatchNorm, uint8 images) of `model` under `family`."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
  x = ((images / 255.0 - np.asarray(MEAN)) / np.asarray(STD)).astype(np.float32)
  layers = discover_layers(model, jnp.asarray(x[:2]), train=False)
  weight, act = FAMILIES[family]
  plan = resolve(layers, weight=weight, act=act, first_layer={"weight": UNIFORM_W},
                 last_layer={"weight": UNIFORM_W})
  rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}
  init = jax.jit(lambda r, x: quantized_init(model, plan)(r, x, train=False))  # eager: slow
  variables = init(rngs, jnp.asarray(x))
  variables = jax.tree_util.tree_map(np.array, jax.device_get(dict(variables)))
  return plan, _perturb_bn(variables, rng), images


def _bit_exact(graph, images):
  out, stats = Emulator(graph)(images)
  ref, ref_over, _ = reference.run(graph, images)
  np.testing.assert_array_equal(out, ref)
  assert all(stats[name]["overflows"] == n for name, n in ref_over.items())
  return out


def _fake_quant_logits(model, plan, variables, graph, images):
  """The fake-quant model's logits on the integer graph's own input grid."""
  inp = graph.nodes[0]["out"]
  step = 2.0 ** -graph.meta["input_frac_bits"] / (255.0 * np.asarray(STD))
  x = (images.astype(np.int64) * graph.tensors[f"{inp}.mul"] - graph.tensors[f"{inp}.offset"])
  apply = quantized_apply(model, plan, training=False)
  return np.asarray(apply(variables, jnp.asarray(x * step, jnp.float32), train=False))


def test_model_defined_only_here_exports_bit_exact_and_matches_fake_quant():
  model = _TinyNet()
  plan, variables, images = _quantize(model)
  graph = lower("tiny_net", model, variables, plan, IMAGE_SHAPE, MEAN, STD)
  assert graph.meta["model"] == "tiny_net"
  ops = [n["op"] for n in graph.nodes]
  assert ops.count("add") == 1 and ops.count("sumpool") == 1 and ops.count("maxpool") == 1
  layers = {n["name"]: n for n in graph.layers()}
  assert list(layers) == ["stem", "conv_a", "conv_b", "proj", "fc", "head"]
  assert all(layers[name].get("folded_bn") for name in ("stem", "conv_a", "conv_b", "proj"))
  assert not layers["fc"].get("folded_bn")  # ReLU sits between fc and its BatchNorm
  assert layers["conv_a"]["padding"] == [[1, 1], [1, 1]] and layers["conv_a"]["strides"] == [2, 2]
  assert layers["proj"]["padding"] == [[0, 0], [0, 0]]
  # The residual add rescales the shortcut (proj, one layer since the image fewer than conv_b).
  add = graph.node([n["out"] for n in graph.nodes if n["op"] == "add"][0])
  assert graph.node(add["a"])["name"] == "conv_b" and graph.node(add["b"])["name"] == "proj"

  out = _bit_exact(graph, images)
  fq = _fake_quant_logits(model, plan, variables, graph, images)
  logits = out * graph.meta["output_scale"]
  assert np.mean(np.argmax(logits, -1) == np.argmax(fq, -1)) >= 0.85
  assert np.median(np.abs(logits - fq)) <= 0.05 * np.std(fq) + 1e-6


def test_resnet18_exports_bit_exact():
  # ResNet-18's 4 x 2 blocks at a small width (the registered one has 64..512 channels).
  model = ResNet(num_classes=10, stage_sizes=resnet18().stage_sizes,
                 stage_features=(4, 8, 8, 8))
  plan, variables, images = _quantize(model, "pot", count=2)
  graph = lower("resnet18", model, variables, plan, IMAGE_SHAPE, MEAN, STD)
  ops = [n["op"] for n in graph.nodes]
  assert ops.count("add") == 8 and ops.count("sumpool") == 1
  assert len(graph.layers()) == 1 + 8 * 2 + 3 + 1  # stem, block convs, 3 projections, head
  assert all(n.get("folded_bn") for n in graph.layers() if n["op"] == "conv")
  _bit_exact(graph, images)


def test_vgg_small_exports_bit_exact(quantized_run):
  exp, variables, images, _ = quantized_run("vgg_small", "uniform4")
  graph = export_run(exp, variables)
  ops = [n["op"] for n in graph.nodes]
  assert ops.count("maxpool") == 3 and ops.count("sumpool") == 1
  assert all(n.get("folded_bn") for n in graph.layers() if n["op"] == "conv")
  _bit_exact(graph, images[:2])


def test_trace_records_layer_calls_as_the_model_made_them():
  model = ResNet(num_classes=10, stage_sizes=(1, 1), stage_features=(4, 8))
  variables = jax.tree_util.tree_map(
      np.asarray, model.init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)), train=False))
  program = trace(model, variables, IMAGE_SHAPE)
  calls = {op.layer.path: op.layer for op in program.ops if op.layer is not None}
  assert list(calls)[:3] == ["stem_conv", "stem_bn", "stage1_block0/conv1"]
  conv1 = calls["stage2_block0/conv1"]  # 3x3 stride 2, SAME on 28: XLA pads (0, 1)
  assert conv1.strides == (2, 2) and conv1.padding == ((0, 1), (0, 1))
  assert conv1.input_shape == (2, 28, 28, 4) and conv1.output_shape == (2, 14, 14, 8)
  assert calls["stage2_block0/shortcut_conv"].padding == ((0, 0), (0, 0))
  assert calls["stage2_block0/bn2"].kind == "batch_norm"
  # Between layers: ReLUs, the residual adds and the mean; the layers' own ops are gone.
  between = {op.prim for op in program.ops if op.layer is None}
  assert between == {"max", "add", "reduce_sum", "div"}


class _TanhNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = jnp.tanh(nn.Conv(4, (3, 3), name="conv")(x))
    return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


class _WindowedAvgPoolNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3), name="conv")(x)), (2, 2), strides=(2, 2))
    return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("model,message", [
    (_TanhNet(), "cannot lower op 'tanh' after layer 'conv': it has no integer form"),
    (_WindowedAvgPoolNet(), "cannot lower op 'reduce_window_sum' after layer 'conv': an average "
                            r"pool with window \(2, 2\) over a \(28, 28\) map"),
])
def test_an_op_without_integer_form_is_a_one_line_error(model, message):
  plan, variables, _ = _quantize(model, count=2)
  with pytest.raises(ValueError, match=message) as e:
    lower("net", model, variables, plan, IMAGE_SHAPE, MEAN, STD)
  assert "\n" not in str(e.value)
