"""Learning-rate schedules that compile into the XLA train step.

Each schedule is a `keras.optimizers.schedules.LearningRateSchedule` called with the
optimizer's step (an int64 tensor, `optimizer.iterations`) and built from tf ops only, with
no Python branching on tensors, so the same object works eagerly, in a `tf.function` and
inside `tf.function(jit_compile=True)`. Rates are computed in float32 (exact for steps up to
2^24; TPUs have no fast float64). Every class is registered with Keras under the package
"adam_xla", so an optimizer holding one saves and loads through
`keras.optimizers.schedules.serialize` / `deserialize`.

`make_schedule` builds the trainers' schedules from flags:

    rate   = base_rate * global_batch_size / reference_batch_size   (if a reference is given)
    base   = rate                                                    ("constant")
           | rate * decay_factor ** #{b in boundaries : step >= b}  ("step")
           | rate * (1 + cos(pi * min(step, total) / total)) / 2    ("cosine")
    lr     = base(step) * min(1, (step + 1) / warmup_steps)          (if warmup_steps > 0)

The warm-up multiplies the base schedule rather than delaying it, so the decay keeps the
step positions of a run without warm-up (as in Goyal et al. 2017).
"""

import math
import numbers

import keras
import tensorflow as tf

KINDS = ("constant", "step", "cosine")
DEFAULT_STEP_BOUNDARIES = (0.3, 0.6, 0.9)

_register = keras.saving.register_keras_serializable(package="adam_xla")


def _step_as_float(step):
  return tf.cast(tf.convert_to_tensor(step), tf.float32)


