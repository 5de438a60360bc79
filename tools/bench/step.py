"""Full train steps: adam_xla's compiled step and fit beside Keras 3 fit, and adam_xla's
optimizer state mirrored against sharded.

Groups, each for every model (MLP 16.7M, CIFAR ResNet-20):
  default      one device.
  mirrored     MirroredStrategy over 2 logical CPUs (the same cores), the global batch split
               over the replicas. Keras 3.15 fails there with jit and with steps_per_execution
               > 1: such variants are tried and reported unsupported.
  shard_state  MirroredStrategy over each of config.shard_devices logical CPUs: the fused step
               with adam_xla.Adam ("mirrored": each replica holds all of m and v) and with
               Adam(shard_state=True) ("sharded": each holds 1/N).

Every variant of a group starts from the same weights (checked) and reads the same synthetic
data through the same tf.data pipeline. A fit round runs from its first step's start to its
last step's end: the call's overhead outside them (epoch set-up, iterator teardown: paid once
per epoch) is kept apart. The groups of one device count share a child process (TensorFlow
fixes its logical devices when it starts); with config.probes each variant then runs alone in
a child of its own, for its memory and, under the profiler, where its step's time goes.
"""

import dataclasses
import functools
import gc
import math
import os
import shutil
import statistics
import time
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import adam_xla
from adam_xla import engine
from tools.bench import child
from tools.bench import harness
from tools.bench import hlo
from tools.bench import machine
from tools.bench import memory
from tools.bench import profile
from tools.bench.configs import MIRRORED_DEVICES

LEARNING_RATE = 1e-3
PREFETCH = 2  # batches; a fixed buffer (not AUTOTUNE), the same for every variant
BASELINE, FIT_KIND = "keras fit jit", "adam_xla fit"
_DATA_BATCHES = 16
_PROBE_CALLS = 5  # calls after the warm-up in a probe: the steps' own peak
# Best adam_xla (make_train_step; fit after compile_model) over best Keras, median steps/s.
KERAS_TARGETS = {
    "default": harness.Target("best / best keras", ">=", 1.25),
    "mirrored": harness.Target("best / best keras", ">=", 1.5)
}
# shard_state, sharded over mirrored: (figure, models, replica counts or None for all, target).
SHARD_TARGETS = (("update_ms_per_step", ("mlp16m", "resnet20"), (2,),
                  harness.Target("update time per step, sharded / mirrored", "<=",
                                 0.6)), ("median_steps_per_s", ("mlp16m",), None,
                                         harness.Target("steps/s, sharded / mirrored", ">=", 1.05)))


@dataclasses.dataclass(frozen=True)
class Group:
  strategy: str
  replicas: int = 1

  @property
  def label(self):
    return f"{self.strategy} x{self.replicas}" if self.strategy == "shard_state" else self.strategy

  @property
  def devices(self):
    """Logical CPUs of its process (None: TensorFlow's default, one)."""
    return self.replicas if self.replicas > 1 else None


def processes(config):
  """[(logical CPUs, [Group])]: a child process each, in the order they run. default shares
  mirrored's process, as it always has (its variants use the first device); each shard_state
  group has one of its own, where no other strategy's collectives ran before."""
  plan = []
  keras_groups = [
      Group(s, MIRRORED_DEVICES if s == "mirrored" else 1) for s in ("default", "mirrored")
      if s in config.strategies
  ]
  if keras_groups:
    plan.append((max(group.devices or 0 for group in keras_groups) or None, keras_groups))
  if "shard_state" in config.strategies:
    plan += [(n, [Group("shard_state", n)]) for n in config.shard_devices]
  return plan


def make_strategy(group):
  if group.strategy == "default":
    return tf.distribute.get_strategy()
  devices = [d.name for d in tf.config.list_logical_devices("CPU")][:group.replicas]
  if len(devices) < group.replicas:
    raise RuntimeError(f"{group.label} needs {group.replicas} logical CPUs, configured before "
                       "TensorFlow starts (child.call(..., logical_cpus=N)).")
  return tf.distribute.MirroredStrategy(devices)


