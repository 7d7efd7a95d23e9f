"""The suffix evaluator: the counts of a full evaluation, and the plain search's choices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ptq_fixedpoint
from quantjax import intercept
from quantjax.ptq import calibration, fixedpoint, suffix
from quantjax.ptq.evaluator import Evaluator
from quantjax.ptq.fixedpoint import Point
from quantjax.ptq.run import SPEEDUPS as ALL_SPEEDUPS
from quantjax.ptq.run import search_fixed_point
from quantjax.train import experiment


class Chain(nn.Module):
  """Conv -> ReLU -> Conv -> ReLU -> Dense -> ReLU -> Dense: every layer fed by the previous."""

  residual: bool = False  # add conv1's output to conv2's: a skip connection around conv2

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 6, 6, 1]
    del train
    h = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))  # [B, 6, 6, 4]
    y = nn.relu(nn.Conv(4, (3, 3), name="conv2")(h))
    if self.residual:
      y = y + h
    y = nn.relu(nn.Dense(8, name="fc1")(y.reshape(y.shape[0], -1)))  # [B, 8]
    return nn.Dense(3, name="fc2")(y)  # [B, 3]


def _setup(residual=False, n=200):
  model = Chain(residual=residual)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
  variables = model.init(jax.random.key(1), x[:1], train=False)
  # Biases of different sizes (init gives zeros), so the bias search has something to find.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: v + 0.05 * jax.random.normal(jax.random.key(len(str(path))), v.shape)
      if "bias" in str(path) else v, variables)
  labels = np.asarray(jnp.argmax(model.apply(variables, x, train=False), -1)).astype(np.int32)
  flip = rng.random(n) < 0.1  # a float accuracy near 0.9, so a candidate can also gain
  labels = np.where(flip, (labels + 1) % 3, labels).astype(np.int32)
  layers = intercept.discover_layers(model, jnp.asarray(x[:2]), train=False)
  spec = {"name": "fixed_point"}
  plan = intercept.resolve(layers, weight=spec, bias=spec, output=spec, act=None)
  _, created = intercept.quantized_apply(model, plan, training=False)(
      variables, jnp.asarray(x[:2]), train=False, mutable=["quant_state"])
  base = jax.device_get(created["quant_state"])
  max_abs = {}
  outputs = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, (nn.Conv, nn.Dense)) and context.method_name == "__call__":
      outputs[context.module.name] = out
    return out

  with nn.intercept_methods(record):
    model.apply(variables, jnp.asarray(x), train=False)
  for layer in layers:
    params = variables["params"][layer.path]
    max_abs[(layer.path, "weight")] = float(jnp.max(jnp.abs(params["kernel"])))
    max_abs[(layer.path, "bias")] = float(jnp.max(jnp.abs(params["bias"])))
    max_abs[(layer.path, "output")] = float(jnp.max(jnp.abs(outputs[layer.path])))
  paths = [layer.path for layer in layers]
  return model, plan, variables, base, x, labels, max_abs, paths


SPEEDUPS = [("suffix",), ("suffix", "stop_early"), ("suffix", "stop_early", "lookahead"),
            ("suffix", "stop_early", "lookahead", "dedupe")]


@pytest.fixture(scope="module", params=[False, True], ids=["chain", "residual"])
def searches(request):
  """The plain search and the search with each speed-up added in turn, on the chain model and
  on the same with a skip connection around conv2."""
  model, plan, variables, base, x, labels, max_abs, paths = _setup(residual=request.param)
  plain = Evaluator(model, plan, x, labels, batch_size=50)

  def accuracy(configurations):
    return [plain({**variables, "quant_state": fixedpoint.quant_state(base, points)})
            for points in configurations]

  acc_fp = Evaluator(model, None, x, labels, batch_size=50)(variables)
  options = {"acc_fp": acc_fp, "threshold": 0.03, "start_bits": {"weight": 10, "bias": 8,
                                                                  "output": 10}}
  slow = fixedpoint.search(accuracy, max_abs, paths, **options)
  fast = {}
  for speedups in SPEEDUPS:
    evaluator = suffix.PointAccuracy.build(model, plan, paths, variables, base, x, labels,
                                           batch_size=50, stop_early="stop_early" in speedups,
                                           rows=40, slots=4)
    result = fixedpoint.search(evaluator.accuracies, max_abs, paths, focus=evaluator.focus,
                               stop_early="stop_early" in speedups,
                               lookahead="lookahead" in speedups, dedupe="dedupe" in speedups,
                               **options)
    fast[speedups] = (result, evaluator)
  return slow, fast, plain


@pytest.mark.parametrize("speedups", SPEEDUPS, ids=["+".join(s) for s in SPEEDUPS])
def test_each_speedup_makes_the_plain_searchs_choices(searches, speedups):
  slow, fast, plain = searches
  quick, evaluator = fast[speedups]
  assert quick.points == slow.points
  assert quick.accuracy == slow.accuracy
  assert [r["accuracy"] for r in quick.history] == [r["accuracy"] for r in slow.history]
  # The landscape is not trivial: widths fall far below the start (10 and 8 bits).
  assert min(p.bits for p in slow.points.values()) <= 2
  assert max(p.bits for p in slow.points.values()) >= 6
  assert evaluator.num_traces == 1 and evaluator.evaluator.num_record_traces == 1
  assert plain.num_traces == 1
  if "dedupe" in speedups:  # fewer points than the same search without it
    assert quick.num_evaluations < fast[speedups[:-1]][0].num_evaluations
  if "lookahead" in speedups:  # a step's points in one call: far fewer calls than points
    assert evaluator.evaluator.num_calls < quick.num_evaluations / 3
  else:  # the same points, one per call (plus the exact re-counts of early-stopped ones)
    assert quick.num_evaluations >= slow.num_evaluations
    assert evaluator.evaluator.num_calls == quick.num_evaluations


# (slots, devices, the devices used with tests/conftest.py's 4): 10 images per slot and device
# with 4 slots and all devices (2 of them: 4 does not divide 10).
@pytest.mark.parametrize("slots, devices, used", [(1, 1, 1), (1, None, 4), (4, None, 2)])
@pytest.mark.parametrize("residual", [False, True], ids=["chain", "residual"])
def test_counts_from_every_cut_equal_full_counts(residual, slots, devices, used):
  model, plan, variables, base, x, labels, _, paths = _setup(residual=residual)
  plain = Evaluator(model, plan, x, labels, batch_size=50)
  fast = suffix.SuffixEvaluator(model, plan, paths, variables, x, labels, rows=40, slots=slots,
                                devices=devices)
  if jax.local_device_count() >= 4:
    assert fast.devices == used
  coarse = {(p, c): Point(3, 2) for p in paths for c in fixedpoint.COMPONENTS}
  state = fixedpoint.quant_state(base, coarse)
  # Lanes: the tensors around the cut at other points (LANE_LEAVES: the next layer's weights,
  # this layer's bias and output), one lane each, plus the state itself.
  lanes = np.asarray([[[3, 2], [3, 2], [3, 2]], [[2, 1], [3, 2], [3, 2]],
                      [[3, 2], [1, 0], [3, 2]], [[3, 2], [3, 2], [4, 1]],
                      [[5, 4], [2, 3], [2, 0]]], np.float32)
  for cut in [suffix.IMAGES, 0, 1, 2, 3, 1, 2]:  # forward, then back to an earlier cut
    fast.move(state, cut)
    expected = []
    for lane in lanes:
      points = dict(coarse)
      for (component, offset), (bits, frac) in zip(suffix.LANE_LEAVES, lane, strict=True):
        if 0 <= cut + offset < len(paths):
          points[(paths[cut + offset], component)] = Point(int(bits), int(frac))
      state_lane = fixedpoint.quant_state(base, points)
      expected.append(round(plain({**variables, "quant_state": state_lane}) * len(x)))
    counts = fast.evaluate(state, lanes)
    assert [(c, w, f) for c, w, f in counts] == [(e, len(x) - e, True) for e in expected], cut
    assert [fast.evaluate(state, lane[None])[0] for lane in lanes] == counts  # one at a time
  # Stopping: a lane stops once it has more than 2 wrong predictions, the others count on.
  counts = fast.evaluate(state, lanes, max_wrong=2)
  for (correct, wrong, finished), e in zip(counts, expected, strict=True):
    assert finished == (len(x) - e <= 2)
    assert (correct, wrong) == (e, len(x) - e) if finished else wrong > 2
  assert fast.num_traces == 1 and fast.num_record_traces == 1


def test_work_counts_each_image_from_its_cut_on():
  model, plan, variables, base, x, labels, _, paths = _setup()
  fast = suffix.SuffixEvaluator(model, plan, paths, variables, x, labels, rows=40)
  state = fixedpoint.quant_state(base, {(p, c): Point(3, 2) for p in paths
                                        for c in fixedpoint.COMPONENTS})
  macs = [1, 10, 100, 1000]  # per image, conv1, conv2, fc1, fc2 (any numbers: work is linear)
  n = len(x)
  fast.move(state, 1)  # records conv1's result, then conv2's
  lanes = np.asarray([[[3, 2], [3, 2], [3, 2]], [[1, 0], [1, 0], [1, 0]]], np.float32)
  whole = fast.evaluate(state, lanes)  # every image, from conv2's result: fc1 and fc2
  assert [f for _, _, f in whole] == [True, True]
  assert fast.work(macs) == {"counted": 2 * n * 1100, "whole": 2 * n * 1100,
                             "records": n * 11}
  # Stopped early: with the fc1 weights at 1 bit (all zeros) more than 2 of the first 40 rows
  # (one iteration) are wrong, so only those 40 add to 'counted', nothing to 'whole'.
  [(correct, wrong, finished)] = fast.evaluate(state, lanes[1:], max_wrong=2)
  assert not finished and wrong > 2 and correct + wrong == 40
  assert fast.work(macs) == {"counted": 2 * n * 1100 + 40 * 1100,
                             "whole": 2 * n * 1100, "records": n * 11}
  fast.move(state, suffix.IMAGES)  # back to the images: every layer from the first on
  fast.evaluate(state, lanes[:1])
  assert fast.work(macs)["whole"] == 2 * n * 1100 + n * 1111
  with pytest.raises(ValueError, match="3 layers' multiply-adds for 4 layers"):
    fast.work(macs[:3])


def test_devices_must_divide_the_images_of_a_slot():
  model, plan, variables, _, x, labels, _, paths = _setup()
  with pytest.raises(ValueError, match=r"devices=3 must .* divide rows // slots = 10"):
    suffix.SuffixEvaluator(model, plan, paths, variables, x, labels, rows=40, slots=4, devices=3)


def test_candidates_must_share_everything_upstream_of_the_cut():
  model, plan, variables, base, x, labels, max_abs, paths = _setup()
  evaluator = suffix.PointAccuracy.build(model, plan, paths, variables, base, x, labels,
                                         batch_size=50, rows=40, slots=4)
  points = {key: fixedpoint.start_point(m, 8) for key, m in max_abs.items()}
  evaluator.focus(points, ("fc1", "bias"))  # cut: fc1's result
  changed = {**points, ("fc1", "output"): Point(3, 1), ("fc2", "weight"): Point(3, 2)}
  assert len(evaluator.accuracies([points, changed])) == 2  # the tensors around the cut
  with pytest.raises(ValueError, match="conv2"):
    evaluator.accuracies([{**points, ("conv2", "output"): Point(3, 1)}])
  with pytest.raises(ValueError, match="fc2"):  # downstream: it must equal the first
    evaluator.accuracies([points, {**points, ("fc2", "bias"): Point(2, 1)}])


@pytest.fixture(scope="module")
def sequential(data_dir):
  """The Sequential net (4 of its 7 stages, narrowed; random weights) on mnist5k's validation
  digits: its convolutions, BatchNorm after ReLU, max-pool, dropout and global max-pool, at a
  depth whose 10 cuts (10 branches of the candidate program to trace) stay quick to compile."""
  config = ptq_fixedpoint.get_config()
  config.model = "sequential"
  config.model_kwargs.narrow, config.model_kwargs.wide = 4, 8  # 8 convs, cheap ones
  config.model_kwargs.num_stages, config.model_kwargs.narrow_stages = 4, 2
  config.data_dir = data_dir
  config.eval_batch_size = 100
  config.ptq.criterion = "agreement"  # scores against the float network's own predictions
  config.ptq.threshold = 0.02
  config.ptq.start_bits.weight, config.ptq.start_bits.bias, config.ptq.start_bits.output = 5, 3, 5
  exp = experiment.build(config, quantized=False, training=False)
  images, labels = calibration.split_arrays(exp.dataset, "validation", batch_size=100,
                                            num_batches=1)
  init = jax.jit(lambda key, x: exp.model.init(key, x, train=False))  # one compilation
  variables = init(jax.random.key(0), jnp.asarray(images[:2]))
  records = calibration.record_layers(exp.model, variables, images[:100])
  return exp, variables, records, images, labels, config.ptq


def test_fast_search_makes_the_plain_searchs_choices_on_the_sequential_net(sequential):
  exp, variables, records, images, labels, ptq = sequential
  reports = {}
  for speedups in [(), ALL_SPEEDUPS]:
    rules, report = search_fixed_point(exp, variables, records, images, labels, 1.0, ptq,
                                       speedups=speedups)
    reports[speedups] = (rules, report)
  (plain_rules, plain), (fast_rules, fast) = reports[()], reports[ALL_SPEEDUPS]
  assert fast_rules == plain_rules
  assert [(r["bits"], r["frac"], r["accuracy"]) for r in fast["history"]] == [
      (r["bits"], r["frac"], r["accuracy"]) for r in plain["history"]]
  assert len(plain["history"]) == 27  # 9 layers x (weights, bias, output)
  assert len({(r["bits"], r["frac"]) for r in plain["history"]}) > 5  # not one point for all
  assert fast["compilations"] == 1 and fast["record_compilations"] == 1
  assert fast["program_calls"] < plain["program_calls"] / 3
  # The plain search counts every image through every layer; the suffix search less, and no
  # more on its candidates counted whole than it counted in all.
  n, per_image = len(images), plain["network_macs_per_image"]
  assert per_image == sum(layer.macs for layer in exp.layers) > 0
  assert plain["work_macs"] == {"counted": plain["program_calls"] * n * per_image,
                                "whole": plain["program_calls"] * n * per_image, "records": 0}
  work = fast["work_macs"]
  assert 0 < work["whole"] <= work["counted"] < plain["work_macs"]["counted"]
  # The cut walks down the network once per component (weights, biases, outputs).
  assert 0 < work["records"] <= len(fixedpoint.COMPONENTS) * n * per_image
