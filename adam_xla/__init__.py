"""adam_xla: Adam for TensorFlow whose update compiles into the same XLA program as the step."""

from adam_xla.optimizer import Adam
from adam_xla.train_step import make_train_step
from adam_xla.train_step import sparse_top1_accuracy
from adam_xla.train_step import StepConfig
from adam_xla.train_step import TrainStep

__all__ = ["Adam", "make_train_step", "sparse_top1_accuracy", "StepConfig", "TrainStep"]
