"""The dispatch window: it waits for the step `depth` steps back, and for no other."""

import pytest

from quantjax.train import dispatch


class _Output:
  """Stands for a step's output array: records when it is waited for."""

  def __init__(self, name, waited):
    self.name, self._waited = name, waited

  def block_until_ready(self):
    self._waited.append(self.name)
    return self


def test_admitting_a_step_waits_for_the_one_depth_steps_back():
  waited = []
  window = dispatch.StepWindow(depth=3)
  for step in range(1, 8):
    window.admit({"loss": _Output(step, waited)})
    assert len(window) == min(step, 3)
    assert waited == list(range(1, max(step - 3, 0) + 1))  # steps up to s - 3, each once


def test_depth_must_be_positive():
  with pytest.raises(ValueError, match="depth=0"):
    dispatch.StepWindow(depth=0)
  assert 1 <= dispatch.MAX_STEPS_IN_FLIGHT < 32 // 4  # far from XLA:CPU's 32 per device
