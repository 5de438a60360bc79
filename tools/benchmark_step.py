"""Times the adam_xla fused train step beside Keras 3 `model.fit`, in one process.

    ./bazelw run //tools:benchmark_step -- [--models=mlp16m,resnet20] [--rounds=5] [--quick]

For each model, every variant starts from the same weights (one model per variant, built from
the same seed), reads the same synthetic in-memory data through the same kind of tf.data
pipeline and uses the same Adam settings (learning rate 1e-3, default betas and epsilon):

  adam_xla fused spl=K        adam_xla.make_train_step(..., steps_per_loop=K), called with an
                              iterator over step.distribute(dataset)
  adam_xla xla_scope=update   the same with xla_scope="update": only the Adam update is one
                              XLA program; forward and backward run as TensorFlow ops
  keras fit jit              model.fit, compile(jit_compile=True)
  keras fit no-jit           model.fit, compile(jit_compile=False)
  keras fit jit spe=10       model.fit, compile(jit_compile=True, steps_per_execution=10)

Each variant is warmed up untimed (a first call with tracing and XLA compilation, then
--warmup_rounds rounds of all variants); then the variants are timed in interleaved rounds
(every variant once per round, the order rotated from round to round) so that machine noise
hits all of them alike. The table gives the median steps/second over the rounds, the range,
and the ratios to "keras fit jit" and to the best Keras variant.

Nothing is set globally for one side: it is one process, so environment settings such as
TF_CPU_ALLOCATOR_USE_BFC (read by TensorFlow from the environment) apply to every variant; the
tool prints the ones that are set. To compare allocators, run the tool once per setting:

    TF_CPU_ALLOCATOR_USE_BFC=true ./bazelw run //tools:benchmark_step
"""

import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

import adam_xla
from tools import cpu_load

MODELS = ("mlp16m", "resnet20")
# Per-model defaults: timed steps per round per variant, batch size, and the number of
# batches of synthetic data (generated once, repeated).
_DEFAULT_STEPS = {"mlp16m": 30, "resnet20": 10}
_QUICK_STEPS = {"mlp16m": 10, "resnet20": 2}
_DEFAULT_BATCH = {"mlp16m": 64, "resnet20": 128}
_DATA_BATCHES = 16
_PREFETCH = 2  # batches; a fixed buffer (not AUTOTUNE) so every variant gets the same one
_LEARNING_RATE = 1e-3
_KERAS_SPE = 10
_BASELINE = "keras fit jit"
# Environment variables that change how TensorFlow/XLA run on CPU; printed when set.
_ENV_VARS = ("TF_CPU_ALLOCATOR_USE_BFC", "TF_XLA_FLAGS", "XLA_FLAGS", "TF_ENABLE_ONEDNN_OPTS",
             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
             "TF_CPP_MIN_LOG_LEVEL")

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models to time, from {MODELS}.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds (every variant once each).")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Timed steps per round per variant (default per model: "
    f"{_DEFAULT_STEPS}). A variant running K steps per call runs ceil(steps/K)*K.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, f"Batch size (default per model: {_DEFAULT_BATCH}).")
_STEPS_PER_LOOP = flags.DEFINE_integer(
    "steps_per_loop", 1, "steps_per_loop of the main adam_xla fused variant.")
_MLP_SPL10 = flags.DEFINE_bool(
    "mlp_spl10_row", True, "Also time the fused step with steps_per_loop=10 on the MLP.")
# Four hidden layers of 2048 give the 16.7M parameters the MLP is known by
# (1024-2048-2048-2048-1000 read literally, three hidden layers, has 12.5M).
_MLP_HIDDEN = flags.DEFINE_list(
    "mlp_hidden", ["2048", "2048", "2048", "2048"],
    "Hidden layer widths of the MLP (1024 inputs, 1000 classes); the default has 16,737,256 "
    "parameters; --mlp_hidden=2048,2048,2048 gives 12.5M.")
