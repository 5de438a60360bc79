"""The ImageNet trainer's settings: one frozen, validated object built from the flags."""

import dataclasses
import math
from typing import Optional

from trainers.common import config as common
from trainers.common.config import check
from trainers.common.config import one_of

DATA_SOURCES = ("generated", "tfrecord", "tfds")
STRATEGIES = common.STRATEGIES
DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = common.SCHEDULES
XLA_SCOPES = ("auto", "step", "update")
MODELS = ("resnet50", "resnet18", "resnet_small")  # the builders in models.MODELS
IMAGENET_TRAIN_EXAMPLES = 1_281_167
TFDS_CLASSES = 1000  # TFDS imagenet2012 labels are 0-based over its 1,000 classes


@dataclasses.dataclass(frozen=True)
class ImagenetConfig:
  """Every setting of a run. `validate` checks them all before any work starts."""

  # Optimizer.
  # Epsilon hat 1.0 (the value the Keras docs suggest for ImageNet-class models) damps Adam
  # towards momentum SGD while v is small, so it wants SGD-like rates; with 1e-7 use ~1e-3.
  learning_rate: float = 1.0
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1.0
  amsgrad: bool = False
  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None
  weight_decay: float = 0.0
  shard_optimizer_state: bool = False
  # Learning-rate schedule.
  lr_schedule: str = "cosine"
  warmup_steps: int = 50
  lr_batch_scale: int = 0  # reference batch size of the linear scaling rule; 0: off
  # Model and data.
  model: str = "resnet_small"
  image_size: int = 48
  num_classes: int = 10
  label_smoothing: float = 0.0
  data_source: str = "generated"
  data_dir: Optional[str] = None
  global_batch_size: int = 64
  skip_bad_records: bool = False
  train_examples: Optional[int] = None  # examples per epoch, for train_epochs
  # Run.
  strategy: str = "default"
  tpu: Optional[str] = None
  num_logical_cpus: int = 0
  dtype: str = "float32"
  train_steps: Optional[int] = None
  train_epochs: Optional[float] = None
  steps_per_loop: int = 10
  eval_every: int = 250
  log_every: int = 50
  model_dir: str = "/tmp/adam_xla/imagenet"
  keep_checkpoints: int = 3
  seed: int = 0
  deterministic: bool = False
  on_nonfinite: str = "stop"
  max_consecutive_nonfinite: int = 10
  xla_scope: str = "auto"

  def validate(self, num_replicas=None):
    """Raises ValueError naming the flag, its value and what is accepted."""
    common.check_optimizer(self)
    check(self.lr_batch_scale >= 0, "lr_batch_scale", self.lr_batch_scale,
          "0 (off) or the reference batch size, e.g. 256")
    check(self.model in MODELS, "model", self.model, one_of(MODELS))
    check(self.image_size >= 16, "image_size", self.image_size, "an integer >= 16")
    check(self.num_classes >= 2, "num_classes", self.num_classes, "an integer >= 2")
    check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing,
          "a number in [0, 1)")
    check(self.data_source in DATA_SOURCES, "data_source", self.data_source, one_of(DATA_SOURCES))
    check(
        self.data_source == "generated" or bool(self.data_dir), "data_dir", self.data_dir,
        "the TFDS data dir (its manual download dir is DATA_DIR/downloads/manual)"
        if self.data_source == "tfds" else
        f"a directory of shards for --data_source={self.data_source}")
    check(
        self.data_source != "tfds" or self.num_classes == TFDS_CLASSES, "num_classes",
        self.num_classes, f"{TFDS_CLASSES} with --data_source=tfds (imagenet2012 labels are "
        f"0-based over its {TFDS_CLASSES} classes, whichever of them the data holds)")
    check(self.dtype in DTYPES, "dtype", self.dtype, one_of(DTYPES))
    check((self.train_steps is None) != (self.train_epochs is None), "train_steps",
          self.train_steps, "set exactly one of --train_steps and --train_epochs")
    check(self.train_epochs is None or self.train_epochs > 0, "train_epochs", self.train_epochs,
          "a number > 0")
    check(self.train_examples is None or self.train_examples >= 1, "train_examples",
          self.train_examples, "an integer >= 1 (or unset: the split's size)")
    common.check_run(self, num_replicas)
    check(self.xla_scope in XLA_SCOPES, "xla_scope", self.xla_scope, one_of(XLA_SCOPES))
    return self

  def examples_per_epoch(self, generated_examples):
    if self.train_examples:
      return self.train_examples
    return generated_examples if self.data_source == "generated" else IMAGENET_TRAIN_EXAMPLES

  def total_steps(self, generated_examples=6000):
    """--train_steps, or --train_epochs over the split's size, rounded to whole loops."""
    if self.train_steps is not None:
      steps = self.train_steps
    else:
      steps = math.ceil(self.train_epochs * self.examples_per_epoch(generated_examples) /
                        self.global_batch_size)
    return max(self.steps_per_loop, steps - steps % self.steps_per_loop)
