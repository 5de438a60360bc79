"""adam_xla: Adam for TensorFlow whose update compiles into the same XLA program as the step.

The public API is what this module exports:

* `Adam`: the optimizer `tf.keras.optimizers.Adam` documents (epsilon hat, amsgrad, the
  three clip options, decoupled weight decay), with dense and lazy updates for sparse
  (`tf.IndexedSlices`) gradients. A Keras optimizer: use it in `model.compile`, on its own
  (`minimize`, `apply_gradients`) or in a train step.
* `compile_model`: `model.compile` with fit's train step compiled by XLA as far as the
  model's `tf.distribute` strategy allows.
* `make_train_step` (with `StepConfig`, its options, and `TrainStep`, what it returns): a
  model, a loss and an `Adam` as one compiled step under any `tf.distribute` strategy.
* `sparse_top1_accuracy`: the per-example metric the step accepts as "accuracy".
* `bias_corrected_learning_rate`: Adam's step size at a step, for engines without bias
  correction (e.g. TensorFlow's TPU embedding Adam).
* `SPARSE_MODES`: the accepted values of `Adam(sparse_mode=...)`.

Every other module of the package is internal: its names may change without notice.
"""

# The package's version, the one place it is written: pyproject.toml reads it without
# importing the package (setuptools' static `attr`).
__version__ = "0.1.0"

# pylint: disable=wrong-import-position
# First, so that a missing or unsupported TensorFlow is one clear ImportError (pip installs no
# TensorFlow for adam_xla; see environment.py).
from adam_xla import environment as _environment

_environment.check_tensorflow()

from adam_xla.keras_fit import compile_model
from adam_xla.optimizer import Adam
from adam_xla.optimizer import bias_corrected_learning_rate
from adam_xla.optimizer import SPARSE_MODES
from adam_xla.train_step import make_train_step
from adam_xla.train_step import sparse_top1_accuracy
from adam_xla.train_step import StepConfig
from adam_xla.train_step import TrainStep

__all__ = [
    "Adam", "bias_corrected_learning_rate", "compile_model", "make_train_step", "SPARSE_MODES",
    "sparse_top1_accuracy", "StepConfig", "TrainStep"
]