# ---- Models, data, variants --------------------------------------------------------------


def build_model(config, model_name):
  """The MLP (1024 inputs, Dense+ReLU layers, 1000 logits) or CIFAR ResNet-20 (He et al.
  2016: 3 stages of 3 basic blocks, 16/32/64 filters)."""
  keras.utils.set_random_seed(config.seed)
  if model_name == "mlp16m":
    return keras.Sequential([keras.Input(
        (1024,))] + [keras.layers.Dense(width, activation="relu") for width in config.mlp_hidden] +
                            [keras.layers.Dense(1000)], name="mlp")
  conv = lambda filters, size, strides=1: keras.layers.Conv2D(
      filters, size, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal"
  )
  bn = lambda: keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
  inputs = keras.Input((32, 32, 3))
  x = keras.layers.ReLU()(bn()(conv(16, 3)(inputs)))
  for stage, filters in enumerate((16, 32, 64)):
    for block in range(3):
      strides = 2 if stage > 0 and block == 0 else 1
      y = bn()(conv(filters, 3)(keras.layers.ReLU()(bn()(conv(filters, 3, strides)(x)))))
      if strides != 1 or x.shape[-1] != filters:
        x = bn()(conv(filters, 1, strides)(x))  # projection shortcut
      x = keras.layers.ReLU()(keras.layers.Add()([y, x]))
  outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
  return keras.Model(inputs, outputs, name="resnet20")


def make_dataset(config, model_name):
  """Synthetic examples in memory through the one pipeline of every variant. No autotuning:
  its thread makes destroying an iterator block for about 0.3 s half the time, charged to
  every fit call (an iterator each) and to none of the fused step's."""
  batch = config.batch_for(model_name)
  rng = np.random.default_rng(config.seed)
  shape, classes = ((1024,), 1000) if model_name == "mlp16m" else ((32, 32, 3), 10)
  x = rng.standard_normal((batch * _DATA_BATCHES, *shape), dtype=np.float32)
  y = rng.integers(0, classes, size=(batch * _DATA_BATCHES,), dtype=np.int32)
  options = tf.data.Options()
  options.autotune.enabled = False
  return (tf.data.Dataset.from_tensor_slices(
      (x, y)).repeat().batch(batch, drop_remainder=True).prefetch(PREFETCH).with_options(options))


def weights_checksum(model):
  return float(sum(np.sum(np.abs(w.astype(np.float64))) for w in model.get_weights()))


class FusedVariant:
  """adam_xla.make_train_step; a call runs `steps_per_loop` steps, returns their mean loss."""

  kind = "adam_xla"

  def __init__(self, model, dataset, steps_per_loop=1, xla_scope="step", packed_slots=True,
               **adam_options):
    self.model, self.steps_per_call = model, steps_per_loop
    self.first_calls = 1 if steps_per_loop > 1 else 2
    self.initial_weights_abs_sum = weights_checksum(model)
    self.optimizer = adam_xla.Adam(learning_rate=LEARNING_RATE, **adam_options)
    if not packed_slots:  # each variable its own m and v, as before packed slots
      with mock.patch.dict(os.environ, {engine.PACK_SWITCH: "0"}):
        self.optimizer.build(model.trainable_variables)
    self._step = adam_xla.make_train_step(
        model, keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
        self.optimizer, steps_per_loop=steps_per_loop, xla_scope=xla_scope)
    self.plan = self._step.plan
    self._iterator = iter(self._step.distribute(dataset))

  def run(self, calls):
    losses = [self._step(self._iterator)["loss"] for _ in range(calls)]
    return float(np.mean([float(loss) for loss in losses]))


