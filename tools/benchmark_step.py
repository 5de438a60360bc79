"""Times the adam_xla fused train step beside Keras 3 `model.fit`, and checks the targets.

    ./bazelw run //tools:benchmark_step -- [--models=mlp16m,resnet20]
        [--strategies=default,mirrored] [--rounds=5] [--quick] [--[no]memory]

For each strategy and model, every variant starts from the same weights (one model per
variant, built from the same seed), reads the same synthetic in-memory data through the same
kind of tf.data pipeline and uses the same Adam settings (learning rate 1e-3, default betas
and epsilon):

  adam_xla fused spl=K        adam_xla.make_train_step(..., steps_per_loop=K), called with an
                              iterator over step.distribute(dataset)
  adam_xla fused spl=K own slots
                              the same with every variable's m and v in variables of their
                              own (ADAM_XLA_PACK_SLOTS=0 when the optimizer is built): the
                              layout before packed slots, to measure what packing gives
  adam_xla xla_scope=update   the same with xla_scope="update": only the Adam update is an
                              XLA program; forward and backward run as TensorFlow ops
  adam_xla fit                model.fit, adam_xla.compile_model(model, adam_xla.Adam(...))
  adam_xla fit spe=10         the same with steps_per_execution=10
  keras fit jit               model.fit, compile(jit_compile=True)
  keras fit no-jit            model.fit, compile(jit_compile=False)
  keras fit jit spe=10        model.fit, compile(jit_compile=True, steps_per_execution=10)
  keras fit no-jit spe=10     model.fit, compile(jit_compile=False, steps_per_execution=10)

Strategies (--strategies):

  default    no tf.distribute strategy; everything runs on /CPU:0.
  mirrored   tf.distribute.MirroredStrategy over 2 logical CPU devices (the physical CPU is
             split before TensorFlow starts; both devices share the same cores). The global
             batch is the single-device one, so each replica gets half of it. Models, the
             adam_xla step (plan "replica_programs") and Keras' compile all happen in
             strategy.scope(). Keras 3's default jit_compile="auto" turns XLA off under
             tf.distribute; the Keras variants that fail there (with Keras 3.15 on
             TensorFlow 2.21: jit_compile=True, and steps_per_execution=10 with or without
             it) are tried and reported as unsupported, and left out of "best keras".

Each variant is warmed up untimed (a first call with tracing and XLA compilation, then
--warmup_rounds rounds of all variants of that strategy and model); then the variants are
timed in interleaved rounds (every variant once per round, the order rotated from round to
round) so that machine noise hits all of them alike. The table gives the median steps/second
over the rounds, the range, and the ratios to "keras fit jit" and to the best Keras variant of
the same strategy and model (jit on/off x steps_per_execution 1/10, whichever is fastest).
A fit round is one fit call, timed from the start of its first step (its first
on_train_batch_begin callback) until its last step has finished (on_train_end); the call's
overhead outside its steps (setting up the epoch before them; tearing down its input iterator
after them, idle, 0-30 s per call under MirroredStrategy here) is reported beside it and left
out of the ratios, since real training pays it once per epoch.

With --memory (the default for full runs; off with --quick unless given), each variant is also
run alone in a child process of this tool (--memory_probe=strategy:model:variant), which
reports its peak RSS (VmHWM, XLA compilation included; getrusage's ru_maxrss is in the JSON,
but in a child it also counts the parent's size at the fork) and its RSS before the model was
built (after imports, devices and data); the table shows both the peak and the growth. The
probe then restarts VmHWM after the warm-up (Linux's /proc/self/clear_refs) and reports the
peak of the steps that follow on their own ("step peak"), apart from the transient peak of
building and compiling (XLA's compiler included), the RSS right after the warm-up, and the
RSS once glibc has returned the heap's freed pages (malloc_trim; "in use"), which the step
peak then starts from, with its file-backed part (library code) and the thread count; a second
table shows that breakdown.

Checks (the project's targets): per strategy and model, the best make_train_step variant's
median steps/s over the best Keras variant's must be at least 1.25x on one device and 1.5x
under MirroredStrategy; the same for the best "adam_xla fit" variant.

Nothing is set globally for one side: it is one process, so environment settings such as
TF_CPU_ALLOCATOR_USE_BFC (read by TensorFlow from the environment) apply to every variant; the
tool prints the ones that are set. To compare allocators, run the tool once per setting:

    TF_CPU_ALLOCATOR_USE_BFC=true ./bazelw run //tools:benchmark_step
"""

import contextlib
import dataclasses
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional, Tuple
from unittest import mock

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

import adam_xla
from adam_xla import engine
from tools import cpu_load
from tools import process_memory
from tools import run_info
from tools import text_table
from trainers.common import strategies as strategies_lib

MODELS = ("mlp16m", "resnet20")
STRATEGIES = ("default", "mirrored")
MIRRORED_DEVICES = 2  # logical CPU devices (replicas) of the "mirrored" strategy
# The targets: best adam_xla variant / best Keras variant, median steps/s, per strategy.
TARGET_RATIO_DEFAULT = 1.25
TARGET_RATIO_MIRRORED = 1.5
TARGET_RATIOS = {"default": TARGET_RATIO_DEFAULT, "mirrored": TARGET_RATIO_MIRRORED}

