"""Default: LeNet-5 on mnist5k with 4-bit weights and activations (uniform, quantization-aware).

  python train.py --config=configs/default.py --workdir=runs/default

The first layer keeps 8-bit weights and a float input (the image), the classifier 8-bit weights;
every other Conv/Dense layer gets 4-bit per-channel LSQ weights and 4-bit unsigned inputs.
Reaches about 98 % test accuracy on the 1,000 test digits in a few minutes on a 2-core CPU
(see the README's results for the measured figure).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from quantjax.intercept.spec import quantizer_changes, quantizer_spec


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "train"  # 'train' (float or quantization-aware training) | 'ptq' (post-training)
  # Modules (names or .py paths) imported first, registering quantizers, models or datasets of
  # your own; train.py's --import adds to it, and the run records it for eval.py and the tools.
  config.imports = ()
  # Data.
  config.dataset = "mnist5k"  # 'mnist5k' (embedded, offline) or any tfds name, e.g. 'cifar10'
  config.data_dir = ""  # tfds data_dir; '' = tfds default (~/tensorflow_datasets)
  # Folder with the original files of a dataset built from local files (fashion_mnist: the four
  # IDX files); '' = where Debian's package dataset-fashion-mnist puts them.
  config.source_dir = ""
  # 'auto': a split held in memory (mnist5k, Fashion-MNIST) stays on the device, where batches are
  # shuffled and augmented by jitted programs; larger ones go through the host (NumPy) pipeline.
  # 'host' | 'device' force one (their random streams differ; a config without the field is host).
  config.input_pipeline = "auto"
  config.augment = "shift"  # 'none' | 'shift' (digits) | 'shift_flip' (clothes) | 'crop_flip'
  # Model.
  config.model = "lenet5"  # see quantjax.models.model_names()
  config.model_kwargs = ml_collections.ConfigDict()  # extra fields of the model, e.g. width
  # Optimisation.
  config.seed = 0  # init, shuffling, augmentation and dropout all derive from it
  config.num_epochs = 80.0  # epochs over the train split (fractions allowed)
  config.batch_size = 128  # global batch, split over all devices
  config.eval_batch_size = 500  # padded and masked: every example counted once
  config.optimizer = "adam"  # 'sgd' (Nesterov momentum) | 'adam' | 'adamw'
  config.learning_rate = 3e-3  # peak learning rate
  config.momentum = 0.9  # for sgd
  config.weight_decay = 1e-4  # on kernels only
  config.schedule = "cosine"  # 'cosine' (to zero) | 'constant'
  config.warmup_epochs = 1.0  # linear warm-up
  config.grad_clip_norm = 0.0  # 0 = no clipping
  config.init_from = ""  # workdir of a (float) run to fine-tune from; '' = from scratch
  # Bookkeeping.
  config.num_devices = 0  # 0 = all local devices (data parallel)
  # On a CPU: 'auto' gives a run one device per core when a step's forward pass has >= 1 G
  # multiply-adds (ResNet-20, VGG-small; not LeNet-5), 'per_core', or 'one' (XLA's default).
  # Chosen before JAX starts; XLA_FLAGS=--xla_force_host_platform_device_count=N overrides it.
  config.cpu_devices = "auto"
  # The convolutions' kernel gradient: 'auto' computes it tap by tap (one matrix product per
  # kernel tap) on a CPU of one device where the output map has >= 24x24 positions and the
  # input >= 8 channels, if the CPU is x86-64 without AVX-512; XLA's own elsewhere (one device per
  # core, or AVX-512: XLA's was faster); 'taps' or 'xla' everywhere. The forward is the same; see
  # quantjax/intercept/conv.py.
  config.conv_kernel_grad = "auto"
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.eval_every_epochs = 10.0  # validation accuracy during training; 0 = only at the end
  config.tensorboard = True  # event files in <workdir>/tensorboard
  # TensorBoard histograms of learned quantizer parameters and kernel level occupancy every N
  # steps (and at the last step); 0 = off.
  config.histogram_every_steps = 500
  config.quant = quant_config(weight_bits=4, act_bits=4)
  return config


def quant_config(weight_bits: int, act_bits: int) -> ml_collections.ConfigDict:
  """Uniform QAT block: the fields every config's `quant` has."""
  quant = ml_collections.ConfigDict()
  quant.enabled = True  # False = float training
  quant.layers = ".*"  # regex (full match) of the Conv/Dense paths to quantize
  # Default kernel quantizer: registry name plus every field of its dataclass (quantjax.quantizers),
  # so any of them can be overridden, e.g. --config.quant.weight.estimator=ste.
  quant.weight = quantizer_spec("uniform", bits=weight_bits, granularity="channel",
                                scale_method="lsq")
  # Default input-activation quantizer (inputs of quantized layers are post-ReLU: unsigned).
  quant.act = quantizer_spec("uniform", bits=act_bits, signed=False, scale_method="max")
  # Bias and layer-output quantizers: float, with every quantizer field listed so that one can be
  # set on the command line (--config.quant.bias.name=uniform --config.quant.bias.bits=8).
  quant.bias = quantizer_changes(name="float")
  quant.output = quantizer_changes(name="float")
  # First and last layers: fields changed from the defaults (None = unchanged; name='float' keeps
  # that tensor float, another name replaces the default's quantizer). The first layer's input
  # (the image) stays float: None, set whole on the command line
  # (--config.quant.first_layer.act="{'name': 'uniform', 'bits': 8}"); the last layer's input
  # keeps the default's ({}: no change).
  quant.first_layer = ml_collections.ConfigDict(
      dict(weight=quantizer_changes(bits=8), act=placeholder(ml_collections.ConfigDict)))
  quant.last_layer = ml_collections.ConfigDict(
      dict(weight=quantizer_changes(bits=8), act=ml_collections.ConfigDict()))
  # Further overrides, applied in order: a tuple of {'pattern': regex, 'weight': {...}, 'act':
  # {...}, 'bias': ..., 'output': ...}; on the command line a Python list literal:
  # --config.quant.rules="[{'pattern': 'fc1', 'weight': {'bits': 2}}]"
  quant.rules = ()
  # Products of layers whose input and kernel sit on integer grids of at most 8 bits, formed on
  # the integers (int8 x int8 -> int32, several times faster on a CPU; the float product's
  # gradient): 'auto' (on a CPU, from 32 input channels on), 'on', 'off' (the float product of
  # fake-quantized values).
  quant.integer_products = "auto"
  return quant
