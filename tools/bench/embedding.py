"""adam_xla's sparse modes beside Keras 3 Adam on a DLRM with one large embedding table.

For each table size (config.rows x embedding_dim; 13 dense features, small bottom and top
MLPs; a batch of batch_size ids per step), in one process:

  adam_xla dense, lazy       a full train step (make_train_step) with Adam(sparse_mode=...)
  keras adam jit, no-jit     keras.optimizers.Adam in a custom step (GradientTape, then
                             apply_gradients) reading the same iterator, one call per step:
                             the optimizers compared, not fit's loop
  optimizer dense, lazy      the table's update alone, one jit-compiled apply_gradients of a
                             fixed IndexedSlices gradient (the first batch's)
  memory bandwidth probe     stream_probe.cc's four-in three-out streams on every core

A dense-gradient Adam moves 28 bytes per parameter: the dense update's effective bandwidth is
28 B x rows x dim / time, held against the probe's in the same rounds. Where it falls short,
the compiled update's passes over table-sized arrays (optimized HLO, with the bytes each
moves) and each pass's time under the profiler say why. Sizes run one after the other, each
freed before the next; then the lazy steps of every size, kept, share rounds of their own, and
the lazy step's growth is taken round by round (paired).

Ids are Zipf-distributed (as the project's generated click log) and spread over the table by
a fixed permutation, so batches repeat ids as real CTR data does; "uniform" ids are the lazy
path's worst case, every row a cache miss.
"""

import dataclasses
import gc
import statistics

import keras
import numpy as np
import tensorflow as tf

import adam_xla
from tools.bench import harness
from tools.bench import hlo
from tools.bench import machine
from tools.bench import memory
from tools.bench import profile
from tools.bench import stream_probe
from trainers.ctr import config as ctr_config
from trainers.ctr import models
from trainers.ctr.criteo_format import NUM_DENSE

LEARNING_RATE = 1e-3
PREFETCH = 2
ADAM_BYTES_PER_PARAM = 28
PROBE = "memory bandwidth probe"
STEP_VARIANTS = ("adam_xla dense", "adam_xla lazy", "keras adam jit", "keras adam no-jit")
UPDATE_VARIANTS = ("optimizer dense", "optimizer lazy")
GROWTH = harness.Target("lazy step growth", "<=", 1.3)
KERAS_OVER_LAZY = harness.Target("keras best / lazy", ">=", 10.0)
BANDWIDTH_FRACTION = harness.Target("dense optimizer bandwidth / measured bandwidth", ">=", 0.5,
                                    unit="")
_CLICK_RATE = 0.25


def make_data(rows, batch_size, batches, ids, zipf_exponent, seed):
  """Normal dense features, ids over the table, labels at 25% clicks."""
  rng = np.random.default_rng(seed)
  n = batch_size * batches
  dense = rng.standard_normal((n, NUM_DENSE), dtype=np.float32)
  if ids == "zipf":
    cdf = np.cumsum(1.0 / np.arange(1, rows + 1, dtype=np.float64)**zipf_exponent)
    ranks = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), rows - 1)
    ids = rng.permutation(rows)[ranks]
  else:
    ids = rng.integers(0, rows, n)
  labels = (rng.random(n) < _CLICK_RATE).astype(np.float32)
  return {"dense": dense, "sparse": ids.astype(np.int64)[:, None]}, labels


def make_dataset(features, labels, batch_size):
  options = tf.data.Options()
  options.autotune.enabled = False  # see step.make_dataset
  return (tf.data.Dataset.from_tensor_slices((features, labels)).repeat().batch(
      batch_size, drop_remainder=True).prefetch(PREFETCH).with_options(options))


def build_model(config, rows):
  keras.utils.set_random_seed(config.seed)
  return models.build_dlrm([rows], config.embedding_dim, bottom_mlp=list(config.bottom_mlp),
                           top_mlp=list(config.top_mlp), num_dense=NUM_DENSE)


def weights_checksum(model):
  return float(sum(np.sum(np.abs(v.numpy().astype(np.float64))) for v in model.trainable_variables))


