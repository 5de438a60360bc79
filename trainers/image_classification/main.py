"""ResNet image classification with adam_xla, on a CPU, GPUs or a Cloud TPU.

    ./bazelw run //trainers:imagenet -- --epsilon=1.0

With no data given it generates a small ImageNet-format data set (JPEG TFRecord shards) under
--model_dir and trains a small ResNet on it. Flags are read here once, turned into an
`ImagenetConfig` and validated before any work starts; the library never reads flags.
"""

import dataclasses

from absl import app
from absl import logging

from trainers.common import config as common_config
from trainers.image_classification import config as config_lib

_HELP = {
    **common_config.SHARED_HELP,
    "learning_rate": "Peak Adam learning rate (>= 0), before --lr_batch_scale. The default "
                     "suits --epsilon=1.0; with epsilon 1e-7 use about 1e-3.",
    "epsilon": "Adam epsilon hat (> 0); 1.0 or 0.1 suit Inception/ResNet on ImageNet.",
    "weight_decay": "Decoupled weight decay (AdamW), >= 0; biases and batch norm exempt.",
    "lr_batch_scale": "Scale the rate by global_batch_size / this (e.g. 256); 0: off.",
    "model": "resnet50, resnet18, or resnet_small (CPU-sized).",
    "image_size": "Training and evaluation image size in pixels (>= 16).",
    "num_classes": "Number of classes (>= 2).",
    "label_smoothing": "Label smoothing, in [0, 1).",
    "data_source": f"Where the data comes from: {', '.join(config_lib.DATA_SOURCES)}.",
    "data_dir": "Directory of train-*/validation-* shards (local or gs://), the TFDS data "
                "dir, or where to cache generated data.",
    "skip_bad_records": "Drop records that fail to parse or decode or have a label out of "
                        "range (logged with file and record) instead of stopping at the first.",
    "train_examples": "Examples per epoch for --train_epochs (default: the split's size).",
    "dtype": f"Compute dtype: {', '.join(config_lib.DTYPES)} (variables stay float32).",
    "train_steps": "Training steps (or --train_epochs).",
    "train_epochs": "Training epochs (or --train_steps).",
    "xla_scope": "auto (step on GPU/TPU, update on CPU), step, or update.",
}
common_config.define_flags(config_lib.ImagenetConfig, _HELP)
_DEFAULT_TRAIN_STEPS = 1000


def config_from_flags():
  config = common_config.from_flags(config_lib.ImagenetConfig)
  if config.train_steps is None and config.train_epochs is None:
    config = dataclasses.replace(config, train_steps=_DEFAULT_TRAIN_STEPS)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    config = config_from_flags().validate()
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  if config.num_logical_cpus:
    from trainers.common import strategies  # pylint: disable=g-import-not-at-top
    strategies.split_cpu(config.num_logical_cpus)
  from trainers.image_classification import train  # pylint: disable=g-import-not-at-top
  if config.epsilon < 1e-3 and config.learning_rate > 0.05:
    logging.warning(
        "--learning_rate=%g with --epsilon=%g: Adam's steps are about the learning "
        "rate in size, so this is likely to diverge; try --learning_rate=1e-3.",
        config.learning_rate, config.epsilon)
  from trainers.common import training_loop  # pylint: disable=g-import-not-at-top
  metrics = training_loop.exit_status_of(lambda: train.train_and_evaluate(config))
  print("final evaluation: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) +
        f"  (chance {1.0 / config.num_classes:.4f})")


if __name__ == "__main__":
  app.run(main)