# Per-model defaults: timed steps per round per variant, global batch size, and the number of
# batches of synthetic data (generated once, repeated).
_DEFAULT_STEPS = {"mlp16m": 30, "resnet20": 10}
_QUICK_STEPS = {"mlp16m": 10, "resnet20": 2}
_DEFAULT_BATCH = {"mlp16m": 64, "resnet20": 128}
_DEFAULT_MLP_HIDDEN = (2048, 2048, 2048, 2048)
_DATA_BATCHES = 16
_PREFETCH = 2  # batches; a fixed buffer (not AUTOTUNE) so every variant gets the same one
_LEARNING_RATE = 1e-3
_KERAS_SPE = 10
_BASELINE = "keras fit jit"
FIT_KIND = "adam_xla fit"  # fit with adam_xla.compile_model and adam_xla.Adam
_MEMORY_PROBE_CALLS = 5  # calls after the warm-up call(s) in a memory probe
_MEMORY_PROBE_TIMEOUT = 1200  # seconds per child process
_MEMORY_PROBE_TAG = "memory_probe_result"

_flags_defined = False


def define_flags():
  """Defines the tool's flags on absl's FLAGS: called by main and by tests, not at import,
  so that other tools (profile_step) can import this module without a flag clash. A second
  call does nothing."""
  global _flags_defined
  if _flags_defined:
    return
  _flags_defined = True
  flags.DEFINE_list("models", list(MODELS), f"Models to time, from {MODELS}.")
  flags.DEFINE_list("strategies", list(STRATEGIES),
                    f"tf.distribute settings to time, from {STRATEGIES}; 'mirrored' is "
                    f"MirroredStrategy over {MIRRORED_DEVICES} logical CPU devices.")
  flags.DEFINE_integer("rounds", 5, "Interleaved rounds (every variant once each).")
  flags.DEFINE_integer(
      "steps", None, "Timed steps per round per variant (default per model: "
      f"{_DEFAULT_STEPS}). A variant running K steps per call runs ceil(steps/K)*K.")
  flags.DEFINE_integer(
      "batch_size", None, f"Global batch size (default per model: {_DEFAULT_BATCH}); under "
      "mirrored each replica gets an equal share.")
  flags.DEFINE_integer("steps_per_loop", 1, "steps_per_loop of the main adam_xla fused variant.")
  flags.DEFINE_bool("mlp_spl10_row", True,
                    "Also time the fused step with steps_per_loop=10 on the MLP.")
  # Four hidden layers of 2048 give the 16.7M parameters the MLP is known by
  # (1024-2048-2048-2048-1000 read literally, three hidden layers, has 12.5M).
  flags.DEFINE_list(
      "mlp_hidden", [str(w) for w in _DEFAULT_MLP_HIDDEN],
      "Hidden layer widths of the MLP (1024 inputs, 1000 classes); the default has 16,737,256 "
      "parameters; --mlp_hidden=2048,2048,2048 gives 12.5M.")
  flags.DEFINE_integer(
      "warmup_rounds", 1, "Untimed rounds of every variant after the warm-up calls and before "
      "the timed rounds.")
  flags.DEFINE_integer("seed", 0, "Seed for the data and the initial weights.")
  flags.DEFINE_string("json_out", None, "Write the report (timings, memory, checks) as JSON here.")
  flags.DEFINE_bool(
      "tf_data_autotune", False, "Leave tf.data autotuning on (see make_dataset: it adds a "
      "stall of about 0.3 s to about half of the iterator teardowns, i.e. of the fit calls).")
  flags.DEFINE_bool(
      "quick", False, f"Smoke test: 1 round of {_QUICK_STEPS} steps (unless --rounds/--steps "
      "are given explicitly), no memory probes unless --memory is given.")
  flags.DEFINE_bool(
      "memory", None, "Measure each variant's peak RSS in a child process of its own (default: "
      "on, off with --quick).")
  flags.DEFINE_string(
      "memory_probe", None, "Internal (used by --memory): build and run only the variant "
      "'strategy:model:variant' and print its RSS figures as one JSON line.")


# ---- Configuration -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run depends on; field names are the flags' names. Validated on creation."""

  models: Tuple[str, ...] = MODELS
  strategies: Tuple[str, ...] = STRATEGIES
  rounds: int = 5
  warmup_rounds: int = 1
  steps: Optional[int] = None  # None: per model (_DEFAULT_STEPS, or _QUICK_STEPS if quick)
  batch_size: Optional[int] = None  # None: per model (_DEFAULT_BATCH)
  steps_per_loop: int = 1
  mlp_spl10_row: bool = True
  mlp_hidden: Tuple[int, ...] = _DEFAULT_MLP_HIDDEN
  seed: int = 0
  tf_data_autotune: bool = False
  quick: bool = False
  memory: bool = True
  json_out: Optional[str] = None

  def __post_init__(self):
    for name, choices in (("models", MODELS), ("strategies", STRATEGIES)):
      values = getattr(self, name)
      if (not values or any(v not in choices for v in values) or
          len(set(values)) != len(values)):
        raise ValueError(f"--{name} must be a comma list of distinct names from {choices}; "
                         f"got {list(values)}.")
    if self.warmup_rounds < 0:
      raise ValueError(f"--warmup_rounds must be >= 0; got {self.warmup_rounds}.")
    for name in ("rounds", "steps", "batch_size", "steps_per_loop"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f"--{name} must be >= 1; got {value}.")
    if not self.mlp_hidden or any(w < 1 for w in self.mlp_hidden):
      raise ValueError(f"--mlp_hidden must list widths >= 1; got {list(self.mlp_hidden)}.")
    if "mirrored" in self.strategies:
      for model in self.models:
        if self.batch_for(model) % MIRRORED_DEVICES:
          raise ValueError(f"--batch_size must split evenly over the {MIRRORED_DEVICES} "
                           f"replicas of --strategies=mirrored; got {self.batch_for(model)}.")

  def steps_for(self, model_name):
    return self.steps or (_QUICK_STEPS if self.quick else _DEFAULT_STEPS)[model_name]

  def batch_for(self, model_name):
    return self.batch_size or _DEFAULT_BATCH[model_name]


