"""TensorBoard: the config as hparams and quantizer histograms, read back from the event file."""

import glob
import os
import struct

import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

from quantjax.train import summaries
from tests.train.conftest import tiny_run_config


def _events(logdir: str) -> list:
  """Every Event of the TFRecord event files under `logdir` (length, crc, data, crc)."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"),
                               recursive=True)):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      events.append(event)
      pos += 12 + length + 4
  return events


@pytest.fixture(scope="module")
def tensorboard_run(data_dir, tmp_path_factory):
  from quantjax.train import experiment, train_and_evaluate

  config = tiny_run_config(data_dir)
  config.num_epochs = 2 * 32 / 3500  # 2 steps
  config.tensorboard = True
  config.histogram_every_steps = 1
  workdir = str(tmp_path_factory.mktemp("tb") / "run")
  train_and_evaluate(config, workdir)
  return config, experiment.build(config), _events(os.path.join(workdir, "tensorboard"))


def test_hparams_record_the_config(tensorboard_run):
  config, _, events = tensorboard_run
  start = [v for e in events for v in e.summary.value
           if v.tag == "_hparams_/session_start_info"]
  assert len(start) == 1
  data = HParamsPluginData.FromString(start[0].metadata.plugin_data.content)
  hp = data.session_start_info.hparams
  assert hp["batch_size"].number_value == config.batch_size
  assert hp["model"].string_value == config.model
  assert hp["quant.weight.bits"].number_value == config.quant.weight.bits
  assert hp["quant.weight.name"].string_value == config.quant.weight.name
  assert hp["histogram_every_steps"].number_value == 1


def test_histograms_per_quantized_layer(tensorboard_run):
  _, exp, events = tensorboard_run
  histograms = {(v.tag, e.step): v.histo for e in events for v in e.summary.value
                if v.HasField("histo")}
  tags = {tag for tag, _ in histograms}
  assert {step for _, step in histograms} == {1, 2}
  for path, lq in exp.plan.layers:
    assert any(t.startswith(f"quant/{path}/") for t in tags), (path, sorted(tags))
    if lq.weight is not None:
      occupancy = histograms[(f"levels/{path}/weight", 2)]
      # One bucket per level of the b-bit weight quantizer (symmetric: 2^b - 1 or 2^b levels),
      # fractions summing to one, the weights spread over several levels.
      assert len(occupancy.bucket) in (2 ** lq.weight.bits - 1, 2 ** lq.weight.bits)
      assert sum(occupancy.bucket) == pytest.approx(1.0)
      assert sum(f > 0 for f in occupancy.bucket) >= 3
  lsq = [t for t in tags if t.endswith("weight_scale")]
  assert lsq, sorted(tags)  # the default weight quantizer learns an LSQ scale


def test_hparams_flatten_lists_and_none():
  import ml_collections

  config = ml_collections.ConfigDict({"a": {"b": 1, "c": None}, "rules": [{"x": 1}], "s": "v"})
  assert summaries.hparams(config) == {"a.b": 1, "a.c": "null", "rules": '[{"x": 1}]', "s": "v"}


def test_histogram_interval_may_change_on_resume():
  from quantjax.workdir import record

  assert record.is_safe("histogram_every_steps", 500, 0)