_WARMUP_ROUNDS = flags.DEFINE_integer(
    "warmup_rounds", 1, "Untimed rounds of every variant after the warm-up calls and before "
    "the timed rounds.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the data and the initial weights.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write raw timings and medians as JSON here.")
_TF_DATA_AUTOTUNE = flags.DEFINE_bool(
    "tf_data_autotune", False, "Leave tf.data autotuning on (see make_dataset: it adds a "
    "stall of about 0.3 s to about half of the iterator teardowns, i.e. of the fit calls).")
_QUICK = flags.DEFINE_bool(
    "quick", False, f"Smoke test: 1 round of {_QUICK_STEPS} steps (unless --rounds/--steps "
    "are given explicitly).")


# ---- Models and data ---------------------------------------------------------------------

def build_mlp(seed):
  """1024 inputs -> hidden Dense+ReLU layers -> 1000 logits."""
  keras.utils.set_random_seed(seed)
  layers = [keras.Input((1024,))]
  layers += [keras.layers.Dense(int(width), activation="relu") for width in _MLP_HIDDEN.value]
  layers.append(keras.layers.Dense(1000))
  return keras.Sequential(layers, name="mlp")


def build_resnet20(seed):
  """CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, 16/32/64 filters."""
  keras.utils.set_random_seed(seed)
  conv = lambda filters, size, strides=1: keras.layers.Conv2D(
      filters, size, strides=strides, padding="same", use_bias=False,
      kernel_initializer="he_normal")
  bn = lambda: keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
  relu = keras.layers.ReLU
  inputs = keras.Input((32, 32, 3))
  x = relu()(bn()(conv(16, 3)(inputs)))
  for stage, filters in enumerate((16, 32, 64)):
    for block in range(3):
      strides = 2 if stage > 0 and block == 0 else 1
      y = relu()(bn()(conv(filters, 3, strides)(x)))
      y = bn()(conv(filters, 3)(y))
      shortcut = x
      if strides != 1 or x.shape[-1] != filters:
        shortcut = bn()(conv(filters, 1, strides)(x))  # projection shortcut
      x = relu()(keras.layers.Add()([y, shortcut]))
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(10)(x)
  return keras.Model(inputs, outputs, name="resnet20")


_BUILDERS = {"mlp16m": build_mlp, "resnet20": build_resnet20}


def make_data(model_name, batch_size, seed):
  """Synthetic examples in memory: normal features, uniform integer labels."""
  rng = np.random.default_rng(seed)
  examples = batch_size * _DATA_BATCHES
  if model_name == "mlp16m":
    x = rng.standard_normal((examples, 1024), dtype=np.float32)
    y = rng.integers(0, 1000, size=(examples,), dtype=np.int32)
  else:
    x = rng.standard_normal((examples, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, size=(examples,), dtype=np.int32)
  return x, y


def make_dataset(x, y, batch_size, autotune=False):
  """The one input pipeline of every variant.

  tf.data's autotuning is off by default: nothing in the pipeline is AUTOTUNE, but its model
  thread still runs, and destroying an iterator that a tf.function has read from then blocks
  for about 0.3 s in about half of the cases (measured here). model.fit makes and destroys one
  iterator per call, so that stall would be charged to every timed fit call and to none of the
  fused step's calls, which keep one iterator.
  """
  dataset = (tf.data.Dataset.from_tensor_slices((x, y)).repeat()
             .batch(batch_size, drop_remainder=True).prefetch(_PREFETCH))
  options = tf.data.Options()
  options.autotune.enabled = autotune
  return dataset.with_options(options)


def weights_checksum(model):
  return float(sum(np.sum(np.abs(w.astype(np.float64))) for w in model.get_weights()))


# ---- Variants ----------------------------------------------------------------------------

class FusedVariant:
  """adam_xla.make_train_step; one call runs `steps_per_loop` steps."""

  kind = "adam_xla"

  def __init__(self, name, model, dataset, steps_per_loop, xla_scope="step"):
    self.name, self.model, self.steps_per_call = name, model, steps_per_loop
    self._step = adam_xla.make_train_step(
        model, keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
        adam_xla.Adam(learning_rate=_LEARNING_RATE), steps_per_loop=steps_per_loop,
        xla_scope=xla_scope)
    self._iterator = iter(self._step.distribute(dataset))

  def run(self, calls):
    """Runs `calls` calls; returns the mean loss over their steps (like fit's epoch loss).

    Fetching the losses at the end waits for all the work to finish.
    """
    losses = [self._step(self._iterator)["loss"] for _ in range(calls)]
    return float(np.mean([float(loss) for loss in losses]))


class KerasFitVariant:
  """model.fit(dataset, steps_per_epoch=calls * steps_per_execution, epochs=1)."""

  kind = "keras"

  def __init__(self, name, model, dataset, jit_compile, steps_per_execution):
    self.name, self.model, self.steps_per_call = name, model, steps_per_execution
    self._dataset = dataset
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=_LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)

  def run(self, calls):
    # With an endless dataset Keras runs whole executions of steps_per_execution steps, so
    # steps_per_epoch is a multiple of it.
    history = self.model.fit(self._dataset, steps_per_epoch=calls * self.steps_per_call,
                             epochs=1, verbose=0)
    return float(history.history["loss"][-1])