class _FitClock(keras.callbacks.Callback):
  """When fit's first step starts, and when its last has finished (every replica's step count
  read back)."""

  started = finished = None

  def on_train_batch_begin(self, batch, logs=None):
    self.started = self.started or time.perf_counter()

  def on_train_end(self, logs=None):
    iterations = self.model.optimizer.iterations
    iterations = iterations.value if isinstance(iterations, keras.Variable) else iterations
    for value in self.model.distribute_strategy.experimental_local_results(iterations):
      value.numpy()
    self.finished = time.perf_counter()


class KerasFitVariant:
  """model.fit of `calls` executions, one epoch; compiled by adam_xla.compile_model with
  adam_xla.Adam when jit_compile is None, else by model.compile with Keras' Adam."""

  kind, plan, overhead_seconds = "keras", None, 0.0

  def __init__(self, model, dataset, jit_compile, steps_per_execution=1):
    self.model, self.steps_per_call, self._dataset = model, steps_per_execution, dataset
    self.first_calls = 1 if steps_per_execution > 1 else 2
    self.initial_weights_abs_sum = weights_checksum(model)
    options = dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   steps_per_execution=steps_per_execution)
    if jit_compile is None:
      self.kind = FIT_KIND
      self.plan = adam_xla.compile_model(model, adam_xla.Adam(learning_rate=LEARNING_RATE),
                                         **options)
    else:
      model.compile(optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
                    jit_compile=jit_compile, **options)

  def run(self, calls):
    clock, start = _FitClock(), time.perf_counter()
    history = self.model.fit(self._dataset, steps_per_epoch=calls * self.steps_per_call, epochs=1,
                             verbose=0, shuffle=False, callbacks=[clock])
    self.overhead_seconds = (clock.started - start) + (time.perf_counter() - clock.finished)
    return float(history.history["loss"][-1])


def _kind(make):
  if make[0] is not KerasFitVariant:
    return "adam_xla"
  return FIT_KIND if make[1] is None else "keras"


def variant_specs(config, group, model_name):
  """[(name, (class, args), may_fail)] of a group and model; may_fail: a Keras setting that
  MirroredStrategy may not support."""
  fused, fit, mirrored = FusedVariant, KerasFitVariant, group.strategy == "mirrored"
  if group.strategy == "shard_state":
    # While shard_state is new, a failure of it is reported and the other groups are kept.
    sharded = functools.partial(FusedVariant, shard_state=True)
    specs = [("mirrored", (fused,), False), ("sharded", (sharded,), True)]
  else:
    specs = [("adam_xla fused spl=1", (fused,), False),
             ("adam_xla fused spl=1 own slots", (fused, 1, "step", False), False),
             ("adam_xla fused spl=10", (fused, 10), False),
             ("adam_xla xla_scope=update spl=1", (fused, 1, "update"), False),
             ("adam_xla fit", (fit, None), False),
             ("adam_xla fit spe=10", (fit, None, 10), mirrored), (BASELINE, (fit, True), mirrored),
             ("keras fit jit spe=10", (fit, True, 10), mirrored),
             ("keras fit no-jit", (fit, False), False),
             ("keras fit no-jit spe=10", (fit, False, 10), mirrored)]
    if model_name != "mlp16m":
      specs.pop(2)  # the MLP alone gains from 10 steps per call
  return [spec for spec in specs if not config.variants or spec[0] in config.variants]


def constructors(config, group, strategy, model_name):
  """{name: (construct(), may_fail, kind)}: each builds its model (same seed) in the
  strategy's scope."""
  dataset = make_dataset(config, model_name)

  def construct(make, *args):
    with strategy.scope():
      return make(build_model(config, model_name), dataset, *args)

  return {
      name: (lambda make=make: construct(*make), may_fail, _kind(make))
      for name, make, may_fail in variant_specs(config, group, model_name)
  }


# ---- Timing a group ----------------------------------------------------------------------


