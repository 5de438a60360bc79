"""Times adam_xla's sparse modes beside Keras 3 Adam on a DLRM with one large embedding table.

    ./bazelw run //tools:benchmark_embedding -- [--rows=1000000,4000000] [--rounds=5] [--quick]

The figures of the issue's targets, measured in one process:

  * ms/step of a full train step (forward, backward, Adam) of a DLRM whose one categorical
    feature has a table of --rows rows x --embedding_dim (13 dense features, small bottom and
    top MLPs), at a fixed batch of --batch_size examples = --batch_size ids per step:
      adam_xla dense       adam_xla.make_train_step, adam_xla.Adam(sparse_mode="dense")
      adam_xla lazy        the same with sparse_mode="lazy"
      keras adam jit       keras.optimizers.Adam in a custom train step (GradientTape, then
                           optimizer.apply_gradients) compiled with tf.function(jit_compile=True)
      keras adam no-jit    the same step with jit_compile=False
    ("keras best" is the faster Keras variant.) A custom step rather than model.fit: it reads
    the same iterator, one call per step, as the adam_xla step does, computes the same loss
    (mean sigmoid cross-entropy) and carries none of fit's per-call overhead, so the comparison
    is of the optimizers rather than of the loops.
  * the Adam update of the table alone, one XLA program per step, given a fixed IndexedSlices
    gradient of --batch_size rows (the table's gradient of the first batch):
      optimizer dense      jit-compiled adam_xla.Adam(sparse_mode="dense").apply_gradients:
                           the "optimizer part" of dense mode. The dense-gradient Adam it
                           equals reads the variable, both moments and the gradient and writes
                           the variable and both moments: 28 bytes per float32 parameter, so
                           its effective bandwidth is 28 B x rows x dim / time, set against
                           the machine's. (On CPU adam_xla's rows kernel does it in one pass
                           that reads no table-sized gradient: 24 B per parameter plus the
                           batch's rows; the compiled update's passes are listed.)
      optimizer lazy       the same with sparse_mode="lazy" (only the batch's rows).
  * the machine's read+write memory bandwidth: tools/stream_probe.py, native code on every
    core streaming four float32 arrays as Adam does (p, g, m, v read; p, m, v written in
    place) over --bandwidth_mb in all, 28 bytes moved per element. From it, the Adam floor for
    the table: 28 B x rows x dim / bandwidth.

All variants start from the same weights (each model is built from the same seed; checked),
read the same synthetic in-memory batches and use the same hyperparameters (learning rate
1e-3, default betas and epsilon). Each is warmed up untimed (its first call traces and
compiles; then --warmup_rounds rounds of all variants) and then timed in --rounds interleaved
rounds, every variant once per round in an order rotated from round to round, so that noise
from other processes hits all of them alike; the bandwidth probe is one of the variants, so
the bandwidth the dense update is held against is measured under the same conditions. The
tables give medians over the rounds and the range. Table sizes are benchmarked one at a time
and freed before the next (4M x 16 floats is 256 MB per copy, and each variant holds the table
and two moments). The one comparison across sizes, the growth of the lazy step, gets its own
phase at the end: the lazy steps of every size, kept from their phases (they are small enough
to be alive together), in the same interleaved rounds, the growth taken round by round.

Ids: by default Zipf-distributed (exponent --zipf_exponent, 1.1 as in the project's generated
click log) over the table, with a fixed random permutation from rank to row so that frequent
ids are spread over the table rather than packed into its first cache lines. That is the shape
of real CTR ids (a few very frequent ids, a long tail), and it gives each batch many repeated
ids, which the sparse path must sum (sparse.sum_duplicates) before updating rows. --ids=uniform
is the adversarial case for the lazy path: nearly every id distinct, spread over the whole
table, so every touched row is a cache miss.

Where dense mode falls short of half the bandwidth, the tool says why: it lists the passes of
the compiled dense update over table-sized arrays (from the optimized HLO, with the bytes each
moves per parameter), and with --kernel_profile times each of those kernels under the
TensorFlow profiler, giving each one's own effective bandwidth.
"""

import gc
import json
import math
import os
import re
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

import adam_xla
from tools import stream_probe
from tools import cpu_load
from tools import process_memory
from tools import run_info
from tools import text_table
from tools import step_profile
from trainers.ctr import config as ctr_config
from trainers.ctr import models
from trainers.ctr.criteo_format import NUM_DENSE

_LEARNING_RATE = 1e-3
_PREFETCH = 2  # batches; a fixed buffer (not AUTOTUNE) so every variant gets the same one
_ADAM_BYTES_PER_PARAM = 28  # read var, m, v, grad; write var, m, v (float32)
_CLICK_RATE = 0.25
# Targets of the issue.
_LAZY_GROWTH_LIMIT = 1.3
_KERAS_OVER_LAZY_MIN = 10.0
_BANDWIDTH_FRACTION_MIN = 0.5
_QUICK = {"rows": [20000, 80000], "batch_size": 256, "rounds": 1, "warmup_rounds": 1,
          "steps": 5, "optimizer_steps": 5, "bandwidth_mb": 64, "bandwidth_repeats": 3,
          "data_batches": 8, "profile_calls": 1, "lazy_growth_steps": 5}

