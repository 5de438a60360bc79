"""What every trainer's config shares: validation of the optimizer and run settings, and flags.

A trainer's config is one flat frozen dataclass whose field names are its flag names. The
checks here read the fields both trainers have (Adam's settings, the schedule, strategy,
steps, directories), so the two trainers accept and refuse the same values with the same
messages; each trainer's `validate` adds its own fields. `define_flags` and `from_flags` turn
such a dataclass into absl flags and back, so flags are read once, at the program's edge.
"""

import dataclasses
import math
import typing

from absl import flags

# The --strategy kinds, which `strategies.create_strategy` makes. Defined here, free of
# TensorFlow, because the flags are checked before TensorFlow starts.
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
# What the training loop does after a step with non-finite gradients (see training_loop).
NONFINITE_POLICIES = ("stop", "skip")
SCHEDULES = ("constant", "step", "cosine")

# Help for the flags both trainers have; a trainer adds its own and may override these.
SHARED_HELP = {
    "learning_rate": "Peak Adam learning rate (>= 0), after warm-up.",
    "beta_1": "Adam beta_1, in [0, 1).",
    "beta_2": "Adam beta_2, in [0, 1).",
    "epsilon": "Adam epsilon hat (> 0), added to sqrt(v) after bias correction.",
    "amsgrad": "Use AMSGrad.",
    "clipnorm": "Clip each gradient to this norm (> 0).",
    "clipvalue": "Clip gradient elements to [-clipvalue, clipvalue] (> 0).",
    "global_clipnorm": "Clip all gradients together to this global norm (> 0).",
    "weight_decay": "Decoupled weight decay (AdamW), >= 0.",
    "shard_optimizer_state": "With --strategy=mirrored or multi_worker, keep each replica's "
                             "1/N share of Adam's m and v (the same results, 1/N of the "
                             "optimizer's memory and work per replica).",
    "lr_schedule": f"Learning-rate schedule: {', '.join(SCHEDULES)}.",
    "warmup_steps": "Linear warm-up steps (>= 0).",
    "global_batch_size": "Examples per step over all replicas.",
    "strategy": f"Distribution strategy: {', '.join(STRATEGIES)}.",
    "tpu": "Cloud TPU name, grpc:// address, or 'local' on a TPU VM (--strategy=tpu).",
    "num_logical_cpus": "Split the CPU into this many devices (try strategies on a CPU).",
    "train_steps": "Training steps.",
    "steps_per_loop": "Steps per compiled call.",
    "eval_every": "Evaluate and checkpoint every this many steps (0: only at the end).",
    "log_every": "Progress line every this many steps.",
    "model_dir": "Checkpoints, TensorBoard logs and generated data; reused to resume.",
    "keep_checkpoints": "Checkpoints to keep.",
    "seed": "Random seed.",
    "deterministic": "Deterministic ops and input pipeline (slower).",
    "on_nonfinite": "A step with NaN/Inf gradients is never applied; then stop (halt naming "
                    "the variables) or skip (count it and go on).",
    "max_consecutive_nonfinite": "With --on_nonfinite=skip, halt after this many non-finite "
                                 "steps in a row.",
}


def one_of(values):
  return "one of " + ", ".join(str(v) for v in values)


def check(ok, flag, value, accepted):
  """Raises ValueError naming the flag, its value and what is accepted, unless `ok`."""
  if not ok:
    raise ValueError(f"--{flag}={value!r} is not valid: expected {accepted}.")


