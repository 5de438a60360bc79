"""adam_xla: Adam for TensorFlow whose update compiles into the same XLA program as the step."""

from adam_xla.optimizer import Adam

__all__ = ["Adam"]