def config_from_flags(flag_values=flags.FLAGS):
  """The Config of parsed flags; app.UsageError naming the flag when one is invalid."""
  fv = flag_values
  try:
    hidden = tuple(int(w) for w in fv.mlp_hidden)
  except ValueError as e:
    raise app.UsageError(f"--mlp_hidden must be a comma list of integers: {e}") from e
  rounds = 1 if fv.quick and not fv["rounds"].present else fv.rounds
  memory = (not fv.quick) if fv.memory is None else fv.memory
  try:
    return Config(models=tuple(fv.models), strategies=tuple(fv.strategies), rounds=rounds,
                  warmup_rounds=fv.warmup_rounds, steps=fv.steps, batch_size=fv.batch_size,
                  steps_per_loop=fv.steps_per_loop, mlp_spl10_row=fv.mlp_spl10_row,
                  mlp_hidden=hidden, seed=fv.seed, tf_data_autotune=fv.tf_data_autotune,
                  quick=fv.quick, memory=memory, json_out=fv.json_out)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def parse_probe(spec):
  """'strategy:model:variant' -> its three parts; app.UsageError naming --memory_probe."""
  parts = spec.split(":", 2)
  if len(parts) != 3 or parts[0] not in STRATEGIES or parts[1] not in MODELS or not parts[2]:
    raise app.UsageError(f"--memory_probe must be strategy:model:variant with a strategy from "
                         f"{STRATEGIES} and a model from {MODELS}; got {spec!r}.")
  return tuple(parts)


# ---- Devices and strategies --------------------------------------------------------------

def prepare_devices(strategies):
  """Splits the CPU for "mirrored"; must run before anything initializes TensorFlow's devices."""
  if "mirrored" not in strategies:
    return
  try:
    strategies_lib.split_cpu(MIRRORED_DEVICES)
  except RuntimeError as e:  # devices already initialized (e.g. a second run in one process)
    if len(tf.config.list_logical_devices("CPU")) < MIRRORED_DEVICES:
      raise RuntimeError(
          f"--strategies=mirrored needs {MIRRORED_DEVICES} logical CPU devices, which must be "
          "configured before TensorFlow initializes its devices; start a fresh process.") from e


def make_strategy(strategy_name):
  if strategy_name == "default":
    return tf.distribute.get_strategy()
  devices = [d.name for d in tf.config.list_logical_devices("CPU")[:MIRRORED_DEVICES]]
  return tf.distribute.MirroredStrategy(devices)


def _scope(strategy_name, strategy):
  return strategy.scope() if strategy_name != "default" else contextlib.nullcontext()


# ---- Models and data ---------------------------------------------------------------------

def build_mlp(seed, hidden=_DEFAULT_MLP_HIDDEN):
  """1024 inputs -> hidden Dense+ReLU layers -> 1000 logits."""
  keras.utils.set_random_seed(seed)
  layers = [keras.Input((1024,))]
  layers += [keras.layers.Dense(int(width), activation="relu") for width in hidden]
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