def _row(group, model_name, name, variant, setup, records):
  steps = records[0]["steps"]
  seconds = [r["seconds"] for r in records]
  calls = [r.get("call_seconds", r["seconds"]) for r in records]
  rates = [steps / s for s in seconds]
  whole_calls = statistics.median(steps / s for s in calls)
  overhead = [r["overhead_seconds"] for r in records] if "overhead_seconds" in records[0] else None
  median_overhead = statistics.median(overhead) if overhead else None
  loads = [r["other_load"] for r in records]
  max_load = max((load for load in loads if load is not None), default=None)
  row = dict(strategy=group.strategy, replicas=group.replicas, model=model_name, variant=name,
             kind=variant.kind, plan=variant.plan, supported=True, error=None,
             steps_per_call=variant.steps_per_call, steps_per_round=steps,
             median_steps_per_s=statistics.median(rates), min_steps_per_s=min(rates),
             max_steps_per_s=max(rates), seconds_per_round=seconds, steps_per_s_per_round=rates,
             median_steps_per_s_whole_calls=whole_calls, call_seconds_per_round=calls,
             fit_overhead_seconds_per_round=overhead, median_fit_overhead_seconds=median_overhead,
             other_cpu_load_per_round=loads, max_other_load=max_load,
             warmup_seconds=setup["first_call_seconds"], warmup_loss=setup["first_call_loss"],
             initial_weights_abs_sum=variant.initial_weights_abs_sum)
  if group.strategy == "shard_state":
    opt = variant.optimizer
    row["state_bytes_per_replica"] = getattr(opt, "state_bytes_per_replica", lambda: None)()
    row["state_padding_allowance_bytes"] = len(opt.slot_names) * _longest_row_bytes(
        variant.model.trainable_variables)
  return row


def _longest_row_bytes(variables):
  """What a replica's shard may hold beyond 1/N, per slot: shards end on rows (along the first
  axis), each cut within half a row of the exact point, and are stored as long as the longest,
  so up to one row and one element more, for each dtype's group of variables."""
  rows = {}
  for v in variables:
    rows[v.dtype] = max(rows.get(v.dtype, 0), math.prod(tuple(v.shape)[1:]))  # a scalar: 1
  return sum((row + 1) * tf.as_dtype(dtype).size for dtype, row in rows.items())


def _unsupported_row(group, model_name, name, kind, error):
  return dict(strategy=group.strategy, replicas=group.replicas, model=model_name, variant=name,
              kind=kind, plan=None, supported=False, error=error, median_steps_per_s=None,
              other_cpu_load_per_round=[])


def benchmark_group(config, group, strategy, model_name):
  """Builds, warms up and times every variant of one group and model; a result dict."""
  label, steps = f"{group.label}/{model_name}", config.steps_for(model_name)
  specs = constructors(config, group, strategy, model_name)
  variants, setup, skipped = harness.build(label, [(n, c, f) for n, (c, f, _) in specs.items()])
  if len({round(v.initial_weights_abs_sum, 3) for v in variants.values()}) > 1:
    raise RuntimeError(f"[{label}] the variants do not start from the same weights")
  records = harness.time_rounds(label, variants, dict.fromkeys(variants, steps), config.rounds,
                                config.warmup_rounds)
  rows = [
      _row(group, model_name, name, variants[name], setup[name], records[name]) if name in variants
      else _unsupported_row(group, model_name, name, specs[name][2], skipped[name])
      for name in specs
  ]
  add_ratios(rows)
  first = next(iter(variants.values()))
  batch = config.batch_for(model_name)
  per_replica = batch // group.replicas
  return dict(strategy=group.strategy, replicas=group.replicas, model=model_name,
              params=first.model.count_params(), batch_size=batch, per_replica_batch=per_replica,
              rounds=config.rounds, warmup_rounds=config.warmup_rounds, steps=steps,
              initial_weights_abs_sum=first.initial_weights_abs_sum, rows=rows)


def run_groups(config, groups):
  """Every model of each group, in this process (its logical CPUs already configured)."""
  results = []
  for group in groups:
    strategy = make_strategy(group)
    for model_name in config.models:
      results.append(benchmark_group(config, group, strategy, model_name))
      keras.backend.clear_session()
      gc.collect()
  return results


