"""The project's convolution: jax.lax's forward, a kernel gradient summed tap by tap."""

import builtins
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from quantjax import intercept
from quantjax.intercept import conv
from quantjax.train import experiment

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(kernel_grad, x, w, **kw):
  def loss(x, w):
    y = conv.conv_general_dilated(x, w, kernel_grad=kernel_grad, dimension_numbers=NHWC, **kw)
    return jnp.sum(jnp.sin(y))
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


def test_hand_worked_kernel_gradient():
  # y = x * w (2x2 kernel, VALID) over x = 1..9 in a 3x3 map; dL/dy = 1 everywhere, so each
  # kernel tap's gradient is the sum of the 2x2 input window it reads.
  x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
  w = jnp.zeros((2, 2, 1, 1))

  def loss(w):
    return jnp.sum(conv.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC,
                                             kernel_grad="taps"))

  np.testing.assert_array_equal(np.asarray(jax.grad(loss)(w))[..., 0, 0],
                                [[12.0, 16.0], [24.0, 28.0]])


@pytest.mark.parametrize("kw", [
    dict(window_strides=(1, 1), padding="SAME"),
    dict(window_strides=(1, 1), padding="VALID"),
    dict(window_strides=(2, 2), padding="SAME"),
    dict(window_strides=(2, 1), padding=((1, 2), (0, 1))),
    dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 2)),
    dict(window_strides=(3, 2), padding="VALID", rhs_dilation=(1, 2)),
])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 2)])
def test_taps_give_xlas_gradients(kw, kernel):
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.randn(3, 11, 9, 4).astype(np.float32))
  w = jnp.asarray(rs.randn(*kernel, 4, 5).astype(np.float32))
  (ref_x, ref_w), (got_x, got_w) = _grads("xla", x, w, **kw), _grads("taps", x, w, **kw)
  np.testing.assert_array_equal(np.asarray(got_x), np.asarray(ref_x))  # XLA's own, unchanged
  np.testing.assert_allclose(np.asarray(got_w), np.asarray(ref_w), rtol=1e-5,
                             atol=1e-5 * float(jnp.max(jnp.abs(ref_w))))
  # The forward is jax.lax's, bit for bit.
  ours = conv.conv_general_dilated(x, w, kernel_grad="taps", dimension_numbers=NHWC, **kw)
  theirs = jax.lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kw)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def _uses_taps(fn, *args) -> bool:
  return "name=tap_kernel_grad_conv" in str(jax.make_jaxpr(fn)(*args))


def test_auto_takes_the_taps_on_large_maps_of_several_channels_where_they_pay(monkeypatch):
  big, small, thin = jnp.ones((2, 24, 24, 8)), jnp.ones((2, 8, 8, 8)), jnp.ones((2, 24, 24, 7))
  call = lambda x, grad: conv.conv_general_dilated(  # noqa: E731
      x, jnp.ones((3, 3, x.shape[-1], 4)), (1, 1), "SAME", dimension_numbers=NHWC,
      kernel_grad=grad)
  assert jax.default_backend() == "cpu"
  assert jax.local_device_count() > 1  # the suite's fake devices: XLA's gradient
  assert not _uses_taps(lambda x: call(x, "auto"), big)
  assert _uses_taps(lambda x: call(x, "taps"), big)
  monkeypatch.setattr(jax, "local_device_count", lambda: 1)  # one CPU device
  monkeypatch.setattr(conv, "taps_pay_here", lambda: False)  # e.g. an AVX-512 host
  assert not _uses_taps(lambda x: call(x, "auto"), big)
  assert _uses_taps(lambda x: call(x, "taps"), big)
  monkeypatch.setattr(conv, "taps_pay_here", lambda: True)  # an AVX2 host
  assert _uses_taps(lambda x: call(x, "auto"), big)
  assert not _uses_taps(lambda x: call(x, "auto"), small)  # 8x8 < 24x24 positions
  assert not _uses_taps(lambda x: call(x, "auto"), thin)  # 7 < 8 input channels
  assert _uses_taps(lambda x: call(x, "taps"), small)
  assert not _uses_taps(lambda x: call(x, "xla"), big)


_AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx fma avx2 bmi2 sha_ni
"""
_INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512_vnni amx_tile
bugs\t\t: spectre_v1
"""


@pytest.mark.parametrize("machine, cpuinfo, pays", [
    ("x86_64", _AMD, True),  # AVX2 only: the taps were measured to pay
    ("x86_64", _INTEL, False),  # AVX-512: XLA's kernel gradient was faster
    ("AMD64", _AMD, True),
    ("x86_64", _AMD.replace("avx2", "avx2 avx512f"), False),
    ("x86_64", "", False),  # no flags to read: XLA's
    ("aarch64", "flags\t\t: fp asimd\n", False),  # unmeasured
    ("arm64", _AMD, False),
])
def test_taps_pay_on_x86_without_avx512_only(machine, cpuinfo, pays):
  assert conv.taps_pay(machine, cpuinfo) is pays