def build_model(config, model_name):
  if model_name == "mlp16m":
    return build_mlp(config.seed, config.mlp_hidden)
  return build_resnet20(config.seed)


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
  """The one input pipeline of every variant (batched at the global batch size).

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
  last_overhead_seconds = None  # one iterator for all calls: nothing to tear down

  def __init__(self, name, model, dataset, steps_per_loop, xla_scope="step",
               packed_slots=True):
    self.name, self.model, self.steps_per_call = name, model, steps_per_loop
    # The optimizer is created where the model was (the caller's strategy scope).
    optimizer = adam_xla.Adam(learning_rate=_LEARNING_RATE)
    if not packed_slots:  # each variable its own m and v (the layout before packed slots)
      with mock.patch.dict(os.environ, {engine.PACK_SWITCH: "0"}):
        optimizer.build(model.trainable_variables)
    self._step = adam_xla.make_train_step(
        model, keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
        optimizer, steps_per_loop=steps_per_loop, xla_scope=xla_scope)
    self.plan = self._step.plan
    self._iterator = iter(self._step.distribute(dataset))

  def run(self, calls):
    """Runs `calls` calls; returns the mean loss over their steps (like fit's epoch loss).

    Fetching the losses at the end waits for all the work to finish.
    """
    losses = [self._step(self._iterator)["loss"] for _ in range(calls)]
    return float(np.mean([float(loss) for loss in losses]))


class _FitClock(keras.callbacks.Callback):
  """Notes when fit's first step starts and when its last step has finished: at on_train_end,
  once every replica's copy of the optimizer's step count (written by each step's update) has
  been read back."""

  started = finished = None

  def on_train_batch_begin(self, batch, logs=None):
    if self.started is None:
      self.started = time.perf_counter()

  def on_train_end(self, logs=None):
    iterations = self.model.optimizer.iterations  # a keras.Variable or (adam_xla) a tf.Variable
    if isinstance(iterations, keras.Variable):
      iterations = iterations.value
    for value in self.model.distribute_strategy.experimental_local_results(iterations):
      value.numpy()
    self.finished = time.perf_counter()


class KerasFitVariant:
  """model.fit(dataset, steps_per_epoch=calls * steps_per_execution, epochs=1).

  After a run, `last_overhead_seconds` is the time of the fit call outside its steps: before
  the first step starts (setting up the epoch: its input iterator, callbacks) and after the
  last step has finished (tearing down the epoch's input iterator, idle: about 0.3 s in about
  half the calls on one device with tf.data autotuning on, about 0 with it off, and 0 to 30 s
  under MirroredStrategy either way). It does not grow with the steps of the call, so it is
  paid once per fit call, i.e. per epoch in real training.

  With `jit_compile=None` the model is compiled by `adam_xla.compile_model` with an
  `adam_xla.Adam` (kind "adam_xla fit"), else by `model.compile` with Keras' Adam.
  """

  kind = "keras"
  plan = None
  last_overhead_seconds = None

  def __init__(self, name, model, dataset, jit_compile, steps_per_execution):
    self.name, self.model, self.steps_per_call = name, model, steps_per_execution
    self._dataset = dataset
    compile_args = dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        steps_per_execution=steps_per_execution)
    if jit_compile is None:
      self.kind = FIT_KIND
      self.plan = adam_xla.compile_model(model, adam_xla.Adam(learning_rate=_LEARNING_RATE),
                                         **compile_args)
    else:
      model.compile(optimizer=keras.optimizers.Adam(learning_rate=_LEARNING_RATE),
                    jit_compile=jit_compile, **compile_args)

  def run(self, calls):
    # With an endless dataset Keras runs whole executions of steps_per_execution steps, so
    # steps_per_epoch is a multiple of it.
    clock, start = _FitClock(), time.perf_counter()
    history = self.model.fit(self._dataset, steps_per_epoch=calls * self.steps_per_call,
                             epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    self.last_overhead_seconds = (clock.started - start) + (time.perf_counter() - clock.finished)
    return float(history.history["loss"][-1])


@dataclasses.dataclass(frozen=True)
class VariantSpec:
  """A variant to build: `construct()` builds its model (same seed) in the strategy's scope.

  may_fail: a failure to build or run it is reported as "unsupported" instead of ending the
  run (the Keras variants under MirroredStrategy other than plain no-jit fit).
  """

  name: str
  construct: Callable[[str], object]
  may_fail: bool = False
  kind: str = "keras"  # the kind of its row when it is unsupported


def make_variants(config, strategy_name, strategy, model_name, dataset):
  """The VariantSpecs of one strategy and model, adam_xla first."""
  scope = lambda: _scope(strategy_name, strategy)

  def fused(steps_per_loop, xla_scope="step", packed_slots=True):
    def construct(name):
      with scope():
        return FusedVariant(name, build_model(config, model_name), dataset, steps_per_loop,
                            xla_scope, packed_slots)
    return construct

  def keras_fit(jit_compile, steps_per_execution):
    def construct(name):
      with scope():
        return KerasFitVariant(name, build_model(config, model_name), dataset, jit_compile,
                               steps_per_execution)
    return construct

  spl = config.steps_per_loop
  specs = [VariantSpec(f"adam_xla fused spl={spl}", fused(spl)),
           VariantSpec(f"adam_xla fused spl={spl} own slots", fused(spl, packed_slots=False))]
  if model_name == "mlp16m" and config.mlp_spl10_row and spl != 10:
    specs.append(VariantSpec("adam_xla fused spl=10", fused(10)))
  specs.append(VariantSpec(f"adam_xla xla_scope=update spl={spl}", fused(spl, "update")))
  specs.append(VariantSpec("adam_xla fit", keras_fit(None, 1)))
  specs.append(VariantSpec(f"adam_xla fit spe={_KERAS_SPE}", keras_fit(None, _KERAS_SPE),
                           may_fail=strategy_name == "mirrored", kind=FIT_KIND))
  # Under MirroredStrategy, Keras 3.15 on TensorFlow 2.21 fails with jit_compile=True (the
  # compiled function reads the other replica's variables) and with steps_per_execution > 1
  # (its in-graph loop over an Optional: "You must feed a value for placeholder tensor");
  # such variants are tried and reported as unsupported, so the table shows it if they work.
  mirrored = strategy_name == "mirrored"
  specs += [VariantSpec(_BASELINE, keras_fit(True, 1), may_fail=mirrored),
            VariantSpec(f"keras fit jit spe={_KERAS_SPE}", keras_fit(True, _KERAS_SPE),
                        may_fail=mirrored),
            VariantSpec("keras fit no-jit", keras_fit(False, 1)),
            VariantSpec(f"keras fit no-jit spe={_KERAS_SPE}", keras_fit(False, _KERAS_SPE),
                        may_fail=mirrored)]
  return specs


def _warmup_calls(variant):
  return 1 if variant.steps_per_call > 1 else 2


# ---- Benchmark ---------------------------------------------------------------------------

def benchmark_group(config, strategy_name, strategy, model_name):
  """Builds, warms up and times every variant of one strategy and model; a result dict."""
  tag = f"{strategy_name}/{model_name}"
  rounds, steps = config.rounds, config.steps_for(model_name)
  batch_size = config.batch_for(model_name)
  replicas = strategy.num_replicas_in_sync
  logging.info("[%s] generating data (global batch %d, %d replica(s)) ...", tag, batch_size,
               replicas)
  x, y = make_data(model_name, batch_size, config.seed)
  dataset = make_dataset(x, y, batch_size, autotune=config.tf_data_autotune)
  variants, setup, unsupported = [], {}, {}
  specs = make_variants(config, strategy_name, strategy, model_name, dataset)
  for spec in specs:
    logging.info("[%s] %s: building and warming up (tracing + XLA compile) ...", tag, spec.name)
    start = time.perf_counter()
    try:
      variant = spec.construct(spec.name)
      checksum = weights_checksum(variant.model)
      loss = variant.run(calls=_warmup_calls(variant))
    except Exception as e:  # pylint: disable=broad-except
      if not spec.may_fail:
        raise
      reason = f"{type(e).__name__}: {error_summary(str(e))}"
      logging.warning("[%s] %s: unsupported (%s)", tag, spec.name, reason)
      unsupported[spec.name] = (reason, spec.kind)
      variant = None
      gc.collect()
      continue
    seconds = time.perf_counter() - start
    logging.info("[%s] %s: ready in %.1f s (initial weights |w| sum %.6f, warm-up mean loss "
                 "%.5f)", tag, spec.name, seconds, checksum, loss)
    setup[spec.name] = {"warmup_seconds": seconds, "initial_weights_abs_sum": checksum,
                        "warmup_loss": loss}
    variants.append(variant)
  checksums = {round(s["initial_weights_abs_sum"], 3) for s in setup.values()}
  if len(checksums) != 1:
    raise RuntimeError(f"[{tag}] variants do not start from the same weights: {setup}")
  params = variants[0].model.count_params()

  # Untimed rounds first: right after all the variants have been built and compiled, the
  # first timed run of each was measured up to 2x slower than later ones (ResNet-20 here).
  for r in range(config.warmup_rounds):
    logging.info("[%s] untimed warm-up round %d/%d ...", tag, r + 1, config.warmup_rounds)
    for variant in variants:
      variant.run(math.ceil(steps / variant.steps_per_call))

  timings = {v.name: [] for v in variants}  # whole calls
  overheads = {v.name: [] for v in variants}
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
      overhead = variant.last_overhead_seconds or 0.0
      timings[variant.name].append(seconds)
      overheads[variant.name].append(overhead)
      other_loads[variant.name].append(other)
      logging.info("[%s] round %d/%d  %-28s %3d steps in %6.2f s = %6.2f steps/s  (fit "
                   "overhead %.2f s; loss %.4f; other processes %s of the CPUs)", tag, r + 1,
                   rounds, variant.name, executed[variant.name], seconds - overhead,
                   executed[variant.name] / (seconds - overhead), overhead, loss,
                   "?" if other is None else f"{other:.0%}")

  rows = []
  for variant in variants:
    steps_done = executed[variant.name]
    seconds = [call - overhead for call, overhead in zip(timings[variant.name],
                                                         overheads[variant.name])]
    rates = [steps_done / s for s in seconds]
    call_rates = [steps_done / s for s in timings[variant.name]]
    rows.append({"strategy": strategy_name, "model": model_name, "variant": variant.name,
                 "kind": variant.kind, "plan": variant.plan, "supported": True, "error": None,
                 "steps_per_call": variant.steps_per_call, "steps_per_round": steps_done,
                 "median_steps_per_s": statistics.median(rates), "min_steps_per_s": min(rates),
                 "max_steps_per_s": max(rates), "seconds_per_round": seconds,
                 "steps_per_s_per_round": rates,
                 "median_steps_per_s_whole_calls": statistics.median(call_rates),
                 "call_seconds_per_round": timings[variant.name],
                 "fit_overhead_seconds_per_round": (overheads[variant.name]
                                                    if variant.kind != "adam_xla" else None),
                 "other_cpu_load_per_round": other_loads[variant.name],
                 **setup[variant.name]})
  for name, (reason, kind) in unsupported.items():
    rows.append({"strategy": strategy_name, "model": model_name, "variant": name,
                 "kind": kind, "plan": None, "supported": False, "error": reason,
                 "median_steps_per_s": None, "other_cpu_load_per_round": []})
  order = [spec.name for spec in specs]
  rows.sort(key=lambda row: order.index(row["variant"]))
  add_ratios(rows)
  del variants
  gc.collect()
  return {"strategy": strategy_name, "model": model_name, "params": params,
          "batch_size": batch_size, "replicas": replicas,
          "per_replica_batch": batch_size // replicas, "rounds": rounds,
          "warmup_rounds": config.warmup_rounds, "steps": steps,
          "initial_weights_abs_sum": next(iter(setup.values()))["initial_weights_abs_sum"],
          "rows": rows}


def error_summary(text, limit=300):
  """The informative line of an error: TensorFlow's first "(0) CODE: message", else the
  first line that is not a header, a location or a traceback frame."""
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  root = next((l for l in lines if re.match(r"\(\d+\) [A-Z_]+:", l)), None)
  skip = ("Graph execution error", "Detected at node", "File ", "Traceback")
  line = root or next((l for l in lines if not l.startswith(skip) and
                       not l.endswith("root error(s) found.")), lines[0] if lines else "")
  return line if len(line) <= limit else line[:limit] + " ..."


def _best(rows, kind, key="median_steps_per_s"):
  timed = [r for r in rows if r["kind"] == kind and r["supported"]]
  return max(timed, key=lambda r: r.get(key, r["median_steps_per_s"])) if timed else None


def add_ratios(rows):
  """ratio_vs_keras_jit and ratio_vs_best_keras of each timed row (None where undefined)."""
  baseline = next((r["median_steps_per_s"] for r in rows
                   if r["variant"] == _BASELINE and r["supported"]), None)
  best_keras = _best(rows, "keras")
  for row in rows:
    rate = row["median_steps_per_s"]
    row["ratio_vs_keras_jit"] = rate / baseline if rate and baseline else None
    row["ratio_vs_best_keras"] = (rate / best_keras["median_steps_per_s"]
                                  if rate and best_keras else None)


def compute_checks(results):
  """Per strategy and model: best adam_xla / best Keras median steps/s against its target,
  for make_train_step ("adam_xla") and for fit with compile_model ("adam_xla fit").

  fit is timed without its per-call overhead (see KerasFitVariant); "value_whole_fit_calls" is
  the same ratio with it, for reference.
  """
  checks = []
  whole = "median_steps_per_s_whole_calls"
  for result in results:
    strategy_name, rows = result["strategy"], result["rows"]
    target = TARGET_RATIOS[strategy_name]
    keras_best, keras_w = _best(rows, "keras"), _best(rows, "keras", whole)
    for kind in ("adam_xla", FIT_KIND):
      ours, ours_w = _best(rows, kind), _best(rows, kind, whole)
      if ours is None and kind == FIT_KIND:
        continue  # results written before the fit variants existed
      value = (ours["median_steps_per_s"] / keras_best["median_steps_per_s"]
               if ours and keras_best else None)
      value_whole = (ours_w.get(whole, ours_w["median_steps_per_s"]) /
                     keras_w.get(whole, keras_w["median_steps_per_s"])
                     if ours_w and keras_w else None)
      checks.append({
          "name": (f"{strategy_name}/{result['model']}: best {kind} "
                   f"({ours['variant'] if ours else 'none'}) / best keras "
                   f"({keras_best['variant'] if keras_best else 'none'})"),
          "strategy": strategy_name, "model": result["model"],
          "value": value, "target": f">= {target:g}x",
          "passed": value is not None and value >= target, "unit": "x",
          "value_whole_fit_calls": value_whole})
  return checks


# ---- Peak memory, one child process per variant --------------------------------------------

def memory_probe(config, strategy_name, model_name, variant_name):
  """Builds and runs one variant in this (fresh) process; returns its RSS figures in MB."""
  prepare_devices((strategy_name,))
  strategy = make_strategy(strategy_name)
  batch_size = config.batch_for(model_name)
  x, y = make_data(model_name, batch_size, config.seed)
  dataset = make_dataset(x, y, batch_size, autotune=config.tf_data_autotune)
  specs = {s.name: s for s in make_variants(config, strategy_name, strategy, model_name,
                                            dataset)}
  if variant_name not in specs:
    raise app.UsageError(f"--memory_probe: no variant {variant_name!r} of {strategy_name}/"
                         f"{model_name}; variants: {sorted(specs)}.")
  tf.constant(0.0).numpy()  # TensorFlow's runtime and devices are up before the baseline
  gc.collect()
  baseline = process_memory.current_rss_mb()
  variant = specs[variant_name].construct(variant_name)
  warmup = _warmup_calls(variant)
  variant.run(warmup)
  gc.collect()
  warmed_up = process_memory.current_rss_mb()
  build_peak = process_memory.peak_rss_mb()
  in_use = process_memory.current_rss_mb() if process_memory.release_free_heap() else None
  file_backed, threads = process_memory.file_backed_rss_mb(), process_memory.thread_count()
  step_peak_known = process_memory.reset_peak_rss()
  for _ in range(_MEMORY_PROBE_CALLS):
    variant.run(1)
  step_peak = process_memory.peak_rss_mb()
  return {"strategy": strategy_name, "model": model_name, "variant": variant_name,
          "baseline_rss_mb": baseline, "peak_rss_mb": max(build_peak, step_peak),
          "build_peak_rss_mb": build_peak, "warmed_up_rss_mb": warmed_up,
          "warmed_up_in_use_rss_mb": in_use, "warmed_up_file_backed_rss_mb": file_backed,
          "warmed_up_threads": threads,
          "step_peak_rss_mb": step_peak if step_peak_known else None,
          "ru_maxrss_mb": process_memory.ru_maxrss_mb(),
          "steps": (warmup + _MEMORY_PROBE_CALLS) * variant.steps_per_call}


def probe_argv(config, strategy_name, model_name, variant_name):
  """The command line of a memory probe child: this tool, with the settings the variant uses."""
  flag = lambda name, on: f"--{'' if on else 'no'}{name}"
  return [sys.executable, "-m", "tools.benchmark_step",
          f"--memory_probe={strategy_name}:{model_name}:{variant_name}",
          f"--models={model_name}", f"--strategies={strategy_name}",
          f"--batch_size={config.batch_for(model_name)}",
          f"--steps_per_loop={config.steps_per_loop}",
          f"--mlp_hidden={','.join(str(w) for w in config.mlp_hidden)}",
          f"--seed={config.seed}", flag("mlp_spl10_row", config.mlp_spl10_row),
          flag("tf_data_autotune", config.tf_data_autotune)]


def run_memory_probe(config, strategy_name, model_name, variant_name):
  """Runs one probe child; its figures (plus peak_over_baseline_mb), or {"error": ...}."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  argv = probe_argv(config, strategy_name, model_name, variant_name)
  try:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                          timeout=_MEMORY_PROBE_TIMEOUT)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {_MEMORY_PROBE_TIMEOUT} s"}
  for line in reversed(done.stdout.splitlines()):
    if line.startswith("{") and _MEMORY_PROBE_TAG in line:
      figures = json.loads(line)[_MEMORY_PROBE_TAG]
      figures["peak_over_baseline_mb"] = figures["peak_rss_mb"] - figures["baseline_rss_mb"]
      return figures
  tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
  return {"error": f"exit status {done.returncode}: {tail[:300]}"}


MEMORY_KEYS = ("baseline_rss_mb", "peak_rss_mb", "peak_over_baseline_mb", "ru_maxrss_mb",
               "build_peak_rss_mb", "warmed_up_rss_mb", "warmed_up_in_use_rss_mb",
               "warmed_up_file_backed_rss_mb", "warmed_up_threads", "step_peak_rss_mb")


def measure_memory(config, results):
  """Adds the memory probe's figures (MEMORY_KEYS) to every timed row."""
  for result in results:
    for row in result["rows"]:
      if not row["supported"]:
        continue
      logging.info("[%s/%s] %s: memory probe in a child process ...", row["strategy"],
                   row["model"], row["variant"])
      figures = run_memory_probe(config, row["strategy"], row["model"], row["variant"])
      row["memory_error"] = figures.get("error")
      for key in MEMORY_KEYS:
        row[key] = figures.get(key)
      if row["memory_error"]:
        logging.warning("memory probe of %s/%s/%s failed: %s", row["strategy"], row["model"],
                        row["variant"], row["memory_error"])


# ---- Reporting ---------------------------------------------------------------------------

def _ratio(value):
  return "n/a" if value is None else f"{value:.2f}x"


def _mb(value):
  return "-" if value is None else f"{value:.0f}"


def format_table(results):
  header = ("strategy", "model", "variant", "median steps/s", "min", "max", "vs keras jit",
            "vs best keras", "fit overhead s", "other load", "warm-up s", "warm-up loss",
            "peak RSS MB", "peak-base MB")
  lines = []
  for result in results:
    for row in result["rows"]:
      if not row["supported"]:
        lines.append((row["strategy"], row["model"], row["variant"], "unsupported", "-", "-",
                      "-", "-", "-", "-", "-", "-", "-", "-"))
        continue
      lines.append((row["strategy"], row["model"], row["variant"],
                    f"{row['median_steps_per_s']:.2f}", f"{row['min_steps_per_s']:.2f}",
                    f"{row['max_steps_per_s']:.2f}", _ratio(row["ratio_vs_keras_jit"]),
                    _ratio(row["ratio_vs_best_keras"]),
                    _overhead_summary(row.get("fit_overhead_seconds_per_round")),
                    _load_summary(row["other_cpu_load_per_round"]),
                    f"{row['warmup_seconds']:.1f}", f"{row['warmup_loss']:.4f}",
                    _mb(row.get("peak_rss_mb")), _mb(row.get("peak_over_baseline_mb"))))
  return text_table.table(header, lines, left=3)


def format_memory_table(results):
  """The memory probes' breakdown; None when no probe ran."""
  header = ("strategy", "model", "variant", "before model MB", "build peak MB",
            "after warm-up MB", "in use MB", "of which files MB", "threads", "step peak MB")
  lines = [(row["strategy"], row["model"], row["variant"], _mb(row.get("baseline_rss_mb")),
            _mb(row.get("build_peak_rss_mb")), _mb(row.get("warmed_up_rss_mb")),
            _mb(row.get("warmed_up_in_use_rss_mb")),
            _mb(row.get("warmed_up_file_backed_rss_mb")),
            _mb(row.get("warmed_up_threads")), _mb(row.get("step_peak_rss_mb")))
           for result in results for row in result["rows"]
           if row["supported"] and row.get("peak_rss_mb") is not None]
  return text_table.table(header, lines, left=3) if lines else None


def format_checks(checks):
  figure = lambda value, unit: "n/a" if value is None else f"{value:.2f}{unit}"
  return text_table.table(("check", "figure", "target", "result", "with fit overhead"),
                          [(c["name"], figure(c["value"], c["unit"]), c["target"],
                            "PASS" if c["passed"] else "FAIL",
                            figure(c.get("value_whole_fit_calls"), c["unit"]))
                           for c in checks], left=1)


def _overhead_summary(seconds):
  if not seconds:
    return "-"
  return f"{statistics.median(seconds):.2f} ({max(seconds):.2f})"


def _load_summary(loads):
  known = [load for load in loads if load is not None]
  return f"{max(known):.0%}" if known else "?"


def _noisy_rows(results, limit=0.1):
  return [f"{row['strategy']}/{row['model']}/{row['variant']}" for result in results
          for row in result["rows"]
          if any(load is not None and load > limit for load in row["other_cpu_load_per_round"])]


def _print_header(config, info):
  print(f"command: {run_info.command_line()}")
  print(f"machine: {info['cpu']}, {info['logical_cores']} logical cores "
        f"({info['usable_cores']} usable); Python {info['python']}, TensorFlow "
        f"{info['tensorflow']}, Keras {info['keras']}, NumPy {info['numpy']}")
  env = info["environment"]
  print("environment (one process: applies to every variant alike): " +
        (", ".join(f"{k}={v}" for k, v in env.items()) if env else "none of "
         f"{', '.join(run_info.ENV_VARS)} set (TensorFlow's default CPU allocator)"))
  if "mirrored" in config.strategies:
    print(f"devices: the CPU is split into {MIRRORED_DEVICES} logical devices for "
          "MirroredStrategy (same cores); default-strategy variants run on /CPU:0")
  print(f"input pipeline (every variant): from_tensor_slices -> repeat -> batch(drop_remainder) "
        f"-> prefetch({_PREFETCH}); tf.data autotune "
        f"{'on' if config.tf_data_autotune else 'off'}", flush=True)


def _print_report(config, results, checks, wall):
  print()
  for result in results:
    plans = sorted({r["plan"] for r in result["rows"] if r.get("plan")})
    print(f"{result['strategy']}/{result['model']}: {result['params']:,} parameters, global "
          f"batch {result['batch_size']} ({result['replicas']} replica(s) x "
          f"{result['per_replica_batch']}), {result['warmup_rounds']} untimed + "
          f"{result['rounds']} timed round(s) x {result['steps']} steps per variant; adam_xla "
          f"plan {', '.join(plans)}")
  print()
  print(format_table(results))
  memory_table = format_memory_table(results)
  if memory_table:
    print("\nmemory (each variant alone in a child process): RSS before the model was built, "
          "peak while building and compiling,\nafter the warm-up, in use once glibc returned "
          "the heap's freed pages (malloc_trim), the file-backed part of it\n(library code), "
          "threads, and the peak of the steps alone (restarted after the warm-up)")
    print(memory_table)
  print()
  for result in results:
    for row in result["rows"]:
      if not row["supported"]:
        print(f"unsupported: {row['strategy']}/{row['model']}/{row['variant']}: {row['error']}")
      elif row.get("memory_error"):
        print(f"memory probe failed: {row['strategy']}/{row['model']}/{row['variant']}: "
              f"{row['memory_error']}")
  print("variants: adam_xla fused spl=K = adam_xla.make_train_step(..., steps_per_loop=K) "
        "called with an iterator over\n  step.distribute(dataset); keras fit jit / no-jit = "
        "compile(jit_compile=True / False); spe=10 = also steps_per_execution=10.\n"
        "Ratios are of median steps/s; 'best keras' is the fastest Keras variant of that "
        "strategy and model (spl/spe=10 variants\n  run whole calls of 10 steps). Keras times "
        "run from the start of fit's first step to the end of its last; the fit call's "
        "overhead outside its steps\n  (setting up the epoch before them, tearing down its "
        "input iterator after them) is paid once per fit call\n  (per epoch) whatever its "
        "length and is shown apart (median (max) over the rounds; the checks' last column\n  "
        "counts it as the whole fit calls would).\n"
        "Warm-up: untimed first call(s), compilation included; warm-up loss: mean loss of its "
        "steps (same weights and batches,\n  so equal across variants with the same steps per "
        "call and strategy).\n"
        "other load: the largest share of the CPUs used by other processes during a timed run "
        "of that variant (from /proc/stat).")
  if config.memory:
    print(f"peak RSS: VmHWM of a child process that ran only that variant (warm-up + "
          f"{_MEMORY_PROBE_CALLS} calls, compilation included);\n  peak-base: minus its RSS "
          "after imports, devices and data, before the model was built.")
  print()
  print("Checks (targets: best adam_xla / best keras, median steps/s):")
  print(format_checks(checks))
  noisy = _noisy_rows(results)
  if noisy:
    print(f"WARNING: other processes used more than 10% of the CPUs during timed runs of "
          f"{', '.join(noisy)}; the machine was not quiet, so the numbers are noisy. Re-run "
          "on a quiet machine (or with more --rounds).")
  print(f"wall time: {wall:.0f} s")


def run(config):
  """Runs the benchmark of `config`; prints the tables and returns the report (JSON dict)."""
  prepare_devices(config.strategies)
  info = run_info.machine_info()
  _print_header(config, info)
  start = time.perf_counter()
  results = []
  for strategy_name in config.strategies:
    strategy = make_strategy(strategy_name)
    for model_name in config.models:
      results.append(benchmark_group(config, strategy_name, strategy, model_name))
      keras.backend.clear_session()
      gc.collect()
  mismatched = {}
  for model_name in config.models:
    sums = {r["strategy"]: r["initial_weights_abs_sum"] for r in results
            if r["model"] == model_name}
    if len({round(s, 3) for s in sums.values()}) > 1:
      mismatched[model_name] = sums
      logging.warning("[%s] the strategies' models do not start from the same weights: %s",
                      model_name, sums)
  if config.memory:
    measure_memory(config, results)
  checks = compute_checks(results)
  wall = time.perf_counter() - start
  _print_report(config, results, checks, wall)
  for model_name, sums in mismatched.items():
    print(f"WARNING: {model_name}: the strategies' models started from different weights "
          f"(|w| sums {sums}); compare ratios within a strategy only.")
  report = {"suite": "step", "command": run_info.command_line(), "machine": info,
            "config": dataclasses.asdict(config), "wall_seconds": wall,
            "learning_rate": _LEARNING_RATE, "prefetch": _PREFETCH, "seed": config.seed,
            "tf_data_autotune": config.tf_data_autotune,
            "targets": dict(TARGET_RATIOS),
            "same_initial_weights_across_strategies": not mismatched,
            "results": results, "checks": checks}
  if config.json_out:
    # `bazel run` starts the tool in its runfiles tree; a relative path means the user's
    # directory.
    path = os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY", ""), config.json_out)
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {path}")
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = config_from_flags()
  if flags.FLAGS.memory_probe:
    figures = memory_probe(config, *parse_probe(flags.FLAGS.memory_probe))
    print(json.dumps({_MEMORY_PROBE_TAG: figures}), flush=True)
    return
  run(config)


if __name__ == "__main__":
  define_flags()
  app.run(main)
