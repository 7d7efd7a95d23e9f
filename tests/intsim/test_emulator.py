"""The jax.lax emulator against the independent NumPy int64 reference, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.export.graph import Builder
from quantjax.intsim import Accelerator, Emulator
from quantjax.intsim.emulator import (
  _round_shift,
  conv_lowering,
  conv_patches,
  decoded_range,
  value_ranges,
)
from tests.intsim import reference
from tests.intsim.conftest import FAMILIES, fake_quant_logits


def _check_bit_exact(graph, images, conv="auto", **accel):
  out, stats = Emulator(graph, Accelerator(**accel), conv=conv)(images)
  ref, ref_over, ref_max = reference.run(graph, images, **{k: v for k, v in accel.items()
                                                           if k != "mac"})
  np.testing.assert_array_equal(out, ref)
  for name, count in ref_over.items():
    assert stats[name]["overflows"] == count, name
  for name, m in ref_max.items():
    assert stats[name]["max_abs"] == m, name
  return out, stats


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lenet5_every_family_bit_exact_and_close_to_fake_quant(quantized_run, family):
  exp, variables, images, _ = quantized_run("lenet5", family)
  graph = export_run(exp, variables)
  out, stats = _check_bit_exact(graph, images)
  assert all(s["overflows"] == 0 for s in stats.values())
  # The integer model computes what the fake-quant model computes on the integer model's own
  # input grid: same predictions, logits equal up to requantization rounding.
  inp = graph.nodes[0]["out"]
  step = 2.0 ** -graph.meta["input_frac_bits"] / (255.0 * np.asarray(exp.dataset.spec.std))
  x = (images.astype(np.int64) * graph.tensors[f"{inp}.mul"] - graph.tensors[f"{inp}.offset"])
  fq = fake_quant_logits(exp, variables, (x * step).astype(np.float32))
  logits = out * graph.meta["output_scale"]
  assert np.mean(np.argmax(logits, -1) == np.argmax(fq, -1)) >= 0.9
  assert np.median(np.abs(logits - fq)) <= 0.05 * np.std(fq) + 1e-6


@pytest.mark.parametrize("model,family", [
    ("sequential", "uniform4"), ("sequential", "esb"), ("resnet20", "pot")])
def test_models_with_batch_norm_and_residuals_bit_exact(quantized_run, model, family):
  exp, variables, images, _ = quantized_run(model, family)
  graph = export_run(exp, variables)
  ops = {n["op"] for n in graph.nodes}
  if model == "resnet20":
    assert "add" in ops and "sumpool" in ops
    assert any(n.get("folded_bn") for n in graph.layers())
    # Residual adds proven not to overflow count only max|s|; a narrow accumulator makes them
    # count overflows again, still equal to the reference's.
    adds = [n["out"] for n in graph.nodes if n["op"] == "add"]
    wide, narrow = (Emulator(graph, Accelerator(acc_bits=b)).plan for b in (32, 12))
    assert any(wide[a]["fits"] for a in adds) and not any(narrow[a]["fits"] for a in adds)
    _check_bit_exact(graph, images[:1], acc_bits=12)
  _check_bit_exact(graph, images[:2])


def test_rounding_modes_bit_exact(quantized_run):
  exp, variables, images, _ = quantized_run("lenet5", "esb")
  graph = export_run(exp, variables)
  for rounding in ("half_even", "half_up", "floor"):
    _check_bit_exact(graph, images[:8], rounding=rounding)


def test_mac_paths_agree(quantized_run):
  exp, variables, images, _ = quantized_run("lenet5", "uniform8")
  graph = export_run(exp, variables)
  outs = [Emulator(graph, Accelerator(mac=m))(images)[0] for m in ("int", "f32", "auto")]
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_array_equal(outs[0], outs[2])
  assert Emulator(graph, Accelerator(mac="int")).plan[graph.layers()[1]["out"]]["path"] == "int"
  # Unsigned 8-bit inputs (0..255) run as int8 operands shifted by -128, the shift added back.
  node = graph.layers()[1]
  assert decoded_range(graph, node, value_ranges(graph)) == (0, 255)
  step = Emulator(graph, Accelerator(mac="int")).plan[node["out"]]
  assert (step["dtype"], step["offset"]) == ("int8", 128)


@pytest.mark.parametrize("strides,padding", [
    ((1, 1), ((0, 0), (0, 0))), ((1, 1), ((2, 2), (2, 2))), ((2, 2), ((0, 1), (0, 1))),
    ((2, 1), ((1, 0), (2, 1)))])
@pytest.mark.parametrize("dtype,pref", [(np.int8, np.int32), (np.int64, np.int64)])
def test_conv_patches_is_the_integer_conv(strides, padding, dtype, pref):
  rng = np.random.default_rng(0)
  a = rng.integers(-128, 128, (3, 9, 8, 5)).astype(dtype)
  w = rng.integers(-128, 128, (3, 4, 5, 7)).astype(dtype)
  with jax.enable_x64(True):  # as inside the emulator
    got = np.asarray(conv_patches(jnp.asarray(a), jnp.asarray(w), strides, padding, pref))
    lax = np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(a), jnp.asarray(w), strides, padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=pref))
  # An independent NumPy loop: every output position's window times the kernel, in int64.
  ap = np.pad(a.astype(np.int64), ((0, 0), padding[0], padding[1], (0, 0)))
  ho, wo = (ap.shape[1] - 3) // strides[0] + 1, (ap.shape[2] - 4) // strides[1] + 1
  want = np.zeros((3, ho, wo, 7), np.int64)
  for y in range(ho):
    for x in range(wo):
      win = ap[:, y * strides[0]:y * strides[0] + 3, x * strides[1]:x * strides[1] + 4]
      want[:, y, x] = np.tensordot(win, w.astype(np.int64), axes=3)
  assert got.dtype == pref
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, lax)


def test_conv_lowering_by_backend():
  assert conv_lowering("auto", "gpu") == "patches" and conv_lowering("auto", "cpu") == "lax"
  assert conv_lowering("lax", "gpu") == "lax"
  with pytest.raises(ValueError, match="valid: auto, lax, patches"):
    conv_lowering("im2col")


def test_patches_lowering_bit_exact_with_strides_and_residuals(quantized_run):
  # mac='int': every conv runs as patches x integer matrix (as on a GPU); float32 MACs keep lax.
  exp, variables, images, _ = quantized_run("resnet20", "uniform4")
  graph = export_run(exp, variables)
  convs = [n["out"] for n in graph.layers() if n["op"] == "conv"]
  assert any(tuple(n["strides"]) != (1, 1) for n in graph.layers() if n["op"] == "conv")
  f32 = Emulator(graph, Accelerator(mac="f32"), conv="patches").plan
  assert all(f32[c]["path"] == "f32" and "conv" not in f32[c] for c in convs)
  _check_bit_exact(graph, images[:2], conv="patches", mac="int")
  assert all(Emulator(graph, Accelerator(mac="int"), conv="patches").plan[c]["conv"] == "patches"
             for c in convs)


def test_narrow_accumulator_overflows_saturate_vs_wrap(quantized_run):
  exp, variables, images, _ = quantized_run("lenet5", "uniform8")
  graph = export_run(exp, variables)
  _, wide = _check_bit_exact(graph, images, acc_bits=32)
  assert sum(s["overflows"] for s in wide.values()) == 0
  sat, sat_stats = _check_bit_exact(graph, images, acc_bits=14, overflow="saturate")
  wrap, wrap_stats = _check_bit_exact(graph, images, acc_bits=14, overflow="wrap")
  assert sum(s["overflows"] for s in sat_stats.values()) > 0
  # The first layer sees the same sums either way (it overflows: its input is the 13-bit image);
  # what it stores differs, and so does everything downstream.
  assert sat_stats["conv1"] == wrap_stats["conv1"]
  assert sat_stats["conv1"]["overflows"] > 0
  assert not np.array_equal(sat, wrap)
  # Where K·max|a|·max|w| + max|bias| fits the accumulator, overflow is impossible and only max|s|
  # is counted (the counts above agree with the reference either way).
  wide_plan, narrow_plan = (Emulator(graph, Accelerator(acc_bits=b)).plan for b in (32, 14))
  for n in graph.layers():
    p = wide_plan[n["out"]]
    bias = int(np.max(np.abs(graph.tensors[f"{n['out']}.bias"])))
    assert p["fits"] == (p["bound"] + bias < 2**31)
    assert narrow_plan[n["out"]]["fits"] == (p["bound"] + bias < 2**13)
  assert all(p["fits"] for p in wide_plan.values())
  assert not narrow_plan[graph.layers()[0]["out"]]["fits"]


def test_round_shift_hand_worked():
  import jax
  import jax.numpy as jnp
  t = np.array([5, 6, 7, -5, -6, -7, 10, -10, 3])  # divided by 4 (shift 2), except the last
  shift = np.array([2, 2, 2, 2, 2, 2, 2, 2, 0])
  expected = {
      "floor": [1, 1, 1, -2, -2, -2, 2, -3, 3],
      "half_up": [1, 2, 2, -1, -1, -2, 3, -2, 3],  # 1.5 -> 2, -1.5 -> -1, 2.5 -> 3, -2.5 -> -2
      "half_even": [1, 2, 2, -1, -2, -2, 2, -2, 3],  # 1.5 -> 2, -1.5 -> -2, 2.5 -> 2, -2.5 -> -2
  }
  with jax.enable_x64(True):
    for mode, want in expected.items():
      got = _round_shift(jnp.asarray(t, jnp.int64), jnp.asarray(shift, jnp.int64), mode)
      np.testing.assert_array_equal(np.asarray(got), want, err_msg=mode)
      np.testing.assert_array_equal(reference._shift_round(t, shift, mode), want, err_msg=mode)


def test_builder_rejects_float_layers(quantized_run):
  exp, variables, _, _ = quantized_run("lenet5", "uniform8")
  from quantjax.intercept.plan import QuantPlan
  plan = QuantPlan(tuple((p, lq) for p, lq in exp.plan.layers if p != "fc2"))
  exp2 = type(exp)(exp.config, exp.dataset, exp.model, exp.layers, plan)
  with pytest.raises(ValueError, match="'fc2' has float weights"):
    export_run(exp2, variables)
  assert Builder().mult_bits == 31


def test_accelerator_validation():
  with pytest.raises(ValueError, match="acc_bits=40 is out of range"):
    Accelerator(acc_bits=40)
  with pytest.raises(ValueError, match="rounding='nearest' is not valid; choose one of"):
    Accelerator(rounding="nearest")