def _best(rows, kind, key="median_steps_per_s"):
  timed = [r for r in rows if r["kind"] == kind and r["supported"]]
  return max(timed, key=lambda r: r.get(key, r["median_steps_per_s"])) if timed else None


def add_ratios(rows):
  """Each row's median steps/s over keras fit jit's and over the best Keras variant's."""
  baseline = next((r for r in rows if r["variant"] == BASELINE and r["supported"]), None)
  best = _best(rows, "keras")
  for row in rows:
    rate = row["median_steps_per_s"]
    row["ratio_vs_keras_jit"] = rate and baseline and rate / baseline["median_steps_per_s"]
    row["ratio_vs_best_keras"] = rate and best and rate / best["median_steps_per_s"]


# ---- Probes: each variant alone in a process -----------------------------------------------


def probe(config, group, model_name, variant_name):
  """In a fresh process: one variant's memory (MB) and, under the profiler, its step's time
  by kind of kernel."""
  dump = hlo.dump_to_temporary_directory()  # before anything compiles
  specs = constructors(dataclasses.replace(config, variants=()), group, make_strategy(group),
                       model_name)
  if variant_name not in specs:
    raise ValueError(f"no variant {variant_name!r} in {group.label}/{model_name}")
  tf.constant(0.0).numpy()  # the runtime and devices are up before the baseline
  gc.collect()
  figures = {"baseline_rss_mb": memory.current_rss_mb()}
  variant = specs[variant_name][0]()
  variant.run(variant.first_calls)
  gc.collect()
  figures.update(warmed_up_rss_mb=memory.current_rss_mb(), build_peak_rss_mb=memory.peak_rss_mb())
  figures["warmed_up_in_use_rss_mb"] = (memory.current_rss_mb()
                                        if memory.release_free_heap() else None)
  figures.update(warmed_up_file_backed_rss_mb=memory.file_backed_rss_mb(),
                 warmed_up_threads=memory.thread_count())
  restarted = memory.reset_peak_rss()
  for _ in range(_PROBE_CALLS):
    variant.run(1)
  step_peak = memory.peak_rss_mb()
  peak = max(figures["build_peak_rss_mb"], step_peak)
  figures.update(step_peak_rss_mb=step_peak if restarted else None, peak_rss_mb=peak,
                 peak_over_baseline_mb=peak - figures["baseline_rss_mb"],
                 ru_maxrss_mb=memory.ru_maxrss_mb(),
                 steps=(variant.first_calls + _PROBE_CALLS) * variant.steps_per_call)
  kernel_ops = hlo.dumped_kernel_ops(dump)
  shutil.rmtree(dump, ignore_errors=True)
  profiled = profile.profile(lambda: variant.run(1), config.profile_calls, kernel_ops)
  per_step = 1 / variant.steps_per_call
  figures["profile_ms_per_step"] = {
      "wall": profiled["wall_ms"] * per_step,
      "categories": {k: ms * per_step for k, ms in profiled["categories"].items()},
      "kernels": [(label, kind, ms * per_step) for label, kind, ms in profiled["kernels"][:20]]
  }
  figures["update_ms_per_step"] = figures["profile_ms_per_step"]["categories"][profile.UPDATE]
  return figures


def run_probes(config, results):
  """Adds each timed row's probe figures, or why its probe failed (probe_error)."""
  for result in results:
    group = Group(result["strategy"], result["replicas"])
    for row in (row for row in result["rows"] if row["supported"]):
      harness.log(f"{group.label}/{row['model']}", f"{row['variant']}: probe in a child ...")
      try:
        row.update(
            child.call("tools.bench.step:probe", config, group, row["model"], row["variant"],
                       logical_cpus=group.devices, quiet=True, timeout=1200))
      except child.ChildFailed as error:
        row["probe_error"] = str(error)


# ---- Checks and report -------------------------------------------------------------------


