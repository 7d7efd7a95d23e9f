"""The one TrainState of quantjax: params plus BatchNorm statistics and quantizer state."""

from __future__ import annotations

from typing import Any

from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
  """`params` hold model weights and learned quantizer parameters (steps, clips).

  `apply_fn` is the model with its quantization plan applied (`intercept.quantized_apply`;
  quantizers in training mode when called with `train=True`), never the float `model.apply`:
  `state.apply_fn(state.variables(), images, train=False)` gives the fake-quantized logits.
  """

  batch_stats: Any = struct.field(default_factory=dict)  # BatchNorm running statistics
  quant_state: Any = struct.field(default_factory=dict)  # running ranges, cluster levels, ...

  def variables(self, params: Any | None = None) -> dict[str, Any]:
    """The Flax variable dict for `apply`, optionally with other params (for gradients)."""
    variables = {"params": self.params if params is None else params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    if self.quant_state:
      variables["quant_state"] = self.quant_state
    return variables