def first_batch_table_gradient(config, rows, features, labels):
  """The table's IndexedSlices gradient of the first batch, as constants; the initial table."""
  model = build_model(config, rows)
  n = config.batch_size
  table = model.embedding.tables[0]
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(
        models.sigmoid_cross_entropy(
            labels[:n], model({k: tf.constant(v[:n]) for k, v in features.items()}, training=True)))
  grad = tape.gradient(loss, table)
  if not isinstance(grad, tf.IndexedSlices):
    raise RuntimeError(f"the table's gradient is a {type(grad).__name__}, not IndexedSlices")
  return tf.IndexedSlices(*(tf.constant(t.numpy())
                            for t in (grad.values, grad.indices, grad.dense_shape))), table.numpy()


class AdamXlaStep:
  kind, steps_per_call = "step", 1

  def __init__(self, model, dataset, sparse_mode):
    self.model, self.initial_weights_abs_sum = model, weights_checksum(model)
    self._step = adam_xla.make_train_step(
        model, models.sigmoid_cross_entropy,
        adam_xla.Adam(learning_rate=LEARNING_RATE, sparse_mode=sparse_mode))
    self._iterator = iter(self._step.distribute(dataset))

  def run(self, calls):
    losses = [self._step(self._iterator)["loss"] for _ in range(calls)]
    return float(np.mean([float(loss) for loss in losses]))


