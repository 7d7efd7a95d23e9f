"""The jax.lax emulator against the independent NumPy int64 reference, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.export.graph import Builder
from quantjax.intsim import Accelerator, Emulator
from quantjax.intsim.emulator import _round_scaled, _round_shift
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
  # 'auto' on a CPU: the image's convolution on int16, 6 inputs on float32, the dense layers
  # (84 to 400 inputs) on int8 (`lowering.integer_faster`).
  auto = Emulator(graph, Accelerator(mac="auto")).plan
  assert [(auto[n["out"]]["path"], auto[n["out"]].get("dtype")) for n in graph.layers()] == [
      ("int", "int16"), ("f32", None), ("int", "int8"), ("int", "int8"), ("int", "int8")]
  # Unsigned 8-bit inputs (0..255, `test_bounds`) run as int8 operands shifted by -128, the
  # shift added back.
  node = graph.layers()[1]
  step = Emulator(graph, Accelerator(mac="int")).plan[node["out"]]
  assert (step["dtype"], step["offset"]) == ("int8", 128)


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


def test_integer_lowerings_chosen_per_layer_bit_exact(quantized_run):
  # mac='int', conv='auto' on a CPU: ResNet-20's 16-channel int8 convolutions run directly on a
  # kernel padded to 32 outputs, the first (1 channel, wider operands) directly; all bit-exact.
  if jax.default_backend() != "cpu":
    pytest.skip("the per-layer integer lowering is the CPU's")
  exp, variables, images, _ = quantized_run("resnet20", "uniform8")
  graph = export_run(exp, variables)
  plan = Emulator(graph, Accelerator(mac="int")).plan
  convs = [n for n in graph.layers() if n["op"] == "conv"]
  padded = [n["out"] for n in convs if "outputs" in plan[n["out"]]]
  assert padded and all(plan[o]["dtype"] == "int8" and plan[o]["conv"] == "lax" for o in padded)
  assert all(plan[o]["outputs"] == 16 for o in padded)
  _check_bit_exact(graph, images[:2], mac="int")


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
  # Without the counts, the same integers: saturation and wrapping still model the accumulator.
  for overflow, want in (("saturate", sat), ("wrap", wrap)):
    emulator = Emulator(graph, Accelerator(acc_bits=14, overflow=overflow))
    np.testing.assert_array_equal(emulator.outputs(images), want)
  # Where K·max|a|·max|w| + max|bias| fits the accumulator, overflow is impossible and only max|s|
  # is counted (the counts above agree with the reference either way).
  wide_plan, narrow_plan = (Emulator(graph, Accelerator(acc_bits=b)).plan for b in (32, 14))
  for n in graph.layers():
    p = wide_plan[n["out"]]
    bias = int(np.max(np.abs(graph.tensors[f"{n['out']}.bias"])))
    assert p["fits"] == (p["bound"] + bias < 2**31)
    assert narrow_plan[n["out"]]["fits"] == (p["bound"] + bias < 2**13)
  assert all(p["fits"] for p in wide_plan.values() if "fits" in p)  # layers and residual adds
  assert not narrow_plan[graph.layers()[0]["out"]]["fits"]


def test_images_split_over_devices_give_one_devices_integers_and_counts(quantized_run):
  """16 images on 4 devices: 4 each; 15: 12 split, then 3 whole on every device; 3: whole. The
  integers, overflow counts and max |s| are those of one device and of the NumPy reference."""
  exp, variables, images, _ = quantized_run("lenet5", "uniform8")
  graph = export_run(exp, variables)
  accel = Accelerator(acc_bits=14)  # conv1 overflows: the counts are not all zero
  one = Emulator(graph, accel, devices=jax.local_devices()[:1])
  four = Emulator(graph, accel, devices=jax.local_devices()[:4])
  chunks = four.place(images[:15])
  assert [c.shape[0] for c in chunks] == [12, 3]
  assert chunks[0].sharding.shard_shape(chunks[0].shape)[0] == 3
  assert chunks[1].sharding.is_fully_replicated
  for n in (16, 15, 3):
    out, stats = four(images[:n])
    want, want_stats = one(images[:n])
    np.testing.assert_array_equal(out, want)
    assert stats == want_stats
    np.testing.assert_array_equal(four.outputs(images[:n]), want)
  ref, ref_over, ref_max = reference.run(graph, images[:15], acc_bits=14)
  out, stats = four(images[:15])
  np.testing.assert_array_equal(out, ref)
  assert {k: s["overflows"] for k, s in stats.items() if k in ref_over} == ref_over
  assert {k: s["max_abs"] for k, s in stats.items() if k in ref_max} == ref_max
  assert sum(ref_over.values()) > 0
  with pytest.raises(ValueError, match="at least one device"):
    Emulator(graph, accel, devices=[])


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


@pytest.mark.parametrize("rounding", ["half_even", "half_up", "floor"])
def test_float64_rounding_equals_the_integer_shift(rounding):
  # Ties, near-ties and values at the edge |t| + 2^shift = 2^53, where float64 is still exact.
  rng = np.random.default_rng(1)
  shift = rng.integers(0, 41, 4000)
  k = rng.integers(-2**12, 2**12, 4000)
  near = rng.integers(-2, 3, 4000)
  t = k * 2**shift + (2**shift >> 1) + near  # around a tie (a tie itself where near = 0)
  edge_shift = np.array([0, 1, 2, 10, 30, 40, 40])
  edge = 2**53 - 2**edge_shift
  t, shift = np.concatenate([t, edge, -edge]), np.concatenate([shift, edge_shift, edge_shift])
  assert np.all(np.abs(t) + 2.0**shift <= 2.0**53)
  with jax.enable_x64(True):
    want = np.asarray(_round_shift(jnp.asarray(t), jnp.asarray(shift), rounding))
    half = np.where(shift > 0, np.ldexp(1.0, shift - 1), 0.0)
    got = _round_scaled(jnp.asarray(t, jnp.float64), jnp.asarray(np.ldexp(1.0, -shift)),
                        jnp.asarray(half), rounding)
    np.testing.assert_array_equal(np.asarray(got).astype(np.int64), want)
  np.testing.assert_array_equal(want, reference._shift_round(t, shift, rounding))


def test_float64_rescales_where_proven_and_int64_elsewhere(quantized_run):
  # Float64 where max|r|·max(m) + max|o| + 2^max(shift) <= 2^53 (every conv's requant and the
  # residual adds here), int64 where the bound passes it (after the sum pool: 64 positions of
  # 31-bit multiplied codes). Both bit-exact; forcing all onto int64 changes no integer.
  exp, variables, images, _ = quantized_run("resnet20", "uniform4")
  graph = export_run(exp, variables)
  emulator = Emulator(graph)
  rescales = [n["out"] for n in graph.nodes
              if n["op"] == "add" or (n["op"] == "requant" and n["kind"] == "dyadic")]
  kinds = {emulator.plan[out]["f64"] for out in rescales}
  assert kinds == {True, False}
  pooled = next(n for n in graph.nodes if n["op"] == "sumpool")["out"]
  after_pool = next(n["out"] for n in graph.nodes if n.get("in") == pooled)
  assert emulator.plan[after_pool]["f64"] is False
  out, stats = _check_bit_exact(graph, images[:2])
  forced = Emulator(graph)
  for name in rescales:  # before the first call traces the plan
    forced.plan[name]["f64"] = False
  forced_out, forced_stats = forced(images[:2])
  np.testing.assert_array_equal(forced_out, out)
  assert forced_stats == stats
  np.testing.assert_array_equal(emulator.outputs(images[:2]), out)


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
