"""ResNet image classification with adam_xla, on a CPU, GPUs or a Cloud TPU.

    ./bazelw run //trainers:imagenet -- --epsilon=1.0

With no data given it generates a small ImageNet-format data set (JPEG TFRecord shards) under
--model_dir and trains a small ResNet on it. Flags are read here once, turned into an
`ImagenetConfig` and validated before any work starts; the library never reads flags.
"""

import dataclasses

from absl import app
from absl import flags
from absl import logging

from trainers.image_classification import config as config_lib

_DEFAULTS = config_lib.ImagenetConfig()
_HELP = {
    "learning_rate": "Peak Adam learning rate (>= 0), before --lr_batch_scale. The default "
                     "suits --epsilon=1.0; with epsilon 1e-7 use about 1e-3.",
    "beta_1": "Adam beta_1, in [0, 1).",
    "beta_2": "Adam beta_2, in [0, 1).",
    "epsilon": "Adam epsilon hat (> 0); 1.0 or 0.1 suit Inception/ResNet on ImageNet.",
    "amsgrad": "Use AMSGrad.",
    "clipnorm": "Clip each gradient to this norm (> 0).",
    "clipvalue": "Clip gradient elements to [-clipvalue, clipvalue] (> 0).",
    "global_clipnorm": "Clip all gradients together to this global norm (> 0).",
    "weight_decay": "Decoupled weight decay (AdamW), >= 0; biases and batch norm exempt.",
    "lr_schedule": f"Learning-rate schedule: {', '.join(config_lib.SCHEDULES)}.",
    "warmup_steps": "Linear warm-up steps (>= 0).",
    "lr_batch_scale": "Scale the rate by global_batch_size / this (e.g. 256); 0: off.",
    "model": "resnet50, resnet18, or resnet_small (CPU-sized).",
    "image_size": "Training and evaluation image size in pixels (>= 16).",
    "num_classes": "Number of classes (>= 2).",
    "label_smoothing": "Label smoothing, in [0, 1).",
    "data_source": f"Where the data comes from: {', '.join(config_lib.DATA_SOURCES)}.",
    "data_dir": "Directory of train-*/validation-* shards (local or gs://), the TFDS data "
                "dir, or where to cache generated data.",
    "global_batch_size": "Examples per step over all replicas.",
    "train_examples": "Examples per epoch for --train_epochs (default: the split's size).",
    "strategy": f"Distribution strategy: {', '.join(config_lib.STRATEGIES)}.",
    "tpu": "Cloud TPU name, grpc:// address, or 'local' on a TPU VM (--strategy=tpu).",
    "num_logical_cpus": "Split the CPU into this many devices (try strategies on a CPU).",
    "dtype": f"Compute dtype: {', '.join(config_lib.DTYPES)} (variables stay float32).",
    "train_steps": "Training steps (or --train_epochs).",
    "train_epochs": "Training epochs (or --train_steps).",
    "steps_per_loop": "Steps per compiled call.",
    "eval_every": "Evaluate and checkpoint every this many steps (0: only at the end).",
    "log_every": "Progress line every this many steps.",
    "model_dir": "Checkpoints, TensorBoard logs and generated data; reused to resume.",
    "keep_checkpoints": "Checkpoints to keep.",
    "seed": "Random seed.",
    "deterministic": "Deterministic ops and input pipeline (slower).",
    "xla_scope": "auto (step on GPU/TPU, update on CPU), step, or update.",
}


def _define_flags():
  """One flag per config field, with the config's default."""
  for field in dataclasses.fields(config_lib.ImagenetConfig):
    default, help_text = getattr(_DEFAULTS, field.name), _HELP[field.name]
    kind = field.type if isinstance(field.type, type) else None
    if kind is bool or isinstance(default, bool):
      flags.DEFINE_bool(field.name, default, help_text)
    elif field.name in ("clipnorm", "clipvalue", "global_clipnorm", "train_epochs") or \
        isinstance(default, float):
      flags.DEFINE_float(field.name, default, help_text)
    elif field.name in ("train_steps", "train_examples") or isinstance(default, int):
      flags.DEFINE_integer(field.name, default, help_text)
    else:
      flags.DEFINE_string(field.name, default, help_text)


_define_flags()
_DEFAULT_TRAIN_STEPS = 1000


def config_from_flags():
  values = {f.name: flags.FLAGS[f.name].value
            for f in dataclasses.fields(config_lib.ImagenetConfig)}
  if values["train_steps"] is None and values["train_epochs"] is None:
    values["train_steps"] = _DEFAULT_TRAIN_STEPS
  return config_lib.ImagenetConfig(**values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config = config_from_flags().validate()
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  if config.num_logical_cpus:
    from adam_xla import distribution  # pylint: disable=g-import-not-at-top
    distribution.split_cpu(config.num_logical_cpus)
  from trainers.image_classification import train  # pylint: disable=g-import-not-at-top
  if config.epsilon < 1e-3 and config.learning_rate > 0.05:
    logging.warning("--learning_rate=%g with --epsilon=%g: Adam's steps are about the learning "
                    "rate in size, so this is likely to diverge; try --learning_rate=1e-3.",
                    config.learning_rate, config.epsilon)
  metrics = train.train_and_evaluate(config)
  print("final evaluation: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) +
        f"  (chance {1.0 / config.num_classes:.4f})")


if __name__ == "__main__":
  app.run(main)