_ROWS = flags.DEFINE_list("rows", ["1000000", "4000000"],
                          "Table sizes (rows) to benchmark, one after the other.")
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", 16, "Width of the table.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4096, "Examples (= ids) per step.")
_BOTTOM_MLP = flags.DEFINE_list("bottom_mlp", ["64", "32"],
                                "Bottom MLP widths (then one layer of the embedding width).")
_TOP_MLP = flags.DEFINE_list("top_mlp", ["128", "64"], "Top MLP widths (then 1 logit).")
_IDS = flags.DEFINE_enum("ids", "zipf", ["zipf", "uniform"],
                         "Distribution of the ids over the table (see the module docstring).")
_ZIPF_EXPONENT = flags.DEFINE_float("zipf_exponent", 1.1, "Exponent of the Zipf law of ids.")
_DATA_BATCHES = flags.DEFINE_integer(
    "data_batches", 64, "Distinct batches of synthetic data (repeated). Enough that the rows "
    "they touch do not all stay in the caches from one pass to the next.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed interleaved rounds (every variant once).")
_WARMUP_ROUNDS = flags.DEFINE_integer(
    "warmup_rounds", 1, "Untimed rounds of every variant after the first (compiling) calls.")
_STEPS = flags.DEFINE_integer("steps", 20, "Train steps per round per full-step variant.")
_LAZY_GROWTH_STEPS = flags.DEFINE_integer(
    "lazy_growth_steps", 100, "Steps per round of each lazy step in the cross-size phase, "
    "where the lazy step of every table size is timed in the same interleaved rounds.")
_OPTIMIZER_STEPS = flags.DEFINE_integer(
    "optimizer_steps", 20, "Updates per round per optimizer-only variant.")
_BANDWIDTH_MB = flags.DEFINE_integer(
    "bandwidth_mb", 512, "Size of the bandwidth probe's four arrays in all (MB); keep it far "
    "above the last-level cache.")
_BANDWIDTH_REPEATS = flags.DEFINE_integer(
    "bandwidth_repeats", 10, "Passes of the bandwidth probe per round.")
_KERNEL_PROFILE = flags.DEFINE_bool(
    "kernel_profile", True, "Time each kernel of the compiled dense update under the "
    "TensorFlow profiler (after the timed rounds; not part of the timings).")
_PROFILE_CALLS = flags.DEFINE_integer("profile_calls", 5, "Dense updates run under the profiler.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the data and the initial weights.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write raw timings, medians, machine info "
                                "and the checks as JSON here.")
_XLA_CPU_MAX_ISA = flags.DEFINE_enum(
    "xla_cpu_max_isa", ctr_config.EmbeddingConfig.xla_cpu_max_isa, ctr_config.XLA_CPU_ISAS,
    "XLA:CPU's highest instruction set, as //trainers:embedding sets it (same default; '' = "
    "XLA's own choice, AVX-512 where the CPU has it). Applies to every variant alike; a value "
    "already in XLA_FLAGS wins.")
_QUICK_FLAG = flags.DEFINE_bool(
    "quick", False, f"Smoke test: tiny tables and few steps ({_QUICK}); flags given "
    "explicitly win.")


def _setting(name):
  """A flag's value, or its --quick value when --quick is set and the flag was not given."""
  flag = flags.FLAGS[name]
  if _QUICK_FLAG.value and not flag.present and name in _QUICK:
    return _QUICK[name]
  return flag.value


# ---- Data and models ---------------------------------------------------------------------

def make_data(rows, batch_size, batches, ids_kind, zipf_exponent, seed):
  """Synthetic examples: normal dense features, ids over the table, labels at 25% clicks."""
  rng = np.random.default_rng(seed)
  n = batch_size * batches
  dense = rng.standard_normal((n, NUM_DENSE), dtype=np.float32)
  if ids_kind == "zipf":
    weights = 1.0 / np.arange(1, rows + 1, dtype=np.float64) ** zipf_exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), rows - 1)
    ids = rng.permutation(rows)[ranks]
  else:
    ids = rng.integers(0, rows, n)
  labels = (rng.random(n) < _CLICK_RATE).astype(np.float32)
  return {"dense": dense, "sparse": ids.astype(np.int64)[:, None]}, labels


def make_dataset(features, labels, batch_size):
  dataset = (tf.data.Dataset.from_tensor_slices((features, labels)).repeat()
             .batch(batch_size, drop_remainder=True).prefetch(_PREFETCH))
  options = tf.data.Options()
  # No autotuning: its model thread is noise, and nothing here is AUTOTUNE (see
  # tools/benchmark_step.py for the stall it adds when iterators are destroyed).
  options.autotune.enabled = False
  return dataset.with_options(options)