@pytest.mark.parametrize("case", ["groups", "integers", "nchw", "input_dilation"])
def test_other_convolutions_are_jax_laxs(case):
  x, w = jnp.ones((2, 26, 26, 4)), jnp.ones((3, 3, 4, 4))
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
  if case == "groups":
    w, kw["feature_group_count"] = jnp.ones((3, 3, 2, 4)), 2
  elif case == "integers":
    x, w = x.astype(jnp.int8), w.astype(jnp.int8)
    kw["preferred_element_type"] = jnp.int32
  elif case == "nchw":
    x, kw["dimension_numbers"] = jnp.ones((2, 4, 26, 26)), ("NCHW", "HWIO", "NCHW")
  else:
    kw["lhs_dilation"], kw["padding"] = (2, 2), ((1, 1), (1, 1))
  assert not _uses_taps(lambda x: conv.conv_general_dilated(x, w, kernel_grad="taps", **kw), x)
  np.testing.assert_array_equal(
      np.asarray(conv.conv_general_dilated(x, w, kernel_grad="taps", **kw)),
      np.asarray(jax.lax.conv_general_dilated(x, w, **kw)))


def test_unknown_kernel_grad_is_a_one_line_error_naming_the_valid_ones():
  with pytest.raises(ValueError, match=r"^conv_kernel_grad='fast' is not valid; choose one of "
                     r"auto, taps, xla$"):
    conv.primitive("fast")
  config = ml_collections.ConfigDict({"conv_kernel_grad": "fast"})
  with pytest.raises(ValueError, match="conv_kernel_grad='fast'"):
    experiment.check_training_values(config)


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))  # [B, 24, 24, 4]
    return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


class _OwnConv(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(4, (3, 3), conv_general_dilated=jax.lax.conv_general_dilated, name="conv")(x)


@pytest.mark.parametrize("quantized", [False, True])
def test_training_applies_reach_every_conv_and_keep_the_gradient(quantized):
  x = jnp.asarray(np.random.RandomState(1).randn(2, 24, 24, 1).astype(np.float32))
  model = _Net()
  plan = None
  if quantized:
    layers = intercept.discover_layers(model, x, train=False)
    plan = intercept.resolve(layers, weight={"name": "uniform", "bits": 8},
                             act={"name": "uniform", "bits": 8, "signed": False},
                             first_layer={"weight": {"name": "uniform", "bits": 8}, "act": None})
  variables = intercept.quantized_init(model, plan)({"params": jax.random.key(0)}, x)

  def grads(kernel_grad):
    apply = intercept.quantized_apply(model, plan, training=True,
                                      conv_kernel_grad=kernel_grad)

    def loss(params):
      out, _ = apply({**variables, "params": params}, x, mutable=True)
      return jnp.sum(out ** 2)
    return loss, jax.grad(loss)(variables["params"])

  loss_taps, taps = grads("taps")
  loss_xla, ref = grads("xla")
  assert _uses_taps(loss_taps, variables["params"])
  assert not _uses_taps(loss_xla, variables["params"])
  for a, b in zip(jax.tree_util.tree_leaves(taps), jax.tree_util.tree_leaves(ref), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_a_modules_own_convolution_is_left_alone():
  x = jnp.ones((2, 24, 24, 1))
  model = _OwnConv()
  variables = model.init(jax.random.key(0), x)
  apply = intercept.quantized_apply(model, None, training=True, conv_kernel_grad="taps")
  assert not _uses_taps(lambda p: jnp.sum(apply({"params": p}, x)), variables["params"])


def _swapped_code(*args, **kwargs):
  """Code that calls `builtins._quantjax_test_conv`: no free variables, so it can replace a
  module-level function's `__code__` in place, as Qwix's interception does."""
  import builtins
  return builtins._quantjax_test_conv(*args, **kwargs)


@pytest.mark.parametrize("how", ["attribute", "code"])
def test_a_patched_jax_lax_convolution_keeps_its_own_gradient(monkeypatch, how):
  calls = []
  original = types.FunctionType(_LAX.__code__, _LAX.__globals__, "original", _LAX.__defaults__)
  original.__kwdefaults__ = _LAX.__kwdefaults__

  def patched(lhs, rhs, *a, **kw):  # e.g. a QAT library's quantizing convolution
    calls.append(lhs.shape)
    return original(jnp.round(lhs), rhs, *a, **kw)

  x, w = jnp.full((1, 26, 26, 8), 0.4), jnp.ones((3, 3, 8, 2))
  if how == "attribute":  # jax.lax's attribute is another function
    monkeypatch.setattr(jax.lax, "conv_general_dilated", patched)
  else:  # the same function object runs other code
    monkeypatch.setattr(builtins, "_quantjax_test_conv", patched, raising=False)
    monkeypatch.setattr(_LAX, "__code__", _swapped_code.__code__)
    assert jax.lax.conv_general_dilated is _LAX
  call = lambda x: conv.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "SAME", dimension_numbers=NHWC, kernel_grad="taps")
  assert not _uses_taps(call, x)
  assert calls and float(jnp.max(jnp.abs(call(x)))) == 0.0  # the patched one ran: round(0.4)


_LAX = jax.lax.conv_general_dilated