def _ratio(ours, theirs, key="median_steps_per_s"):
  if not (ours and theirs):
    return None
  return ours.get(key, ours["median_steps_per_s"]) / theirs.get(key, theirs["median_steps_per_s"])


def compute_checks(results):
  """KERAS_TARGETS per default and mirrored group and model, for make_train_step and for fit
  after compile_model (without fit's per-call overhead; value_whole_fit_calls with it); the
  shard_state groups' targets (shard_checks)."""
  checks, whole = [], "median_steps_per_s_whole_calls"
  for result in results:
    if result["strategy"] == "shard_state":
      checks += shard_checks(result)
      continue
    rows, target = result["rows"], KERAS_TARGETS[result["strategy"]]
    keras_best, keras_whole = _best(rows, "keras"), _best(rows, "keras", whole)
    for kind in ("adam_xla", FIT_KIND):
      ours, ours_whole = _best(rows, kind), _best(rows, kind, whole)
      if ours is None and kind == FIT_KIND:
        continue
      name = (f"{result['strategy']}/{result['model']}: best {kind} "
              f"({ours['variant'] if ours else 'none'}) / best keras "
              f"({keras_best['variant'] if keras_best else 'none'})")
      value, whole_calls = _ratio(ours, keras_best), _ratio(ours_whole, keras_whole, whole)
      checks.append(
          target.check(value, name, strategy=result["strategy"], model=result["model"],
                       value_whole_fit_calls=whole_calls))
  return checks


def shard_checks(result):
  """The state per replica exactly 1/N of mirrored's (up to padding), and SHARD_TARGETS."""
  rows = {row["variant"]: row for row in result["rows"] if row["supported"]}
  mirrored, sharded, n = rows.get("mirrored", {}), rows.get("sharded", {}), result["replicas"]
  label, tags = f"shard_state x{n}/{result['model']}", dict(strategy="shard_state",
                                                            model=result["model"])
  full, part = mirrored.get("state_bytes_per_replica"), sharded.get("state_bytes_per_replica")
  padding = mirrored.get("state_padding_allowance_bytes", 0)
  value = full and part and part * n / full
  state = harness.Target("state", "<=", 1 + n * padding / full if full else 1).check(
      value, f"{label}: optimizer state per replica, sharded x {n} / mirrored (exactly 1/{n} of "
      f"{full} B, shards ending on rows: up to {padding} B more)", **tags)
  state["passed"] = bool(state["passed"] and value >= 1)
  checks = [state]
  for key, models, replica_counts, target in SHARD_TARGETS:
    if result["model"] in models and (replica_counts is None or n in replica_counts):
      value = sharded.get(key) and mirrored.get(key) and sharded[key] / mirrored[key]
      checks.append(target.check(value, f"{label}: {target.figure}", **tags))
  return checks


def _group(row):
  return Group(row["strategy"], row["replicas"]).label


_TIMING = ("group|group", "model|model", "variant|variant", "median steps/s|median_steps_per_s|.2f",
           "min|min_steps_per_s|.2f", "max|max_steps_per_s|.2f",
           "vs keras jit|ratio_vs_keras_jit|.2f", "vs best keras|ratio_vs_best_keras|.2f",
           "fit overhead s|median_fit_overhead_seconds|.2f", "other load|max_other_load|.0%",
           "warm-up s|warmup_seconds|.1f", "state MB/replica|state_mb_per_replica|.2f",
           "update ms/step|update_ms_per_step|.2f", "peak RSS MB|peak_rss_mb|.0f",
           "peak-base MB|peak_over_baseline_mb|.0f")
_MEMORY = _TIMING[:3] + ("before model|baseline_rss_mb|.0f", "build peak|build_peak_rss_mb|.0f",
                         "after warm-up|warmed_up_rss_mb|.0f", "in use|warmed_up_in_use_rss_mb|.0f",
                         "of which files|warmed_up_file_backed_rss_mb|.0f",
                         "threads|warmed_up_threads|.0f", "step peak|step_peak_rss_mb|.0f")