def build_model(rows, seed):
  keras.utils.set_random_seed(seed)
  return models.build_dlrm([rows], _EMBEDDING_DIM.value,
                           bottom_mlp=[int(w) for w in _BOTTOM_MLP.value],
                           top_mlp=[int(w) for w in _TOP_MLP.value], num_dense=NUM_DENSE)


def weights_checksum(model):
  return float(sum(np.sum(np.abs(v.numpy().astype(np.float64)))
                   for v in model.trainable_variables))


def first_batch_table_gradient(rows, features, labels, batch_size, seed):
  """The table's gradient (IndexedSlices of batch_size rows) for the first batch, as constants."""
  model = build_model(rows, seed)
  batch = {k: tf.constant(v[:batch_size]) for k, v in features.items()}
  table = model.embedding.tables[0]
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(models.sigmoid_cross_entropy(labels[:batch_size],
                                                       model(batch, training=True)))
  grad = tape.gradient(loss, table)
  if not isinstance(grad, tf.IndexedSlices):
    raise RuntimeError(f"the table's gradient is a {type(grad).__name__}, not IndexedSlices")
  initial = table.numpy()
  del model, table, tape
  return (tf.IndexedSlices(tf.constant(grad.values.numpy()),
                           tf.constant(grad.indices.numpy()),
                           tf.constant(grad.dense_shape.numpy())), initial)


# ---- Variants ----------------------------------------------------------------------------
# Each has name, kind ("step", "optimizer" or "probe"), steps (per round) and run(steps),
# which returns a loss (or None) after the work has finished.

class AdamXlaStep:
  kind = "step"

  def __init__(self, name, model, dataset, sparse_mode, steps):
    self.name, self.model, self.steps = name, model, steps
    self.optimizer = adam_xla.Adam(learning_rate=_LEARNING_RATE, sparse_mode=sparse_mode)
    self._step = adam_xla.make_train_step(model, models.sigmoid_cross_entropy, self.optimizer,
                                          steps_per_loop=1)
    self._iterator = iter(self._step.distribute(dataset))

  def run(self, steps):
    losses = [self._step(self._iterator)["loss"] for _ in range(steps)]
    return float(np.mean([float(loss) for loss in losses]))


class KerasStep:
  """keras.optimizers.Adam in a custom step: GradientTape + apply_gradients."""

  kind = "step"

  def __init__(self, name, model, dataset, jit_compile, steps):
    self.name, self.model, self.steps = name, model, steps
    self.optimizer = keras.optimizers.Adam(learning_rate=_LEARNING_RATE)
    self.optimizer.build(model.trainable_variables)
    variables = model.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def train(batch):
      features, labels = batch
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(models.sigmoid_cross_entropy(labels, model(features,
                                                                          training=True)))
      grads = tape.gradient(loss, variables)
      self.optimizer.apply_gradients(zip(grads, variables))
      return loss

    # Like adam_xla's step: the next batch is taken inside a tf.function, then the step runs.
    self._loop = tf.function(lambda iterator: train(next(iterator)))
    self._iterator = iter(dataset)

  def run(self, steps):
    losses = [self._loop(self._iterator) for _ in range(steps)]
    return float(np.mean([float(loss) for loss in losses]))


class OptimizerOnly:
  """One jit-compiled adam_xla apply_gradients of a fixed IndexedSlices gradient to a table."""

  kind = "optimizer"

  def __init__(self, name, initial_table, grad, sparse_mode, steps):
    self.name, self.steps, self.sparse_mode = name, steps, sparse_mode
    self.table = tf.Variable(initial_table, name="table")
    self.optimizer = adam_xla.Adam(learning_rate=_LEARNING_RATE, sparse_mode=sparse_mode)
    self.optimizer.build([self.table])
    self.update = tf.function(lambda: self.optimizer.apply_gradients([(grad, self.table)]),
                              jit_compile=True)

  def run(self, steps):
    for _ in range(steps):
      iterations = self.update()
    iterations.numpy()
    return None

  def optimized_hlo(self):
    return self.update.experimental_get_compiler_ir()(stage="optimized_hlo")


class BandwidthProbe(stream_probe.StreamProbe):
  """The bandwidth probe (tools/stream_probe.py) as one of the timed variants."""

  kind = "probe"

  def __init__(self, megabytes, repeats):
    super().__init__(megabytes)
    self.name, self.steps = "memory bandwidth probe", repeats


# ---- Timing ------------------------------------------------------------------------------