def check_optimizer(config):
  """Adam's settings and the learning-rate schedule."""
  check(config.learning_rate >= 0 and math.isfinite(config.learning_rate), "learning_rate",
        config.learning_rate, "a finite number >= 0")
  for name in ("beta_1", "beta_2"):
    value = getattr(config, name)
    check(0 <= value < 1, name, value, "a number in [0, 1)")
  check(config.epsilon > 0 and math.isfinite(config.epsilon), "epsilon", config.epsilon,
        "a finite number > 0")
  for name in ("clipnorm", "clipvalue", "global_clipnorm"):
    value = getattr(config, name)
    check(value is None or value > 0, name, value, "a number > 0 (or unset)")
  check(not (config.clipnorm and config.global_clipnorm), "clipnorm", config.clipnorm,
        "unset when --global_clipnorm is set (use one of the two)")
  check(config.weight_decay >= 0, "weight_decay", config.weight_decay, "a number >= 0")
  check(config.lr_schedule in SCHEDULES, "lr_schedule", config.lr_schedule, one_of(SCHEDULES))
  check(config.warmup_steps >= 0, "warmup_steps", config.warmup_steps, "an integer >= 0")


def check_run(config, num_replicas=None):
  """Batch, strategy, steps, logging, checkpoints. `train_steps` may be None (epochs)."""
  check(config.global_batch_size >= 1, "global_batch_size", config.global_batch_size,
        "an integer >= 1")
  if num_replicas:
    check(config.global_batch_size % num_replicas == 0, "global_batch_size",
          config.global_batch_size, f"a multiple of the {num_replicas} replicas")
  check(config.strategy in STRATEGIES, "strategy", config.strategy, one_of(STRATEGIES))
  check(config.strategy != "tpu" or bool(config.tpu), "tpu", config.tpu,
        "a TPU name, a grpc:// address or 'local' when --strategy=tpu")
  check(config.num_logical_cpus >= 0, "num_logical_cpus", config.num_logical_cpus,
        "an integer >= 0 (0: leave the CPU whole)")
  check(config.train_steps is None or config.train_steps >= 1, "train_steps", config.train_steps,
        "an integer >= 1")
  check(config.steps_per_loop >= 1, "steps_per_loop", config.steps_per_loop, "an integer >= 1")
  for name in ("eval_every", "log_every"):
    value = getattr(config, name)
    check(value >= 0 and value % config.steps_per_loop == 0, name, value,
          f"a multiple of --steps_per_loop={config.steps_per_loop} (0: only at the end)")
  check(config.keep_checkpoints >= 1, "keep_checkpoints", config.keep_checkpoints,
        "an integer >= 1")
  check(bool(config.model_dir), "model_dir", config.model_dir, "a directory path")
  check(config.on_nonfinite in NONFINITE_POLICIES, "on_nonfinite", config.on_nonfinite,
        one_of(NONFINITE_POLICIES))
  check(config.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite",
        config.max_consecutive_nonfinite, "an integer >= 1")


# ---- Flags ---------------------------------------------------------------------------------


def _base_type(annotation):
  """float for `float` or `Optional[float]`; tuple for `Tuple[int, ...]`."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if typing.get_origin(annotation) is typing.Union and len(args) == 1:
    annotation = args[0]
  return typing.get_origin(annotation) or annotation


def define_flags(config_class, help_texts, flag_values=flags.FLAGS):
  """One absl flag per field of `config_class`, with the field's default and type."""
  defaults = config_class()
  for field in dataclasses.fields(config_class):
    default, kind = getattr(defaults, field.name), _base_type(field.type)
    define = {
        bool: flags.DEFINE_bool, float: flags.DEFINE_float, int: flags.DEFINE_integer,
        tuple: flags.DEFINE_list
    }.get(kind, flags.DEFINE_string)
    if kind is tuple:
      default = [str(v) for v in default]
    define(field.name, default, help_texts[field.name], flag_values=flag_values)


def from_flags(config_class, flag_values=flags.FLAGS):
  """The config the parsed flags describe (not yet validated).

  List flags become tuples of ints when the field is `Tuple[int, ...]`; a non-integer item
  raises ValueError naming the flag.
  """
  values = {}
  for field in dataclasses.fields(config_class):
    value = flag_values[field.name].value
    if _base_type(field.type) is tuple:
      value = tuple(_as_int(field.name, item) for item in value or ())
    values[field.name] = value
  return config_class(**values)


def _as_int(flag, text):
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"--{flag} item {text!r} is not valid: expected an integer.") from None
