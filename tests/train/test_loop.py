"""train_and_evaluate: smoke runs, resume after a kill, NaN stop, summary and evaluation."""

import json
import logging
import os

import jax
import numpy as np
import pytest

from quantjax import data
from quantjax.train import checkpoint, evaluate_workdir, loop, sharding, train_and_evaluate


def _final_params(workdir):
  variables, step = checkpoint.restore_variables(workdir)
  return variables["params"], step


def test_smoke_run_writes_summary_and_checkpoints(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(tiny_config, workdir)
  assert summary["step"] == 6
  assert summary["num_examples"] == {"validation": 500, "test": 1000}
  assert 0.0 <= summary["accuracy"]["test"] <= 1.0
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk["accuracy"] == summary["accuracy"]
  rows = {r["layer"]: r for r in summary["layers"]}
  assert rows["conv1"]["weight_bits"] == 8 and rows["conv1"]["act_bits"] == 32
  assert rows["conv2"]["weight_bits"] == 4 and rows["conv2"]["act_bits"] == 4
  assert rows["fc3"]["weight_bits"] == 8
  expected_bits = sum(r["weight_bits"] * r["num_weights"] + 32 * r["num_bias"]
                      for r in summary["layers"])
  assert summary["model_size_bits"] == expected_bits
  assert sorted(checkpoint.manager(workdir).all_steps()) == [2, 4, 6]
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [m["step"] for m in lines if "train/loss" in m] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("num_devices", [1, 4])
def test_the_train_step_compiles_once(tiny_config, tmp_path, num_devices):
  # The initial state must carry the mesh's sharding, as the step's outputs do; a state placed
  # on the one device alike but typed without the mesh made the step compile a second time.
  if jax.device_count() < num_devices:
    pytest.skip(f"needs {num_devices} (fake) devices")
  tiny_config.num_devices = num_devices
  compiled = []

  class Listener(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      if message.startswith("Finished XLA compilation of jit(train_step)"):
        compiled.append(message)

  listener = Listener()
  logging.getLogger("jax").addHandler(listener)
  try:
    with jax.log_compiles(True):
      train_and_evaluate(tiny_config, str(tmp_path / "run"))
  finally:
    logging.getLogger("jax").removeHandler(listener)
  assert len(compiled) == 1, compiled


def test_replicate_types_single_device_arrays_with_the_mesh():
  mesh = sharding.make_mesh(1)
  x = jax.numpy.arange(3.0)  # on one device, without the mesh
  assert x.sharding != sharding.replicated(mesh)
  y = sharding.replicate({"x": x}, mesh)["x"]
  assert y.sharding == sharding.replicated(mesh)
  np.testing.assert_array_equal(y, [0.0, 1.0, 2.0])


class _Killed(Exception):
  pass


def test_resume_after_kill_ends_where_uninterrupted_run_ends(tiny_config, tmp_path, monkeypatch):
  straight = str(tmp_path / "straight")
  train_and_evaluate(tiny_config, straight)

  # Kill the second run after 5 steps: its last checkpoint is step 4.
  real_prefetch = data.prefetch

  def dying_prefetch(iterator, size=2, put=None):
    for i, batch in enumerate(real_prefetch(iterator, size=size, put=put)):
      if i == 5:
        raise _Killed()
      yield batch

  killed = str(tmp_path / "killed")
  monkeypatch.setattr(loop.data, "prefetch", dying_prefetch)
  with pytest.raises(_Killed):
    train_and_evaluate(tiny_config, killed)
  assert checkpoint.manager(killed).latest_step() == 4
  monkeypatch.setattr(loop.data, "prefetch", real_prefetch)
  summary = train_and_evaluate(tiny_config, killed)
  assert summary["resumed_from"] == 4

  a, step_a = _final_params(straight)
  b, step_b = _final_params(killed)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
  real_prefetch = data.prefetch

  def poisoned(iterator, size=2, put=None):
    for i, batch in enumerate(real_prefetch(iterator, size=size, put=put)):
      if i == 2:  # the third step sees a NaN image
        batch = {**batch, "image": batch["image"] * np.nan}
      yield batch

  monkeypatch.setattr(loop.data, "prefetch", poisoned)
  workdir = str(tmp_path / "nan")
  with pytest.raises(loop.NaNLossError, match="loss is nan at step 3.*last good checkpoint"):
    train_and_evaluate(tiny_config, workdir)
  assert checkpoint.manager(workdir).all_steps() == [2]
  params, _ = _final_params(workdir)
  assert all(np.isfinite(p).all() for p in jax.tree_util.tree_leaves(params))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))


def test_eval_float_and_fakequant(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(tiny_config, workdir)
  fq = evaluate_workdir(workdir, split="test", mode="fakequant")
  assert fq["accuracy"] == pytest.approx(summary["accuracy"]["test"])
  assert fq["num_examples"] == 1000
  assert os.path.exists(os.path.join(workdir, "eval_test_fakequant_6.json"))
  fl = evaluate_workdir(workdir, split="validation", mode="float", step=4,
                        output=str(tmp_path / "e.json"))
  assert fl["step"] == 4 and fl["num_examples"] == 500
  assert all(r["weight_bits"] == 32 for r in fl["layers"])
  assert json.load(open(tmp_path / "e.json"))["accuracy"] == fl["accuracy"]


def test_fine_tune_from_float_checkpoint(tiny_config, tmp_path):
  float_dir = str(tmp_path / "float")
  float_config = tiny_config.copy_and_resolve_references()
  float_config.quant.enabled = False
  train_and_evaluate(float_config, float_dir)
  float_params, _ = _final_params(float_dir)

  tiny_config.init_from = float_dir
  tiny_config.num_epochs = 1e-9  # no update step: check the initialisation itself
  tiny_config.learning_rate = 1e-30  # zero is refused; this one moves no float32 weight
  qat_dir = str(tmp_path / "qat")
  summary = train_and_evaluate(tiny_config, qat_dir)
  qat_params, _ = _final_params(qat_dir)
  np.testing.assert_array_equal(qat_params["conv2"]["kernel"], float_params["conv2"]["kernel"])
  # LSQ steps are calibrated from the loaded weights: 2·mean|w|/sqrt(Qp) per channel.
  w = np.asarray(float_params["conv2"]["kernel"])
  expected = 2 * np.abs(w).mean(axis=(0, 1, 2)) / np.sqrt(7)
  np.testing.assert_allclose(qat_params["conv2"]["kernel_scale"], expected, rtol=1e-5)
  assert summary["quantized"]


def test_eval_does_not_need_the_init_from_checkpoint(tiny_config, tmp_path):
  import shutil

  float_config = tiny_config.copy_and_resolve_references()
  float_config.quant.enabled = False
  train_and_evaluate(float_config, str(tmp_path / "float"))
  tiny_config.init_from = str(tmp_path / "float")
  tiny_config.require_init_from = True
  summary = train_and_evaluate(tiny_config, str(tmp_path / "qat"))
  shutil.rmtree(tmp_path / "float")
  result = evaluate_workdir(str(tmp_path / "qat"))
  assert result["accuracy"] == pytest.approx(summary["accuracy"]["test"])