def time_variants(label, variants, rounds, warmup_rounds):
  """Warm-up rounds, then interleaved timed rounds; returns {name: [per-round records]}."""
  for r in range(warmup_rounds):
    logging.info("[%s] untimed warm-up round %d/%d ...", label, r + 1, warmup_rounds)
    for variant in variants:
      variant.run(variant.steps)
  meter = cpu_load.CpuMeter()
  records = {v.name: [] for v in variants}
  for r in range(rounds):
    shift = r % len(variants)
    for variant in variants[shift:] + variants[:shift]:
      started = meter.start()
      loss = variant.run(variant.steps)
      wall, cores, other = meter.stop(started)
      records[variant.name].append({"seconds": wall, "steps": variant.steps,
                                    "ms_per_step": 1000 * wall / variant.steps,
                                    "cores": cores, "other_load": other, "loss": loss})
      logging.info("[%s] round %d/%d  %-20s %4d steps in %6.2f s = %8.3f ms/step (%s "
                   "cores; other processes %s)", label, r + 1, rounds, variant.name,
                   variant.steps, wall, 1000 * wall / variant.steps, _cores(cores),
                   cpu_load.format_share(other))
  return records


def summarize(records):
  ms = [r["ms_per_step"] for r in records]
  loads = [r["other_load"] for r in records if r["other_load"] is not None]
  cores = [r["cores"] for r in records if r["cores"] is not None]
  return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
          "median_cores": statistics.median(cores) if cores else None,
          "max_other_load": max(loads) if loads else None, "rounds": records}


# ---- Profiling the dense update ----------------------------------------------------------

_HLO_COMPUTATION = re.compile(r"^(ENTRY\s+)?%(\S+) .*\{\s*$")
_HLO_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%(\S+) = (\([^)]*\)|[^\s(]\S*) ([a-z][\w-]*)\(([^)]*)\)(.*)$")
_HLO_ARRAY = re.compile(r"^(\w+)\[([\d,]*)\]")
_DTYPE_BYTES = {"f32": 4, "f64": 8, "s32": 4, "s64": 8, "bf16": 2, "f16": 2, "pred": 1,
                "u32": 4, "u8": 1, "s8": 1}
_IN_PLACE = ("scatter", "dynamic-update-slice")
_NOT_KERNELS = ("parameter", "constant", "bitcast", "tuple", "get-tuple-element")


def _tuple_elements(shape):
  """The array shapes of an HLO shape: its elements if a tuple, else itself."""
  if shape.startswith("("):
    return [part.strip() for part in shape[1:-1].split(",") if "[" in part]
  return [shape]


def _array(shape):
  """(dtype, element count) of an HLO array shape, or None for tuples and tokens."""
  match = _HLO_ARRAY.match(shape)
  if not match:
    return None
  dims = [int(d) for d in match.group(2).split(",") if d]
  return match.group(1), math.prod(dims)


def table_passes(hlo_text, table_elements):
  """The entry computation's instructions that touch table-sized arrays, with their traffic.

  Each kernel that reads or writes a whole table-sized array is one pass over it; bytes are
  counted once per table-sized operand read and once per table-sized result written (a tuple
  result, such as adam_xla's CPU kernel's param, m and v, counts each table-sized element). A
  scatter (or a fusion rooted in one) updates its operand in place and touches only the
  scattered rows, so it counts no full-table bytes.
  """
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = _HLO_COMPUTATION.match(line)
    if header:
      current = header.group(2)
      computations[current] = {"shapes": {}, "order": [], "root": None}
      if header.group(1):
        entry = current
      continue
    match = _HLO_INSTRUCTION.match(line)
    if not match or current is None:
      continue
    name, shape, opcode, operands, attributes = match.groups()
    computation = computations[current]
    computation["shapes"][name] = shape
    computation["order"].append((name, shape, opcode, operands, attributes))
    if line.lstrip().startswith("ROOT"):
      computation["root"] = opcode
  if entry is None:
    return []
  shapes = computations[entry]["shapes"]

  def is_table(shape):
    array = _array(shape) if shape else None
    return array is not None and array[1] == table_elements

  passes = []
  for name, shape, opcode, operands, attributes in computations[entry]["order"]:
    if opcode in _NOT_KERNELS:
      continue
    operand_shapes = [shapes.get(op.strip().lstrip("%")) for op in operands.split(",")
                      if op.strip().startswith("%")]
    reads = [s for s in operand_shapes if is_table(s)]
    writes = [s for s in _tuple_elements(shape) if is_table(s)]
    if not reads and not writes:
      continue
    called = re.search(r"calls=%([^\s,]+)", attributes)
    root = computations.get(called.group(1), {}).get("root") if called else None
    in_place = opcode in _IN_PLACE or root in _IN_PLACE
    size = lambda s: _DTYPE_BYTES.get(_array(s)[0], 4)
    bytes_read = 0 if in_place else sum(size(s) for s in reads)
    bytes_written = 0 if in_place else sum(size(s) for s in writes)
    passes.append({"kernel": name, "opcode": opcode, "root": root or opcode,
                   "table_sized_reads": len(reads), "table_sized_writes": len(writes),
                   "in_place_rows_only": in_place, "bytes_per_param": bytes_read + bytes_written})
  return passes


