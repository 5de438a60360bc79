"""Runs the Keras documentation's Adam example with adam_xla.Adam, then Keras' compile + fit.

    ./bazelw run //tools:adam_demo -- --epsilon=1.0

The second part trains a small Keras MLP on a generated regression problem with
`adam_xla.compile_model(model, adam_xla.Adam(...), loss="mse")` and `model.fit` (forward,
backward and the Adam update in one XLA program) and, side by side, the same model compiled
with `keras.optimizers.Adam` and `jit_compile=True`, printing both losses after each epoch.
"""

import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

import adam_xla

_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.01, "Adam learning rate (>= 0).")
_EPSILON = flags.DEFINE_float("epsilon", 1e-7, "Adam epsilon hat (>= 0).")
_AMSGRAD = flags.DEFINE_bool("amsgrad", False, "Use the AMSGrad variant.")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs of each fit, of 32 steps each (>= 1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the data and the initial weights.")


def docs_example():
  opt = adam_xla.Adam(learning_rate=0.1)
  var1 = tf.Variable(10.0)
  loss = lambda: (var1**2) / 2.0  # d(loss)/d(var1) == var1
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
  return keras.Sequential([
      keras.Input((16,)),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(1)
  ])


def fit(model, optimizer, x, y, compiler):
  """History of `model.fit` after `compiler` (compile_model or Keras' compile)."""
  if compiler == "adam_xla.compile_model":
    adam_xla.compile_model(model, optimizer, loss="mse")
  else:
    model.compile(optimizer=optimizer, loss="mse", jit_compile=True)
  start = time.perf_counter()
  history = model.fit(x, y, batch_size=64, epochs=_EPOCHS.value, shuffle=False, verbose=0)
  print(f"{compiler}: {_EPOCHS.value} epochs in {time.perf_counter() - start:.1f} s "
        "(the first includes compiling)")
  return history.history["loss"]


def main(argv):
  del argv
  if _EPOCHS.value < 1:
    raise app.UsageError(f"--epochs must be >= 1; got {_EPOCHS.value}.")
  hyper = dict(learning_rate=_LEARNING_RATE.value, epsilon=_EPSILON.value, amsgrad=_AMSGRAD.value)
  docs_example()
  x, y = make_data(_SEED.value)
  ours = fit(make_model(_SEED.value), adam_xla.Adam(**hyper), x, y, "adam_xla.compile_model")
  theirs = fit(make_model(_SEED.value), keras.optimizers.Adam(**hyper), x, y,
               "keras compile(jit_compile=True)")
  for epoch, (a, b) in enumerate(zip(ours, theirs)):
    print(f"epoch {epoch + 1:3d}/{_EPOCHS.value}  adam_xla loss {a:.5f}  keras Adam loss {b:.5f}")


if __name__ == "__main__":
  app.run(main)
