"""Default: LeNet-5 on mnist5k with 4-bit weights and activations (uniform, quantization-aware).

  python train.py --config=configs/default.py --workdir=runs/default

The first layer keeps 8-bit weights and a float input (the image), the classifier 8-bit weights;
every other Conv/Dense layer gets 4-bit per-channel LSQ weights and 4-bit unsigned inputs.
Reaches about 98 % test accuracy on the 1,000 test digits in a few minutes on a 2-core CPU
(see the README's results for the measured figure).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "train"  # 'train' (float or quantization-aware training) | 'ptq' (post-training)
  # Data.
  config.dataset = "mnist5k"  # 'mnist5k' (embedded, offline) or any tfds name, e.g. 'cifar10'
  config.data_dir = ""  # tfds data_dir; '' = tfds default (~/tensorflow_datasets)
  config.augment = "shift"  # 'none' | 'shift' (digits) | 'crop_flip' (CIFAR-style)
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
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.eval_every_epochs = 10.0  # validation accuracy during training; 0 = only at the end
  config.tensorboard = True  # event files in <workdir>/tensorboard
  config.quant = quant_config(weight_bits=4, act_bits=4)
  return config


def quant_config(weight_bits: int, act_bits: int) -> ml_collections.ConfigDict:
  """Uniform QAT block: the fields every config's `quant` has."""
  quant = ml_collections.ConfigDict()
  quant.enabled = True  # False = float training
  quant.layers = ".*"  # regex (full match) of the Conv/Dense paths to quantize
  # Default kernel quantizer: registry name plus its fields (quantjax.quantizers).
  quant.weight = ml_collections.ConfigDict(
      dict(name="uniform", bits=weight_bits, granularity="channel", scale_method="lsq"))
  # Default input-activation quantizer (inputs of quantized layers are post-ReLU: unsigned).
  quant.act = ml_collections.ConfigDict(
      dict(name="uniform", bits=act_bits, signed=False, scale_method="max"))
  # First and last layers: fields changed from the defaults; None keeps that tensor float.
  quant.first_layer = ml_collections.ConfigDict(
      dict(weight=ml_collections.ConfigDict(dict(bits=8)), act=None))
  quant.last_layer = ml_collections.ConfigDict(
      dict(weight=ml_collections.ConfigDict(dict(bits=8)), act=ml_collections.ConfigDict(dict())))
  quant.rules = []  # further overrides: [{'pattern': regex, 'weight': {...}, 'act': {...}}]
  return quant