def profile_kernels(fn, calls, names):
  """ms per call of each named XLA kernel while `fn` runs `calls` times (None if unavailable)."""
  try:
    wall_ms, times = step_profile.event_times(fn, calls)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("kernel profile failed: %s", e)
    return None
  return {"wall_ms_per_call": wall_ms,
          "kernel_ms_per_call": {name: times.get(name, 0.0) for name in names}}


def analyze_dense_update(variant, table_elements, probe_gbps):
  """Passes of the dense update over the table, each with its measured time if profiled."""
  passes = table_passes(variant.optimized_hlo(), table_elements)
  profile = None
  if _KERNEL_PROFILE.value and passes:
    profile = profile_kernels(variant.update, _setting("profile_calls"),
                              [p["kernel"] for p in passes])
  for p in passes:
    ms = profile["kernel_ms_per_call"].get(p["kernel"]) if profile else None
    p["ms"] = ms
    p["gbps"] = (p["bytes_per_param"] * table_elements / (ms * 1e6)
                 if ms and p["bytes_per_param"] else None)
    p["fraction_of_bandwidth"] = p["gbps"] / probe_gbps if p["gbps"] and probe_gbps else None
  return {"passes": passes,
          "modeled_bytes_per_param": sum(p["bytes_per_param"] for p in passes),
          "profile_wall_ms_per_call": profile["wall_ms_per_call"] if profile else None}


# ---- One table size ----------------------------------------------------------------------

def benchmark_size(rows, seed):
  batch_size = _setting("batch_size")
  dim = _EMBEDDING_DIM.value
  label = f"{rows:,} rows"
  logging.info("[%s] generating data ...", label)
  features, labels = make_data(rows, batch_size, _setting("data_batches"), _IDS.value,
                               _ZIPF_EXPONENT.value, seed)
  batches = features["sparse"].reshape(-1, batch_size)
  unique_per_batch = float(np.mean([len(np.unique(b)) for b in batches]))
  dataset = make_dataset(features, labels, batch_size)
  grad, initial_table = first_batch_table_gradient(rows, features, labels, batch_size, seed)

  steps, optimizer_steps = _setting("steps"), _setting("optimizer_steps")
  constructors = [
      ("adam_xla dense", lambda n: AdamXlaStep(n, build_model(rows, seed), dataset, "dense",
                                               steps)),
      ("adam_xla lazy", lambda n: AdamXlaStep(n, build_model(rows, seed), dataset, "lazy",
                                              steps)),
      ("keras adam jit", lambda n: KerasStep(n, build_model(rows, seed), dataset, True, steps)),
      ("keras adam no-jit", lambda n: KerasStep(n, build_model(rows, seed), dataset, False,
                                                steps)),
      ("optimizer dense", lambda n: OptimizerOnly(n, initial_table, grad, "dense",
                                                  optimizer_steps)),
      ("optimizer lazy", lambda n: OptimizerOnly(n, initial_table, grad, "lazy",
                                                 optimizer_steps)),
      ("memory bandwidth probe", lambda n: BandwidthProbe(_setting("bandwidth_mb"),
                                                          _setting("bandwidth_repeats"))),
  ]
  variants, setup = [], {}
  for name, construct in constructors:
    logging.info("[%s] %s: building and compiling ...", label, name)
    start = time.perf_counter()
    variant = construct(name)
    checksum = weights_checksum(variant.model) if variant.kind == "step" else None
    loss = variant.run(1)
    seconds = time.perf_counter() - start
    setup[name] = {"first_call_seconds": seconds, "initial_weights_abs_sum": checksum,
                   "first_step_loss": loss}
    logging.info("[%s] %s: ready in %.1f s (first-step loss %s)", label, name, seconds, loss)
    variants.append(variant)
  step_setups = [s for s in setup.values() if s["initial_weights_abs_sum"] is not None]
  if len({round(s["initial_weights_abs_sum"], 3) for s in step_setups}) != 1:
    raise RuntimeError(f"[{label}] variants do not start from the same weights: {setup}")
  if np.ptp([s["first_step_loss"] for s in step_setups]) > 1e-4:
    raise RuntimeError(f"[{label}] first-step losses differ: {setup}")

  records = time_variants(label, variants, _setting("rounds"), _setting("warmup_rounds"))
  results = {name: {**summarize(recs), **setup[name]} for name, recs in records.items()}
  probe = next(v for v in variants if v.kind == "probe")
  probe_result = results[probe.name]
  probe_gbps = probe.bytes_per_pass / (probe_result["median_ms"] * 1e6)
  probe_result["gbps"] = probe_gbps
  probe_result["gbps_per_round"] = [probe.bytes_per_pass / (r["ms_per_step"] * 1e6)
                                    for r in probe_result["rounds"]]
  probe_result["megabytes"] = _setting("bandwidth_mb")
  params = rows * dim
  for name in ("optimizer dense", "optimizer lazy"):
    result = results[name]
    result["gbps_at_28_bytes"] = _ADAM_BYTES_PER_PARAM * params / (result["median_ms"] * 1e6)
    result["fraction_of_bandwidth"] = result["gbps_at_28_bytes"] / probe_gbps
    result["fraction_of_bandwidth_per_round"] = [
        (_ADAM_BYTES_PER_PARAM * params / (r["ms_per_step"] * 1e6)) / bw
        for r, bw in zip(result["rounds"], probe_result["gbps_per_round"])]
  keras_best = min(("keras adam jit", "keras adam no-jit"),
                   key=lambda n: results[n]["median_ms"])
  kinds = {v.name: v.kind for v in variants}
  for name, result in results.items():
    if kinds[name] == "step":
      result["keras_best_over_this"] = results[keras_best]["median_ms"] / result["median_ms"]

  logging.info("[%s] analyzing the compiled dense update ...", label)
  dense_update = next(v for v in variants if v.name == "optimizer dense")
  analysis = analyze_dense_update(dense_update, params, probe_gbps)
  model_params = variants[0].model.count_params()
  # The lazy step stays alive (already compiled) for the cross-size phase; the rest is freed.
  lazy = next(v for v in variants if v.name == "adam_xla lazy")
  del variants, dense_update, probe, grad, initial_table, dataset
  gc.collect()
  return lazy, {"rows": rows, "embedding_dim": dim, "table_params": params,
          "model_params": model_params, "batch_size": batch_size,
          "unique_ids_per_batch": unique_per_batch, "bandwidth_gbps": probe_gbps,
          "adam_floor_ms": _ADAM_BYTES_PER_PARAM * params / (probe_gbps * 1e6),
          "keras_best": keras_best, "variants": results, "dense_update_analysis": analysis,
          "rss_mb_after": process_memory.current_rss_mb(),
          "peak_rss_mb": process_memory.peak_rss_mb()}