def make_variants(model_name, dataset):
  """(name, constructor) pairs; each constructor builds its own model from the same seed."""
  build = lambda: _BUILDERS[model_name](_SEED.value)
  spl = _STEPS_PER_LOOP.value
  variants = [(f"adam_xla fused spl={spl}",
               lambda name: FusedVariant(name, build(), dataset, spl))]
  if model_name == "mlp16m" and _MLP_SPL10.value and spl != 10:
    variants.append(("adam_xla fused spl=10",
                     lambda name: FusedVariant(name, build(), dataset, 10)))
  variants.append((f"adam_xla xla_scope=update spl={spl}",
                   lambda name: FusedVariant(name, build(), dataset, spl, "update")))
  variants += [
      (_BASELINE, lambda name: KerasFitVariant(name, build(), dataset, True, 1)),
      ("keras fit no-jit", lambda name: KerasFitVariant(name, build(), dataset, False, 1)),
      (f"keras fit jit spe={_KERAS_SPE}",
       lambda name: KerasFitVariant(name, build(), dataset, True, _KERAS_SPE)),
  ]
  return variants


# ---- Benchmark ---------------------------------------------------------------------------

def benchmark_model(model_name, rounds, steps, batch_size):
  """Builds, warms up and times every variant of one model; returns a result dict."""
  logging.info("[%s] generating data (batch %d) ...", model_name, batch_size)
  x, y = make_data(model_name, batch_size, _SEED.value)
  dataset = make_dataset(x, y, batch_size, autotune=_TF_DATA_AUTOTUNE.value)
  variants, setup = [], {}
  for name, construct in make_variants(model_name, dataset):
    logging.info("[%s] %s: building and warming up (tracing + XLA compile) ...",
                 model_name, name)
    start = time.perf_counter()
    variant = construct(name)
    checksum = weights_checksum(variant.model)
    loss = variant.run(calls=1 if variant.steps_per_call > 1 else 2)
    seconds = time.perf_counter() - start
    logging.info("[%s] %s: ready in %.1f s (initial weights |w| sum %.6f, warm-up mean loss "
                 "%.5f)",
                 model_name, name, seconds, checksum, loss)
    setup[name] = {"warmup_seconds": seconds, "initial_weights_abs_sum": checksum,
                   "warmup_loss": loss}
    variants.append(variant)
  checksums = {round(s["initial_weights_abs_sum"], 3) for s in setup.values()}
  if len(checksums) != 1:
    raise RuntimeError(f"[{model_name}] variants do not start from the same weights: {setup}")
  params = variants[0].model.count_params()

  # Untimed rounds first: right after all the variants have been built and compiled, the
  # first timed run of each was measured up to 2x slower than later ones (ResNet-20 here).
  for r in range(_WARMUP_ROUNDS.value):
    logging.info("[%s] untimed warm-up round %d/%d ...", model_name, r + 1,
                 _WARMUP_ROUNDS.value)
    for variant in variants:
      variant.run(math.ceil(steps / variant.steps_per_call))

  timings = {v.name: [] for v in variants}
  other_loads = {v.name: [] for v in variants}
  meter = cpu_load.CpuMeter()
  executed = {}
  for r in range(rounds):
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for variant in order:
      calls = math.ceil(steps / variant.steps_per_call)
      executed[variant.name] = calls * variant.steps_per_call
      started = meter.start()
      start = time.perf_counter()
      loss = variant.run(calls)
      seconds = time.perf_counter() - start
      other = meter.stop(started)[2]
      timings[variant.name].append(seconds)
      other_loads[variant.name].append(other)
      logging.info("[%s] round %d/%d  %-24s %3d steps in %6.2f s = %6.2f steps/s  (loss %.4f; "
                   "other processes %s of the CPUs)", model_name, r + 1, rounds, variant.name,
                   executed[variant.name], seconds, executed[variant.name] / seconds, loss,
                   "?" if other is None else f"{other:.0%}")

  rows = []
  for variant in variants:
    rates = [executed[variant.name] / s for s in timings[variant.name]]
    rows.append({"model": model_name, "variant": variant.name, "kind": variant.kind,
                 "steps_per_round": executed[variant.name],
                 "median_steps_per_s": statistics.median(rates), "min_steps_per_s": min(rates),
                 "max_steps_per_s": max(rates), "seconds_per_round": timings[variant.name],
                 "steps_per_s_per_round": rates,
                 "other_cpu_load_per_round": other_loads[variant.name],
                 **setup[variant.name]})
  baseline = next(row for row in rows if row["variant"] == _BASELINE)["median_steps_per_s"]
  best_keras = max(row["median_steps_per_s"] for row in rows if row["kind"] == "keras")
  for row in rows:
    row["ratio_vs_keras_jit"] = row["median_steps_per_s"] / baseline
    row["ratio_vs_best_keras"] = row["median_steps_per_s"] / best_keras
  del variants
  gc.collect()
  return {"model": model_name, "params": params, "batch_size": batch_size, "rounds": rounds,
          "steps": steps, "rows": rows}


