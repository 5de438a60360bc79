"""Runs the Keras documentation's Adam example with adam_xla.Adam, then a small compiled fit.

    ./bazelw run //tools:adam_demo -- --epsilon=1.0

The second part trains a small Keras MLP on a generated regression problem with one
`tf.function(jit_compile=True)` step (forward, backward and the Adam update in one XLA
program) and, side by side, the same model with `keras.optimizers.Adam`, printing both losses.
"""

import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

import adam_xla

_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.01, "Adam learning rate (>= 0).")
_EPSILON = flags.DEFINE_float("epsilon", 1e-7, "Adam epsilon hat (>= 0).")
_AMSGRAD = flags.DEFINE_bool("amsgrad", False, "Use the AMSGrad variant.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps of the compiled fit (>= 1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the data and the initial weights.")


def docs_example():
  opt = adam_xla.Adam(learning_rate=0.1)
  var1 = tf.Variable(10.0)
  loss = lambda: (var1 ** 2) / 2.0  # d(loss)/d(var1) == var1
  step_count = opt.minimize(loss, [var1]).numpy()
  print(f"docs example: step_count={step_count} var1={var1.numpy():.4f} (Keras docs: 9.9)")


def make_data(seed, examples=2048, features=16):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=[examples, features]).astype(np.float32)
  w = rng.normal(size=[features, 1]).astype(np.float32)
  y = np.tanh(x @ w) + 0.05 * rng.normal(size=[examples, 1]).astype(np.float32)
  return x, y


def make_model(seed):
  keras.utils.set_random_seed(seed)
  return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                           keras.layers.Dense(1)])


def make_step(model, optimizer):
  @tf.function(jit_compile=True)
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss
  return step


def main(argv):
  del argv
  if _STEPS.value < 1:
    raise app.UsageError(f"--steps must be >= 1; got {_STEPS.value}.")
  hyper = dict(learning_rate=_LEARNING_RATE.value, epsilon=_EPSILON.value,
               amsgrad=_AMSGRAD.value)
  docs_example()
  x, y = make_data(_SEED.value)
  ours = make_model(_SEED.value)
  theirs = make_model(_SEED.value)
  optimizer = adam_xla.Adam(**hyper)
  optimizer.build(ours.trainable_variables)  # create slots up front: one trace, one compile
  ours_step = make_step(ours, optimizer)
  theirs_step = make_step(theirs, keras.optimizers.Adam(**hyper))
  logging.info("compiling the first step ...")
  batch, start = 64, time.perf_counter()
  for step in range(_STEPS.value):
    i = (step * batch) % len(x)
    xb, yb = tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch])
    ours_loss, theirs_loss = ours_step(xb, yb), theirs_step(xb, yb)
    if step % 50 == 0 or step == _STEPS.value - 1:
      print(f"step {step + 1:4d}/{_STEPS.value}  adam_xla loss {float(ours_loss):.5f}  "
            f"keras Adam loss {float(theirs_loss):.5f}")
  print(f"{_STEPS.value} steps of both models in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  app.run(main)