def benchmark_lazy_growth(lazy_by_rows):
  """The lazy step of every table size, side by side: the growth check compares these.

  The per-size phases run one after the other, so machine noise can differ between them; here
  the lazy steps of all sizes (kept from those phases, already compiled; small enough to be
  alive together) share interleaved rounds, and the growth is taken round by round (paired).
  """
  variants = []
  for rows, variant in sorted(lazy_by_rows.items()):
    variant.name, variant.steps = f"adam_xla lazy {rows:,}", _setting("lazy_growth_steps")
    variants.append(variant)
  records = time_variants("lazy growth", variants, _setting("rounds"), _setting("warmup_rounds"))
  results = []
  base = records[variants[0].name]
  for rows, variant in zip(sorted(lazy_by_rows), variants):
    result = {"rows": rows, **summarize(records[variant.name])}
    result["ratio_to_smallest"] = result["median_ms"] / statistics.median(
        r["ms_per_step"] for r in base)
    result["paired_ratios_to_smallest"] = [
        r["ms_per_step"] / b["ms_per_step"] for r, b in zip(records[variant.name], base)]
    results.append(result)
  return results


# ---- Checks and reporting ----------------------------------------------------------------

def compute_checks(sizes, lazy_growth):
  checks = []
  by_rows = sorted(sizes, key=lambda s: s["rows"])
  large = by_rows[-1]
  if lazy_growth and len(lazy_growth) > 1:
    small_growth, large_growth = lazy_growth[0], lazy_growth[-1]
    # The median of the per-round ratios: each round times both sizes back to back.
    growth = statistics.median(large_growth["paired_ratios_to_smallest"])
    checks.append({"name": f"lazy step growth {small_growth['rows']:,} -> "
                           f"{large_growth['rows']:,} rows (paired rounds)",
                   "value": growth, "target": f"<= {_LAZY_GROWTH_LIMIT}x",
                   "passed": growth <= _LAZY_GROWTH_LIMIT, "unit": "x"})
  ratio = large["variants"]["adam_xla lazy"]["keras_best_over_this"]
  checks.append({"name": f"keras best ({large['keras_best']}) / lazy at {large['rows']:,} rows",
                 "value": ratio, "target": f">= {_KERAS_OVER_LAZY_MIN:g}x",
                 "passed": ratio >= _KERAS_OVER_LAZY_MIN, "unit": "x"})
  for size in by_rows:
    fraction = size["variants"]["optimizer dense"]["fraction_of_bandwidth"]
    checks.append({"name": f"dense optimizer bandwidth / measured bandwidth at "
                           f"{size['rows']:,} rows",
                   "value": fraction, "target": f">= {_BANDWIDTH_FRACTION_MIN}",
                   "passed": fraction >= _BANDWIDTH_FRACTION_MIN, "unit": ""})
  return checks


def _cores(value):
  return "?" if value is None else f"{value:.1f}"