def _is_number(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check(ok, name, value, accepted):
  if not ok:
    raise ValueError(f"{name} must be {accepted}, got {value!r}")


def _check_rate(name, value):
  _check(
      _is_number(value) and math.isfinite(value) and value >= 0, name, value,
      "a finite number >= 0")


def _check_steps(name, value, minimum):
  _check(
      isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum,
      name, value, f"an integer >= {minimum}")


@_register
class ConstantSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """The same rate at every step (a schedule, so that it can sit under a warm-up)."""

  def __init__(self, rate):
    _check_rate("rate", rate)
    self.rate = float(rate)

  def __call__(self, step):
    return tf.fill(tf.shape(step), tf.constant(self.rate, tf.float32))

  def get_config(self):
    return {"rate": self.rate}


@_register
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
  """initial * factor ** k, where k is the number of boundaries that step has reached.

  A boundary b applies from step b on (step b is the first one at the lower rate).
  """

  def __init__(self, initial, boundaries, factor):
    _check_rate("initial", initial)
    boundaries = tuple(boundaries)
    _check(
        all(_is_number(b) and b == int(b) and b >= 0 for b in boundaries) and
        list(boundaries) == sorted(boundaries), "boundaries", boundaries,
        "non-decreasing integer steps >= 0")
    _check(
        _is_number(factor) and math.isfinite(factor) and factor > 0, "factor", factor,
        "a finite number > 0")
    self.initial = float(initial)
    self.boundaries = tuple(int(b) for b in boundaries)
    self.factor = float(factor)

  def __call__(self, step):
    step = tf.cast(tf.convert_to_tensor(step), tf.int64)
    boundaries = tf.constant(self.boundaries, tf.int64, shape=[len(self.boundaries)])
    reached = tf.cast(step[..., tf.newaxis] >= boundaries, tf.float32)
    count = tf.reduce_sum(reached, axis=-1)
    return self.initial * tf.pow(tf.constant(self.factor, tf.float32), count)

  def get_config(self):
    return {"initial": self.initial, "boundaries": list(self.boundaries), "factor": self.factor}


@_register
class CosineDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Half a cosine from initial down to initial * alpha over decay_steps, then flat.

  lr = initial * ((1 - alpha) * (1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2
                  + alpha)   (Loshchilov & Hutter 2017, without restarts).
  """

  def __init__(self, initial, decay_steps, alpha=0.0):
    _check_rate("initial", initial)
    _check_steps("decay_steps", decay_steps, 1)
    _check(_is_number(alpha) and 0 <= alpha <= 1, "alpha", alpha, "a number in [0, 1]")
    self.initial = float(initial)
    self.decay_steps = int(decay_steps)
    self.alpha = float(alpha)

  def __call__(self, step):
    progress = tf.minimum(_step_as_float(step), float(self.decay_steps)) / self.decay_steps
    cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
    return self.initial * ((1.0 - self.alpha) * cosine + self.alpha)

  def get_config(self):
    return {"initial": self.initial, "decay_steps": self.decay_steps, "alpha": self.alpha}


@_register
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up: lr(step) = base(step) * min(1, (step + 1) / warmup_steps).

  Step 0 trains at base / warmup_steps (not 0, which would waste a step) and step
  warmup_steps - 1 is the first at the full rate. warmup_steps = 0 is the base schedule.
  `base` is a LearningRateSchedule or a float (a constant rate).
  """

  def __init__(self, base, warmup_steps):
    if not isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
      _check_rate("base", base)
      base = ConstantSchedule(base)
    _check_steps("warmup_steps", warmup_steps, 0)
    self.base = base
    self.warmup_steps = int(warmup_steps)

  def __call__(self, step):
    rate = self.base(step)
    if not self.warmup_steps:  # A Python int, so this branch is decided when tracing.
      return rate
    ramp = tf.minimum(1.0, (_step_as_float(step) + 1.0) / self.warmup_steps)
    return rate * ramp

  def get_config(self):
    return {
        "base": keras.optimizers.schedules.serialize(self.base), "warmup_steps": self.warmup_steps
    }

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["base"] = keras.optimizers.schedules.deserialize(config["base"])
    return cls(**config)


def make_schedule(kind, base_rate, total_steps, warmup_steps=0, decay_factor=0.1,
                  step_boundaries=DEFAULT_STEP_BOUNDARIES, global_batch_size=None,
                  reference_batch_size=None):
  """The schedule the trainers' flags describe (see the module docstring for the formula).

  step_boundaries are fractions of total_steps (rounded to the nearest step) for "step";
  decay_factor multiplies the rate at each. With reference_batch_size, base_rate is the rate
  for that batch size and is scaled linearly to global_batch_size (Goyal et al. 2017);
  without it, global_batch_size is ignored. Raises ValueError naming a bad argument.
  """
  _check(kind in KINDS, "kind", kind, f"one of {', '.join(KINDS)}")
  _check_rate("base_rate", base_rate)
  _check_steps("total_steps", total_steps, 1)
  _check_steps("warmup_steps", warmup_steps, 0)
  _check(warmup_steps <= total_steps, "warmup_steps", warmup_steps,
         f"at most total_steps ({total_steps})")
  rate = float(base_rate)
  if reference_batch_size is not None:
    _check_steps("reference_batch_size", reference_batch_size, 1)
    _check_steps("global_batch_size", global_batch_size, 1)
    rate *= global_batch_size / reference_batch_size

  if kind == "constant":
    schedule = ConstantSchedule(rate)
  elif kind == "step":
    _check(
        _is_number(decay_factor) and 0 < decay_factor <= 1, "decay_factor", decay_factor,
        "a number in (0, 1]")
    fractions = tuple(step_boundaries)
    _check(
        all(_is_number(f) and 0 < f < 1 for f in fractions) and
        all(a < b for a, b in zip(fractions, fractions[1:])), "step_boundaries", step_boundaries,
        "increasing fractions of total_steps in (0, 1)")
    boundaries = [int(round(f * total_steps)) for f in fractions]
    schedule = StepDecay(rate, boundaries, decay_factor)
  else:
    schedule = CosineDecay(rate, total_steps)
  if warmup_steps:
    schedule = WarmupSchedule(schedule, warmup_steps)
  return schedule