# ---- Reporting ---------------------------------------------------------------------------

def machine_info():
  cpu = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable,
          "python": platform.python_version(), "tensorflow": tf.__version__,
          "keras": keras.__version__, "numpy": np.__version__,
          "environment": {k: os.environ[k] for k in _ENV_VARS if k in os.environ}}


def command_line():
  return " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)


def format_table(results):
  header = ("model", "variant", "median steps/s", "min", "max", "vs keras jit",
            "vs best keras", "other load", "warm-up s", "warm-up loss")
  lines = []
  for result in results:
    for row in result["rows"]:
      lines.append((row["model"], row["variant"], f"{row['median_steps_per_s']:.2f}",
                    f"{row['min_steps_per_s']:.2f}", f"{row['max_steps_per_s']:.2f}",
                    f"{row['ratio_vs_keras_jit']:.2f}x", f"{row['ratio_vs_best_keras']:.2f}x",
                    _load_summary(row["other_cpu_load_per_round"]),
                    f"{row['warmup_seconds']:.1f}", f"{row['warmup_loss']:.4f}"))
  widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
  fmt = lambda cells: "  ".join(
      str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  rule = "-" * len(fmt(header))
  return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])


def _load_summary(loads):
  known = [load for load in loads if load is not None]
  return f"{max(known):.0%}" if known else "?"