def _growth_table(lazy_growth):
  lines = []
  for g in lazy_growth:
    paired = g["paired_ratios_to_smallest"]
    lines.append((f"{g['rows']:,}", f"{g['median_ms']:.2f}", f"{g['min_ms']:.2f}",
                  f"{g['max_ms']:.2f}", f"{statistics.median(paired):.2f}x",
                  f"{min(paired):.2f}-{max(paired):.2f}", _cores(g["median_cores"]),
                  cpu_load.format_share(g["max_other_load"])))
  return [f"Lazy step of every table size in the same interleaved rounds "
          f"({_setting('lazy_growth_steps')} steps per round each), ms/step; growth = median "
          "of the per-round ratios:",
          text_table.table(("rows", "median ms", "min", "max", "growth", "per-round range",
                            "cores", "other load"), lines, left=1), ""]


def format_report(sizes, checks, lazy_growth=()):
  step_lines, update_lines = [], []
  for size in sizes:
    rows = f"{size['rows']:,}"
    for name, r in size["variants"].items():
      if "keras_best_over_this" in r:
        step_lines.append((rows, name, f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}",
                           f"{r['max_ms']:.2f}", f"{r['keras_best_over_this']:.2f}x",
                           _cores(r["median_cores"]), cpu_load.format_share(r["max_other_load"]),
                           f"{r['first_call_seconds']:.1f}"))
    for name in ("optimizer dense", "optimizer lazy"):
      r = size["variants"][name]
      # The lazy update touches only the batch's rows: a table-wide rate means nothing there.
      dense = name == "optimizer dense"
      update_lines.append((rows, name, f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}",
                           f"{r['max_ms']:.2f}", f"{r['gbps_at_28_bytes']:.1f}" if dense else "-",
                           f"{r['fraction_of_bandwidth']:.2f}" if dense else "-",
                           _cores(r["median_cores"]), cpu_load.format_share(r["max_other_load"])))
    p = size["variants"]["memory bandwidth probe"]
    update_lines.append((rows, f"bandwidth probe {p['megabytes']} MB", f"{p['median_ms']:.2f}",
                         f"{p['min_ms']:.2f}", f"{p['max_ms']:.2f}", f"{p['gbps']:.1f}", "1.00",
                         _cores(p["median_cores"]), cpu_load.format_share(p["max_other_load"])))
    update_lines.append((rows, "Adam floor (28 B/param)", f"{size['adam_floor_ms']:.2f}", "",
                         "", f"{size['bandwidth_gbps']:.1f}", "1.00", "", ""))
  out = ["Full train step (forward, backward, Adam), ms/step:",
         text_table.table(("rows", "variant", "median ms", "min", "max", "keras best/this",
                           "cores", "other load", "1st call s"), step_lines), "",
         "Adam update of the table alone (one XLA program, fixed gradient of the batch's rows) "
         "and memory bandwidth:",
         text_table.table(("rows", "variant", "median ms", "min", "max", "GB/s", "of BW",
                           "cores", "other load"), update_lines), "",
         *(_growth_table(lazy_growth) if lazy_growth else []),
         "Checks (the issue's targets):",
         text_table.table(("check", "figure", "target", "result"),
                          [(c["name"], f"{c['value']:.2f}{c['unit']}", c["target"],
                            "PASS" if c["passed"] else "FAIL") for c in checks], left=1)]
  for size in sizes:
    analysis = size["dense_update_analysis"]
    passes = analysis["passes"]
    if not passes:
      continue
    out += ["", f"Compiled dense update at {size['rows']:,} rows: {len(passes)} kernels touch "
            f"table-sized arrays, {analysis['modeled_bytes_per_param']} B/param modeled "
            f"(minimum {_ADAM_BYTES_PER_PARAM})" +
            (f"; profiled call {analysis['profile_wall_ms_per_call']:.2f} ms:"
             if analysis["profile_wall_ms_per_call"] else ":")]
    lines = []
    for p in passes:
      traffic = "in place, batch rows only" if p["in_place_rows_only"] else " + ".join(
          ([f"{p['table_sized_reads']} read{'s' if p['table_sized_reads'] > 1 else ''}"]
           if p["table_sized_reads"] else []) +
          ([f"{p['table_sized_writes']} write{'s' if p['table_sized_writes'] > 1 else ''}"]
           if p["table_sized_writes"] else []))
      lines.append((p["kernel"], p["root"], traffic, p["bytes_per_param"],
                    "" if p["ms"] is None else f"{p['ms']:.2f}",
                    "" if p["gbps"] is None else f"{p['gbps']:.1f}",
                    "" if p["fraction_of_bandwidth"] is None else
                    f"{p['fraction_of_bandwidth']:.2f}"))
    out.append(text_table.table(("kernel", "root op", "table-sized traffic", "B/param", "ms",
                                 "GB/s", "of BW"), lines, left=3))
  return "\n".join(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run()


def run():
  """Runs the benchmark with the parsed flags; prints the report and returns the JSON dict."""
  ctr_config.apply_xla_cpu_isa(_XLA_CPU_MAX_ISA.value)  # before anything compiles
  try:
    rows_list = [int(r) for r in _setting("rows")]
  except ValueError as e:
    raise app.UsageError(f"--rows must be a comma list of integers: {e}") from e
  for name in ("batch_size", "rounds", "steps", "optimizer_steps", "bandwidth_mb",
               "bandwidth_repeats", "data_batches", "profile_calls", "lazy_growth_steps"):
    if _setting(name) < 1:
      raise app.UsageError(f"--{name} must be >= 1; got {_setting(name)}.")
  if _setting("warmup_rounds") < 0 or _EMBEDDING_DIM.value < 1:
    raise app.UsageError("--warmup_rounds must be >= 0 and --embedding_dim >= 1.")
  if not rows_list or min(rows_list) < 2 or len(set(rows_list)) < len(rows_list):
    raise app.UsageError(f"--rows must list distinct table sizes >= 2; got {rows_list}.")

  info = run_info.machine_info()
  print(f"command: {run_info.command_line()}")
  print(f"machine: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} "
        f"usable), last-level cache {info['last_level_cache']}, {info['memory_gib']} GiB; "
        f"Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}")
  env = info["environment"]
  print("environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) if env else
                           f"none of {', '.join(run_info.ENV_VARS)} set"), flush=True)
  batch_size = _setting("batch_size")
  print(f"model: DLRM, 1 table of --rows x {_EMBEDDING_DIM.value}, {NUM_DENSE} dense features, "
        f"bottom MLP {','.join(_BOTTOM_MLP.value)},{_EMBEDDING_DIM.value}, top MLP "
        f"{','.join(_TOP_MLP.value)},1; batch {batch_size} (= ids per step); ids "
        f"{_IDS.value}" + (f" (exponent {_ZIPF_EXPONENT.value}, ranks permuted over the table)"
                           if _IDS.value == "zipf" else "") +
        f"; Adam lr {_LEARNING_RATE}, default betas and epsilon", flush=True)

  start = time.perf_counter()
  sizes = []
  lazy_by_rows = {}
  for rows in rows_list:
    lazy_by_rows[rows], size = benchmark_size(rows, _SEED.value)
    sizes.append(size)
  lazy_growth = benchmark_lazy_growth(lazy_by_rows) if len(lazy_by_rows) > 1 else []
  del lazy_by_rows
  keras.backend.clear_session()
  gc.collect()
  checks = compute_checks(sizes, lazy_growth)
  wall = time.perf_counter() - start

  print()
  for size in sizes:
    print(f"{size['rows']:,} rows: table {size['table_params']:,} params "
          f"({size['table_params'] * 4 / 2**20:.0f} MB), model {size['model_params']:,} params; "
          f"{size['unique_ids_per_batch']:.0f} distinct ids per batch of {size['batch_size']} "
          f"on average; RSS after {size['rss_mb_after']:.0f} MB, peak {size['peak_rss_mb']:.0f} "
          "MB")
  print(f"{_setting('warmup_rounds')} untimed + {_setting('rounds')} timed interleaved round(s);"
        f" per round {_setting('steps')} steps per train-step variant, "
        f"{_setting('optimizer_steps')} updates per optimizer-only variant, "
        f"{_setting('bandwidth_repeats')} probe passes.")
  print()
  print(format_report(sizes, checks, lazy_growth))
  print()
  print("keras best/this: median ms/step of the faster Keras variant over this variant's "
        "(> 1: faster than Keras).\n"
        "GB/s: 28 B x table params / median time (the bytes Adam must move; not shown for the "
        "lazy update, which touches\n  only the batch's rows), for the probe 28 B x elements / "
        "time; of BW: that over the probe's median in the same\n  rounds. Adam floor: 28 B x "
        "table params / probe bandwidth. cores: CPU time / wall time of this process.\n"
        "other load: the largest share of the CPUs used by other processes during a timed run "
        "(from /proc/stat).")
  noisy = sorted({f"{s['rows']:,}/{name}" for s in sizes for name, r in s["variants"].items()
                  if r["max_other_load"] is not None and r["max_other_load"] > 0.1})
  if noisy:
    print(f"WARNING: other processes used more than 10% of the CPUs during timed runs of "
          f"{', '.join(noisy)}; the machine was not quiet, so the numbers are noisy.")
  print(f"wall time: {wall:.0f} s")
  config = {name: _setting(name) for name in _QUICK}
  config.update(embedding_dim=_EMBEDDING_DIM.value, ids=_IDS.value,
                zipf_exponent=_ZIPF_EXPONENT.value, bottom_mlp=_BOTTOM_MLP.value,
                top_mlp=_TOP_MLP.value, learning_rate=_LEARNING_RATE, seed=_SEED.value,
                quick=_QUICK_FLAG.value, prefetch=_PREFETCH)
  report = {"command": run_info.command_line(), "machine": info, "config": config,
            "wall_seconds": wall, "sizes": sizes, "lazy_growth": lazy_growth,
            "checks": checks}
  if _JSON_OUT.value:
    # `bazel run` starts the tool in its runfiles tree; a relative path means the user's.
    path = os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY", ""), _JSON_OUT.value)
    with open(path, "w") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {path}")
  return report


if __name__ == "__main__":
  app.run(main)