class KerasStep(AdamXlaStep):
  """keras.optimizers.Adam: GradientTape + apply_gradients, the next batch taken inside a
  tf.function as adam_xla's step does."""

  def __init__(self, model, dataset, jit_compile):  # pylint: disable=super-init-not-called
    self.model, self.initial_weights_abs_sum = model, weights_checksum(model)
    optimizer = keras.optimizers.Adam(learning_rate=LEARNING_RATE)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def train(batch):
      features, labels = batch
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(models.sigmoid_cross_entropy(labels, model(features, training=True)))
      optimizer.apply_gradients(
          zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
      return {"loss": loss}

    self._step = tf.function(lambda iterator: train(next(iterator)))
    self._iterator = iter(dataset)


class OptimizerOnly:
  """One jit-compiled adam_xla apply_gradients of a fixed IndexedSlices gradient to a table."""

  kind, steps_per_call = "optimizer", 1

  def __init__(self, initial_table, grad, sparse_mode):
    self.table = tf.Variable(initial_table, name="table")
    self.optimizer = adam_xla.Adam(learning_rate=LEARNING_RATE, sparse_mode=sparse_mode)
    self.optimizer.build([self.table])
    self.update = tf.function(lambda: self.optimizer.apply_gradients([(grad, self.table)]),
                              jit_compile=True)

  def run(self, calls):
    for _ in range(calls):
      iterations = self.update()
    iterations.numpy()


def analyze_dense_update(config, variant, table_elements, probe_gbps):
  """The compiled dense update's passes over the table, each with its profiled time."""
  passes = hlo.table_passes(variant.update.experimental_get_compiler_ir()(stage="optimized_hlo"),
                            table_elements)
  wall_ms, times = None, {}
  if passes:
    wall_ms, times = profile.event_times(variant.update, config.profile_calls)
  for p in passes:
    p["ms"] = times.get(p["kernel"], 0.0)
    moved = p["bytes_per_param"] * table_elements
    p["gbps"] = moved / (p["ms"] * 1e6) if p["ms"] and moved else None
    p["fraction_of_bandwidth"] = p["gbps"] and p["gbps"] / probe_gbps
  modeled = sum(p["bytes_per_param"] for p in passes)
  return dict(passes=passes, modeled_bytes_per_param=modeled, profile_wall_ms_per_call=wall_ms)


def benchmark_size(config, rows):
  """One table size: build, time and analyse; (its lazy step, kept for the growth phase, and
  its report)."""
  label = f"{rows:,} rows"
  features, labels = make_data(rows, config.batch_size, config.data_batches, config.ids,
                               config.zipf_exponent, config.seed)
  unique = float(
      np.mean([len(np.unique(b)) for b in features["sparse"].reshape(-1, config.batch_size)]))
  dataset = make_dataset(features, labels, config.batch_size)
  grad, initial_table = first_batch_table_gradient(config, rows, features, labels)
  specs = {
      "adam_xla dense": lambda: AdamXlaStep(build_model(config, rows), dataset, "dense"),
      "adam_xla lazy": lambda: AdamXlaStep(build_model(config, rows), dataset, "lazy"),
      "keras adam jit": lambda: KerasStep(build_model(config, rows), dataset, True),
      "keras adam no-jit": lambda: KerasStep(build_model(config, rows), dataset, False),
      "optimizer dense": lambda: OptimizerOnly(initial_table, grad, "dense"),
      "optimizer lazy": lambda: OptimizerOnly(initial_table, grad, "lazy"),
      PROBE: lambda: stream_probe.ProbeVariant(config.bandwidth_mb)
  }
  chosen = [(name, specs[name], False) for name in config.variants or specs]
  variants, setup, _ = harness.build(label, chosen)
  steps = [n for n in STEP_VARIANTS if n in variants]
  if len({round(variants[n].initial_weights_abs_sum, 3) for n in steps}) > 1:
    raise RuntimeError(f"[{label}] the steps do not start from the same weights")
  if steps and np.ptp([setup[n]["first_call_loss"] for n in steps]) > 1e-4:
    raise RuntimeError(f"[{label}] first-step losses differ: {setup}")
  per_kind = {"step": config.steps, "optimizer": config.optimizer_steps}
  steps_per_round = {n: per_kind.get(v.kind) or v.passes_per_round for n, v in variants.items()}
  records = harness.time_rounds(label, variants, steps_per_round, config.rounds,
                                config.warmup_rounds)
  results = {}
  for name, variant in variants.items():
    results[name] = dict(harness.summarize(records[name]),
                         first_call_seconds=setup[name]["first_call_seconds"],
                         initial_weights_abs_sum=getattr(variant, "initial_weights_abs_sum", None),
                         first_step_loss=setup[name]["first_call_loss"])
  model_params = variants[steps[0]].model.count_params() if steps else None
  size = dict(rows=rows, embedding_dim=config.embedding_dim,
              table_params=rows * config.embedding_dim, model_params=model_params,
              batch_size=config.batch_size, unique_ids_per_batch=unique, variants=results)
  add_derived_figures(size, variants.get(PROBE))
  if "optimizer dense" in variants and size["bandwidth_gbps"]:
    harness.log(label, "analysing the compiled dense update ...")
    size["dense_update_analysis"] = analyze_dense_update(config, variants["optimizer dense"],
                                                         size["table_params"],
                                                         size["bandwidth_gbps"])
  lazy = variants.pop("adam_xla lazy", None)
  harness.close(variants)
  del variants
  gc.collect()
  size.update(rss_mb_after=memory.current_rss_mb(), peak_rss_mb=memory.peak_rss_mb())
  return lazy, size


def add_derived_figures(size, probe):
  """The probe's bandwidth and the Adam floor; the updates' bandwidth and its fraction of the
  probe's (in all and round by round); the faster Keras step over each step."""
  results, params = size["variants"], size["table_params"]
  bandwidth = probe and probe.gbps(results[PROBE]["median_ms"])
  size.update(bandwidth_gbps=bandwidth, adam_floor_ms=bandwidth and
              (ADAM_BYTES_PER_PARAM * params / (bandwidth * 1e6)))
  if probe:
    results[PROBE].update(
        gbps=bandwidth, megabytes=probe.megabytes,
        gbps_per_round=[probe.gbps(r["ms_per_step"]) for r in results[PROBE]["rounds"]])
  for name in UPDATE_VARIANTS:
    if name in results and probe:
      result = results[name]
      gbps = lambda ms: ADAM_BYTES_PER_PARAM * params / (ms * 1e6)
      result["gbps_at_28_bytes"] = gbps(result["median_ms"])
      result["fraction_of_bandwidth"] = result["gbps_at_28_bytes"] / bandwidth
      result["fraction_of_bandwidth_per_round"] = [
          gbps(r["ms_per_step"]) / bw
          for r, bw in zip(result["rounds"], results[PROBE]["gbps_per_round"])
      ]
  keras = [n for n in STEP_VARIANTS[2:] if n in results]
  size["keras_best"] = keras and min(keras, key=lambda n: results[n]["median_ms"])
  for name in STEP_VARIANTS:
    if name in results and keras:
      results[name]["keras_best_over_this"] = (results[size["keras_best"]]["median_ms"] /
                                               results[name]["median_ms"])


def benchmark_lazy_growth(config, lazy_by_rows):
  """The lazy steps of every size in the same rounds; growth taken round by round, paired."""
  variants = {f"adam_xla lazy {rows:,}": lazy_by_rows[rows] for rows in sorted(lazy_by_rows)}
  records = harness.time_rounds("lazy growth", variants,
                                dict.fromkeys(variants, config.lazy_growth_steps), config.rounds,
                                config.warmup_rounds)
  base = records[next(iter(variants))]
  results = []
  for rows, name in zip(sorted(lazy_by_rows), variants):
    result = {"rows": rows, **harness.summarize(records[name])}
    result["ratio_to_smallest"] = result["median_ms"] / statistics.median(r["ms_per_step"]
                                                                          for r in base)
    result["paired_ratios_to_smallest"] = [
        r["ms_per_step"] / b["ms_per_step"] for r, b in zip(records[name], base)
    ]
    results.append(result)
  return results


def compute_checks(sizes, lazy_growth):
  """The targets whose figures were measured."""
  checks = []
  if len(lazy_growth) > 1:
    small, large = lazy_growth[0], lazy_growth[-1]
    checks.append(
        GROWTH.check(
            statistics.median(large["paired_ratios_to_smallest"]),
            f"lazy step growth {small['rows']:,} -> {large['rows']:,} rows "
            "(paired rounds)"))
  largest = max(sizes, key=lambda s: s["rows"])
  lazy = largest["variants"].get("adam_xla lazy", {})
  if "keras_best_over_this" in lazy:
    checks.append(
        KERAS_OVER_LAZY.check(
            lazy["keras_best_over_this"],
            (f"keras best ({largest['keras_best']}) / lazy at {largest['rows']:,} rows")))
  for size in sorted(sizes, key=lambda s: s["rows"]):
    dense = size["variants"].get("optimizer dense", {})
    if "fraction_of_bandwidth" in dense:
      checks.append(
          BANDWIDTH_FRACTION.check(dense["fraction_of_bandwidth"],
                                   (f"{BANDWIDTH_FRACTION.figure} at {size['rows']:,} rows")))
  return checks


_TIMES = ("median ms|median_ms|.2f", "min|min_ms|.2f", "max|max_ms|.2f")
_LOAD = ("cores|median_cores|.1f", "other load|max_other_load|.0%")
_STEPS = ("rows|rows|,", "variant|variant", *_TIMES, "keras best/this|keras_best_over_this|.2f",
          *_LOAD, "1st call s|first_call_seconds|.1f")
_UPDATES = ("rows|rows|,", "variant|variant", *_TIMES, "GB/s|gbps|.1f",
            "of BW|fraction_of_bandwidth|.2f", *_LOAD)
_GROWTH = ("rows|rows|,", *_TIMES, "growth|growth|.2f", "per-round range|range", *_LOAD)
_PASSES = ("kernel|kernel", "root op|root", "table-sized traffic|traffic",
           "B/param|bytes_per_param", "ms|ms|.2f", "GB/s|gbps|.1f",
           "of BW|fraction_of_bandwidth|.2f")


def _passes_table(size):
  analysis = size.get("dense_update_analysis") or {"passes": []}
  if not analysis["passes"]:
    return []
  passes = [
      dict(
          p, traffic="in place, batch rows only" if p["in_place_rows_only"] else
          f"{p['table_sized_reads']} read(s) + {p['table_sized_writes']} write(s)")
      for p in analysis["passes"]
  ]
  return [
      "", f"Compiled dense update at {size['rows']:,} rows: {len(passes)} kernel(s) over "
      f"table-sized arrays, {analysis['modeled_bytes_per_param']} B/param modeled (minimum "
      f"{ADAM_BYTES_PER_PARAM}); profiled call {analysis['profile_wall_ms_per_call']:.2f} ms:",
      harness.format_rows(passes, _PASSES, 3)
  ]


def format_report(sizes, lazy_growth):
  steps, updates, passes = [], [], []
  for size in sizes:
    variants = size["variants"]
    steps += [
        dict(variants[n], rows=size["rows"], variant=n) for n in STEP_VARIANTS if n in variants
    ]
    # A table-wide rate for the dense update only: the lazy update touches the batch's rows.
    updates += [
        dict(variants[n], rows=size["rows"], variant=n, gbps=variants[n].get("gbps_at_28_bytes"))
        for n in UPDATE_VARIANTS[:1] if n in variants
    ]
    updates += [
        dict(variants[n], rows=size["rows"], variant=n, fraction_of_bandwidth=None)
        for n in UPDATE_VARIANTS[1:] if n in variants
    ]
    if PROBE in variants:
      probe = variants[PROBE]
      updates += [
          dict(probe, rows=size["rows"], fraction_of_bandwidth=1.0,
               variant=f"bandwidth probe {probe['megabytes']} MB"),
          dict(rows=size["rows"], variant="Adam floor (28 B/param)",
               median_ms=size["adam_floor_ms"], gbps=size["bandwidth_gbps"],
               fraction_of_bandwidth=1.0)
      ]
    passes += _passes_table(size)
  growth = [
      dict(
          g, growth=statistics.median(g["paired_ratios_to_smallest"]),
          range=f"{min(g['paired_ratios_to_smallest']):.2f}-"
          f"{max(g['paired_ratios_to_smallest']):.2f}") for g in lazy_growth
  ]
  out = [
      "Full train step (forward, backward, Adam), ms/step:",
      harness.format_rows(steps, _STEPS),
      "\nAdam update of the table alone (one XLA program, fixed gradient of the batch's rows) "
      "and memory bandwidth:",
      harness.format_rows(updates, _UPDATES)
  ]
  if growth:
    out += [
        "\nLazy step of every table size in the same interleaved rounds, ms/step; growth = "
        "median of the per-round ratios:",
        harness.format_rows(growth, _GROWTH, 1)
    ]
  return "\n".join(out + passes)


def run(config):
  """Every table size of `config`, then the lazy growth phase; prints and returns the report."""
  unknown = sorted(set(config.variants) - set(STEP_VARIANTS + UPDATE_VARIANTS + (PROBE,)))
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}.")
  if config.xla_cpu_max_isa not in ctr_config.XLA_CPU_ISAS:
    raise ValueError(f"--xla_cpu_max_isa must be one of {ctr_config.XLA_CPU_ISAS}; got "
                     f"{config.xla_cpu_max_isa!r}.")
  ctr_config.apply_xla_cpu_isa(config.xla_cpu_max_isa)  # before anything compiles
  info = machine.machine_info()
  machine.print_head("embedding", info)
  ids = config.ids if config.ids != "zipf" else (
      f"Zipf {config.zipf_exponent}, ranks permuted over the table")
  print(
      f"model: DLRM, 1 table of rows x {config.embedding_dim}, {NUM_DENSE} dense features, "
      f"MLPs {config.bottom_mlp} and {config.top_mlp}; batch {config.batch_size} ids ({ids}); "
      f"Adam lr {LEARNING_RATE}", flush=True)
  sizes, lazy_by_rows = [], {}
  for rows in config.rows:
    lazy_by_rows[rows], size = benchmark_size(config, rows)
    sizes.append(size)
  lazy_by_rows = {rows: lazy for rows, lazy in lazy_by_rows.items() if lazy}
  lazy_growth = benchmark_lazy_growth(config, lazy_by_rows) if len(lazy_by_rows) > 1 else []
  del lazy_by_rows
  keras.backend.clear_session()
  gc.collect()
  checks = compute_checks(sizes, lazy_growth)
  print()
  for size in sizes:
    print(f"{size['rows']:,} rows: table {size['table_params']:,} params, model "
          f"{size['model_params'] or 0:,} params; {size['unique_ids_per_batch']:.0f} "
          f"distinct ids per batch on average; RSS after {size['rss_mb_after']:.0f} MB, peak "
          f"{size['peak_rss_mb']:.0f} MB")
  print("\n" + format_report(sizes, lazy_growth))
  print("\n" + harness.format_checks(checks))
  print("keras best/this: the faster Keras variant's median over this one's. GB/s: 28 B x table "
        "params / median (the probe: 28 B x elements);\n  of BW: that over the probe's median "
        "in the same rounds. cores: this process's CPU time / wall time. other load: the\n  "
        "largest share of the CPUs other processes used during a timed run.")
  loads = {
      f"{s['rows']:,}/{name}": r["max_other_load"] for s in sizes
      for name, r in s["variants"].items()
  }
  print(harness.noisy_warning(loads))
  return dict(suite="embedding", machine=info, config=dataclasses.asdict(config),
              learning_rate=LEARNING_RATE, prefetch=PREFETCH, sizes=sizes, lazy_growth=lazy_growth,
              checks=checks)
