"""Tests for trainers/common/schedules.py against plain-Python computations of the formulas.

The references below are written from the documented formulas, one step at a time:

    warm-up:  base(step) * min(1, (step + 1) / warmup_steps)
    step:     rate * factor ** (number of boundaries b with step >= b)
    cosine:   rate * ((1 - alpha) * (1 + cos(pi * min(step, T) / T)) / 2 + alpha)
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.common import schedules

RTOL = 1e-6  # The schedules compute in float32.
ATOL = 1e-9
STEPS = list(range(0, 130)) + [199, 200, 201, 999, 1000, 1001, 5000, 123_457]


def py_step(rate, boundaries, factor, step):
  value = rate
  for b in boundaries:
    if step >= b:
      value *= factor
  return value


def py_cosine(rate, total, step, alpha=0.0):
  progress = min(step, total) / total
  return rate * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)) + alpha)


def py_warmup(base, warmup, step):
  return base * min(1.0, (step + 1) / warmup) if warmup else base


def evaluate(schedule, steps=STEPS):
  return np.array([float(schedule(tf.constant(s, tf.int64))) for s in steps])


def evaluate_xla(schedule, steps=STEPS):
  fn = tf.function(lambda step: schedule(step), jit_compile=True)
  out = []
  for s in steps:
    value = fn(tf.constant(s, tf.int64))
    assert value.dtype == tf.float32
    out.append(float(value))
  return np.array(out)


def test_constant():
  np.testing.assert_allclose(evaluate(schedules.ConstantSchedule(0.3)), 0.3, rtol=RTOL)
  schedule = schedules.make_schedule("constant", 0.25, total_steps=1000)
  np.testing.assert_allclose(evaluate(schedule), 0.25, rtol=RTOL)


def test_step_decay_class():
  schedule = schedules.StepDecay(0.5, [10, 50, 100], 0.2)
  expected = [py_step(0.5, [10, 50, 100], 0.2, s) for s in STEPS]
  np.testing.assert_allclose(evaluate(schedule), expected, rtol=RTOL, atol=ATOL)
  # Spot values written out by hand: step 10 is the first at the lower rate.
  np.testing.assert_allclose(evaluate(schedule, [0, 9, 10, 49, 50, 100]),
                             [0.5, 0.5, 0.1, 0.1, 0.02, 0.004], rtol=RTOL)


def test_step_decay_without_boundaries():
  np.testing.assert_allclose(evaluate(schedules.StepDecay(0.5, [], 0.1)), 0.5, rtol=RTOL)


def test_make_schedule_step():
  schedule = schedules.make_schedule("step", 0.1, total_steps=1000, decay_factor=0.5)
  expected = [py_step(0.1, [300, 600, 900], 0.5, s) for s in STEPS]
  np.testing.assert_allclose(evaluate(schedule), expected, rtol=RTOL, atol=ATOL)
  schedule = schedules.make_schedule("step", 0.1, total_steps=200, step_boundaries=(0.5,))
  np.testing.assert_allclose(evaluate(schedule, [0, 99, 100, 199]), [0.1, 0.1, 0.01, 0.01],
                             rtol=RTOL)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine_class(alpha):
  schedule = schedules.CosineDecay(2.0, 1000, alpha=alpha)
  expected = [py_cosine(2.0, 1000, s, alpha) for s in STEPS]
  np.testing.assert_allclose(evaluate(schedule), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(evaluate(schedule, [0, 500, 1000, 2000]),
                             [2.0, 1.0 + alpha, 2.0 * alpha, 2.0 * alpha], atol=1e-6)


def test_make_schedule_cosine():
  schedule = schedules.make_schedule("cosine", 0.4, total_steps=200)
  expected = [py_cosine(0.4, 200, s) for s in STEPS]
  np.testing.assert_allclose(evaluate(schedule), expected, rtol=1e-5, atol=1e-7)


def test_warmup_of_a_float():
  schedule = schedules.WarmupSchedule(0.8, warmup_steps=4)
  np.testing.assert_allclose(evaluate(schedule, [0, 1, 2, 3, 4, 100]),
                             [0.2, 0.4, 0.6, 0.8, 0.8, 0.8], rtol=RTOL)


def test_zero_warmup_is_the_base():
  base = schedules.CosineDecay(1.0, 100)
  np.testing.assert_allclose(evaluate(schedules.WarmupSchedule(base, 0)), evaluate(base), rtol=RTOL)


@pytest.mark.parametrize("kind", schedules.KINDS)
def test_make_schedule_with_warmup(kind):
  total, warmup, rate = 1000, 100, 0.3
  schedule = schedules.make_schedule(kind, rate, total, warmup_steps=warmup)
  base = {
      "constant": lambda s: rate, "step": lambda s: py_step(rate, [300, 600, 900], 0.1, s),
      "cosine": lambda s: py_cosine(rate, total, s)
  }[kind]
  expected = [py_warmup(base(s), warmup, s) for s in STEPS]
  np.testing.assert_allclose(evaluate(schedule), expected, rtol=1e-5, atol=1e-8)
  # Step 0 is at rate / warmup, step warmup - 1 reaches the (base) rate.
  np.testing.assert_allclose(evaluate(schedule, [0, 49, 99]),
                             [py_warmup(base(s), warmup, s) for s in [0, 49, 99]], rtol=1e-5)
  assert float(schedule(tf.constant(0, tf.int64))) == pytest.approx(
      rate / warmup * (1.0 if kind != "cosine" else py_cosine(1.0, total, 0)), rel=1e-6)


def test_warmup_equal_to_total_steps():
  schedule = schedules.make_schedule("cosine", 1.0, total_steps=10, warmup_steps=10)
  expected = [py_warmup(py_cosine(1.0, 10, s), 10, s) for s in range(12)]
  np.testing.assert_allclose(evaluate(schedule, range(12)), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("global_batch, reference, factor", [(1024, 256, 4.0), (64, 256, 0.25),
                                                             (256, 256, 1.0), (96, 32, 3.0)])
def test_linear_batch_scaling(global_batch, reference, factor):
  for kind in schedules.KINDS:
    scaled = schedules.make_schedule(kind, 0.1, 500, warmup_steps=20,
                                     global_batch_size=global_batch, reference_batch_size=reference)
    plain = schedules.make_schedule(kind, 0.1 * factor, 500, warmup_steps=20)
    np.testing.assert_allclose(evaluate(scaled), evaluate(plain), rtol=1e-6)
  schedule = schedules.make_schedule("constant", 0.1, 500, global_batch_size=global_batch,
                                     reference_batch_size=reference)
  assert float(schedule(tf.constant(7, tf.int64))) == pytest.approx(0.1 * factor, rel=1e-6)


def test_global_batch_size_alone_does_not_scale():
  schedule = schedules.make_schedule("constant", 0.1, 500, global_batch_size=4096)
  assert float(schedule(tf.constant(0, tf.int64))) == pytest.approx(0.1, rel=1e-6)


ALL_SCHEDULES = [
    schedules.ConstantSchedule(0.3),
    schedules.StepDecay(0.5, [10, 50, 100], 0.2),
    schedules.CosineDecay(2.0, 1000, alpha=0.05),
    schedules.WarmupSchedule(0.8, 4),
    schedules.make_schedule("step", 0.1, 1000, warmup_steps=37, global_batch_size=512,
                            reference_batch_size=256),
    schedules.make_schedule("cosine", 0.1, 1000, warmup_steps=37),
    schedules.make_schedule("constant", 0.1, 1000, warmup_steps=5),
]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_serialize_round_trip(schedule):
  config = keras.optimizers.schedules.serialize(schedule)
  assert config["registered_name"] == f"adam_xla>{type(schedule).__name__}"
  restored = keras.optimizers.schedules.deserialize(config)
  assert type(restored) is type(schedule)
  assert restored.get_config() == schedule.get_config()
  np.testing.assert_array_equal(evaluate(restored), evaluate(schedule))
  if isinstance(schedule, schedules.WarmupSchedule):
    assert type(restored.base) is type(schedule.base)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_xla_gives_the_same_values(schedule):
  np.testing.assert_allclose(evaluate_xla(schedule), evaluate(schedule), rtol=1e-6, atol=1e-9)


def test_int64_variable_step_inside_xla():
  """As the optimizer calls it: with its int64 `iterations` variable, in a compiled step."""
  schedule = schedules.make_schedule("cosine", 0.1, 100, warmup_steps=10)
  iterations = tf.Variable(0, dtype=tf.int64)

  @tf.function(jit_compile=True)
  def step():
    lr = schedule(iterations)
    iterations.assign_add(1)
    return lr

  values = [float(step()) for _ in range(20)]
  expected = [py_warmup(py_cosine(0.1, 100, s), 10, s) for s in range(20)]
  np.testing.assert_allclose(values, expected, rtol=1e-5)


BAD_ARGUMENTS = [
    (dict(kind="linear"), "kind.*constant, step, cosine.*'linear'"),
    (dict(kind=None), "kind"),
    (dict(base_rate=-0.1), "base_rate.*>= 0.*-0.1"),
    (dict(base_rate=float("nan")), "base_rate"),
    (dict(base_rate=float("inf")), "base_rate"),
    (dict(base_rate="0.1"), "base_rate"),
    (dict(total_steps=0), "total_steps.*>= 1"),
    (dict(total_steps=10.5), "total_steps"),
    (dict(warmup_steps=-1), "warmup_steps.*>= 0"),
    (dict(warmup_steps=101), r"warmup_steps.*at most total_steps \(100\)"),
    (dict(kind="step", decay_factor=0.0), r"decay_factor.*\(0, 1\]"),
    (dict(kind="step", decay_factor=1.5), "decay_factor"),
    (dict(kind="step", step_boundaries=(0.6, 0.3)), "step_boundaries.*increasing"),
    (dict(kind="step", step_boundaries=(0.5, 1.0)), r"step_boundaries.*\(0, 1\)"),
    (dict(kind="step", step_boundaries=(0.0,)), "step_boundaries"),
    (dict(reference_batch_size=0, global_batch_size=64), "reference_batch_size.*>= 1"),
    (dict(reference_batch_size=256), "global_batch_size.*>= 1.*None"),
    (dict(reference_batch_size=256, global_batch_size=0), "global_batch_size"),
]


@pytest.mark.parametrize("overrides, message", BAD_ARGUMENTS)
def test_make_schedule_bad_arguments(overrides, message):
  args = dict(kind="cosine", base_rate=0.1, total_steps=100)
  args.update(overrides)
  with pytest.raises(ValueError, match=message):
    schedules.make_schedule(**args)


def test_class_bad_arguments():
  with pytest.raises(ValueError, match="rate"):
    schedules.ConstantSchedule(-1.0)
  with pytest.raises(ValueError, match="boundaries.*non-decreasing"):
    schedules.StepDecay(0.1, [50, 10], 0.1)
  with pytest.raises(ValueError, match="boundaries"):
    schedules.StepDecay(0.1, [-5], 0.1)
  with pytest.raises(ValueError, match="factor"):
    schedules.StepDecay(0.1, [10], 0.0)
  with pytest.raises(ValueError, match="decay_steps.*>= 1"):
    schedules.CosineDecay(0.1, 0)
  with pytest.raises(ValueError, match="alpha"):
    schedules.CosineDecay(0.1, 10, alpha=1.5)
  with pytest.raises(ValueError, match="warmup_steps"):
    schedules.WarmupSchedule(0.1, -2)
  with pytest.raises(ValueError, match="base"):
    schedules.WarmupSchedule(-0.1, 2)


if __name__ == "__main__":
  pytest_main.main(__file__)
