"""Models: plain flax.linen networks with no quantization inside, registered by name.

Every model is called as `model(x, train)` with x [B, H, W, C] and returns logits [B, classes].
"""

from quantjax.models import lenet, resnet, sequential, vgg  # noqa: F401  (register the models)
from quantjax.models.registry import get_model, model_names, register

__all__ = ["get_model", "model_names", "register"]