def _noisy_rows(results, limit=0.1):
  return [f"{row['model']}/{row['variant']}" for result in results for row in result["rows"]
          if any(load is not None and load > limit for load in row["other_cpu_load_per_round"])]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = [m for m in _MODELS.value if m not in MODELS]
  if unknown or not _MODELS.value:
    raise app.UsageError(f"--models must be a comma list from {MODELS}; got {_MODELS.value}.")
  rounds = _ROUNDS.value
  if _QUICK.value and not flags.FLAGS["rounds"].present:
    rounds = 1
  if _WARMUP_ROUNDS.value < 0:
    raise app.UsageError(f"--warmup_rounds must be >= 0; got {_WARMUP_ROUNDS.value}.")
  for name, value in (("rounds", rounds), ("steps", _STEPS.value),
                      ("batch_size", _BATCH_SIZE.value), ("steps_per_loop", _STEPS_PER_LOOP.value)):
    if value is not None and value < 1:
      raise app.UsageError(f"--{name} must be >= 1; got {value}.")

  info = machine_info()
  print(f"command: {command_line()}")
  print(f"machine: {info['cpu']}, {info['logical_cores']} logical cores "
        f"({info['usable_cores']} usable); Python {info['python']}, TensorFlow "
        f"{info['tensorflow']}, Keras {info['keras']}, NumPy {info['numpy']}")
  env = info["environment"]
  print("environment (one process: applies to every variant alike): " +
        (", ".join(f"{k}={v}" for k, v in env.items()) if env else "none of "
         f"{', '.join(_ENV_VARS)} set (TensorFlow's default CPU allocator)"), flush=True)

  print(f"input pipeline (every variant): from_tensor_slices -> repeat -> batch(drop_remainder) "
        f"-> prefetch({_PREFETCH}); tf.data autotune "
        f"{'on' if _TF_DATA_AUTOTUNE.value else 'off'}", flush=True)
  start = time.perf_counter()
  results = []
  for model_name in _MODELS.value:
    steps = _STEPS.value or (_QUICK_STEPS if _QUICK.value else _DEFAULT_STEPS)[model_name]
    batch_size = _BATCH_SIZE.value or _DEFAULT_BATCH[model_name]
    results.append(benchmark_model(model_name, rounds, steps, batch_size))
    keras.backend.clear_session()
    gc.collect()
  wall = time.perf_counter() - start

  print()
  for result in results:
    print(f"{result['model']}: {result['params']:,} parameters, batch {result['batch_size']}, "
          f"{_WARMUP_ROUNDS.value} untimed + {result['rounds']} timed round(s) x "
          f"{result['steps']} steps per variant (spl/spe=10 variants run whole calls of 10 "
          "steps)")
  print()
  print(format_table(results))
  print()
  print("variants: adam_xla fused spl=K = adam_xla.make_train_step(..., steps_per_loop=K) "
        "called with an iterator;\n  keras fit jit = compile(jit_compile=True); no-jit = "
        "compile(jit_compile=False); jit spe=10 = also steps_per_execution=10.")
  print("Ratios are of median steps/s; 'best keras' is the fastest Keras variant of that model.\n"
        "Keras times include model.fit's per-call overhead (one fit call per round). Warm-up: "
        "untimed first call(s), compilation included; warm-up loss: mean loss of its steps "
        "(same weights and batches, so equal across variants with the same steps per call).\n"
        "other load: the largest share of the CPUs used by other processes during a timed run "
        "of that variant (from /proc/stat).")
  noisy = _noisy_rows(results)
  if noisy:
    print(f"WARNING: other processes used more than 10% of the CPUs during timed runs of "
          f"{', '.join(noisy)}; the machine was not quiet, so the numbers are noisy. Re-run "
          "on a quiet machine (or with more --rounds).")
  print(f"wall time: {wall:.0f} s")
  if _JSON_OUT.value:
    # `bazel run` starts the tool in its runfiles tree; a relative path means the user's
    # directory.
    path = os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY", ""), _JSON_OUT.value)
    with open(path, "w") as f:
      json.dump({"command": command_line(), "machine": info, "wall_seconds": wall,
                 "learning_rate": _LEARNING_RATE, "prefetch": _PREFETCH, "seed": _SEED.value,
                 "tf_data_autotune": _TF_DATA_AUTOTUNE.value,
                 "results": results}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