_PROFILE = _TIMING[:3] + ("wall|wall|.1f",) + tuple(f"{c}|{c}|.1f" for c in profile.CATEGORIES)


def _display(row):
  """A row with the cells its tables show beside its own figures."""
  profiled, state = row.get("profile_ms_per_step") or {}, row.get("state_bytes_per_replica")
  return dict(row, **profiled.get("categories", {}), wall=profiled.get("wall"), group=_group(row),
              state_mb_per_replica=state and state / 2**20)


def format_tables(results):
  rows = [_display(row) for result in results for row in result["rows"]]
  probed = [row for row in rows if row.get("peak_rss_mb") is not None]
  out = [harness.format_rows(rows, _TIMING, 3)]
  if probed:
    out += [
        "\nMemory of each variant alone in a process, MB: before the model was built, the "
        "peak while building and compiling,\nafter the warm-up, in use once glibc returned "
        "freed heap, its file-backed part (libraries), threads, the steps' own peak:",
        harness.format_rows(probed, _MEMORY, 3),
        "\nWhere a step's time goes, ms per step by kind of kernel (profiled in the same "
        "processes; two threads' kernels can add up to more than the wall time):",
        harness.format_rows(probed, _PROFILE, 3)
    ]
  for row in rows:
    if not row["supported"] or row.get("probe_error"):
      out.append(f"{'unsupported' if not row['supported'] else 'probe failed'}: {row['group']}/"
                 f"{row['model']}/{row['variant']}: {row['error'] or row['probe_error']}")
  return "\n".join(out)


def run(config):
  """The groups in child processes by device count, then the probes; prints the tables and
  returns the report."""
  info = machine.machine_info()
  machine.print_head("step", info)
  results = []
  for devices, groups in processes(config):
    try:
      results += child.call("tools.bench.step:run_groups", config, groups, logical_cpus=devices)
    except child.ChildFailed as error:  # reported; its checks are not met, the rest is kept
      results += [
          dict(strategy=group.strategy, replicas=group.replicas, model=model, rows=[],
               error=f"its process failed: {error}") for group in groups for model in config.models
      ]
  weights = {}
  for result in results:
    if "initial_weights_abs_sum" in result:
      weights.setdefault(result["model"], set()).add(round(result["initial_weights_abs_sum"], 3))
  if config.probes:
    run_probes(config, results)
  checks = compute_checks(results)
  print()
  for r in results:
    if r.get("error"):
      print(f"{_group(r)}/{r['model']}: FAILED, {r['error']}")
      continue
    plans = sorted({row["plan"] for row in r["rows"] if row.get("plan")})
    print(f"{_group(r)}/{r['model']}: {r['params']:,} parameters, batch {r['batch_size']} "
          f"({r['per_replica_batch']} per replica), {r['warmup_rounds']} untimed + {r['rounds']} "
          f"timed round(s) x {r['steps']} steps; adam_xla plan {', '.join(plans) or '-'}")
  print("\n" + format_tables(results))
  print("Ratios are of median steps/s; best keras: the fastest Keras variant of the group and "
        "model. fit overhead: the call's time outside\n  its steps (median), left out of its "
        "steps/s and counted in the checks' value_whole_fit_calls. update ms/step: the\n  "
        "optimizer update's kernels in the probe's profile. other load: the largest share of "
        "the CPUs other processes used.")
  print("\n" + harness.format_checks(checks))
  loads = {
      f"{_group(row)}/{row['model']}/{row['variant']}": row.get("max_other_load") for r in results
      for row in r["rows"]
  }
  print(harness.noisy_warning(loads))
  same_weights = all(len(sums) == 1 for sums in weights.values())
  if not same_weights:
    print(f"WARNING: the groups' models started from different weights ({weights}); compare "
          "ratios within a group only.")
  return dict(suite="step", machine=info, config=dataclasses.asdict(config),
              learning_rate=LEARNING_RATE, prefetch=PREFETCH,
              same_initial_weights_across_strategies=same_weights, results=results, checks=checks)
