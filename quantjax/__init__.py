"""quantjax: low-bit and non-uniform quantization of CNNs in JAX/Flax."""

__version__ = "0.1.0"
