"""The Adam update alone (gradients given): adam_xla beside Keras 3, TensorFlow, torch, optax.

A case is PARAMS float32 parameters in TENSORS equal 1-D variables with fixed gradients, drawn
once from the seed; every variant (VARIANTS) holds its own copy, with learning rate 1e-3 and
Keras's betas and epsilon. Adam moves 28 bytes per parameter: a case's floor is 28 B x PARAMS
at the bandwidth of the native probe, timed among the variants. torch and optax run in
processes of their own under --peer_python (peer_adam.py), skipped without it.

A timing of different work is worthless: after the rounds every optimizer must have applied
the same steps and agree with adam_xla on every tensor and, on the first, with
tests/numpy_adam.py's float64 Adam of its own formula (torch and optax add epsilon after the
bias correction); a disagreement stops the suite.
"""

import dataclasses
import functools
import gc
import math
import os
import shutil
import subprocess
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

import adam_xla
from adam_xla import cpu_kernel
from adam_xla import engine
from tests import numpy_adam
from tools.bench import harness
from tools.bench import machine
from tools.bench import stream_probe
from tools.bench.configs import Case

LEARNING_RATE = 1e-3
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # Keras's defaults, given to every variant
ADAM_BYTES_PER_PARAM = 28  # read var, grad, m, v; write var, m, v (float32)
REFERENCE, BASELINE, PROBE = "adam_xla", "keras jit", "bandwidth probe"
TORCH, OPTAX = "torch fused", "optax"
_PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_adam.py")
# Updates per round by default: about this many parameter-updates (20 at 16M, 100 at 1M).
_PARAMS_PER_ROUND, _MIN_STEPS, _MAX_STEPS = 320_000_000, 5, 100

# The targets, each checked when its case and the variants it compares were run:
# (case, adam_xla's result key, target).
TARGETS = (
    (Case(16_000_000, 50), "x_floor", harness.Target("x floor", "<=", 1.2)),
    (Case(16_000_000, 50), "x_torch", harness.Target("adam_xla / torch fused", "<=", 1.0)),
    (Case(16_000_000, 50), "keras_jit_over_this", harness.Target("keras jit / adam_xla", ">=",
                                                                 1.6)),
    (Case(1_000_000, 200), "x_optax", harness.Target("adam_xla / optax", "<=", 1.0)),
    (Case(1_000_000, 200), "x_torch", harness.Target("adam_xla / torch fused", "<=", 1.5)),
    (Case(1_000_000, 200), "keras_jit_over_this", harness.Target("keras jit / adam_xla", ">=",
                                                                 5.0)),
)


class ParameterMismatch(RuntimeError):
  """Optimizer variants ended with different parameters or step counts: timings invalid."""


def default_steps(case):
  return min(max(_PARAMS_PER_ROUND // case.params, _MIN_STEPS), _MAX_STEPS)


@dataclasses.dataclass
class Problem:
  """What every variant of a case starts from."""

  case: Case
  initial: np.ndarray  # [tensors, size] float32; row i is variable i
  grad_values: np.ndarray
  grads: list  # a constant tf.Tensor per variable
  bandwidth_mb: int = 64
  peer_python: str = None


def make_problem(case, seed, bandwidth_mb=64, peer_python=None):
  rng = np.random.default_rng(seed)
  shape = (case.tensors, case.size)
  initial = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
  grads = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
  return Problem(case, initial, grads, [tf.constant(g) for g in grads], bandwidth_mb, peer_python)


def _variables_bytes(variables):
  return sum(
      math.prod(v.shape) * tf.as_dtype(v.dtype).size
      for v in {id(v): v for v in variables}.values())


class Variant:
  """An update: run(calls) applies `calls` updates and waits for them (then steps_done is the
  variant's own step count); params() as NumPy arrays; state_bytes() of its m, v, counters."""

  kind = "optimizer"
  epsilon_hat = True  # the formula of the float64 NumPy Adam it is checked against
  steps_per_call = 1
  steps_done = None

  def __init__(self, problem):
    self.params_count = problem.case.params

  def bytes_per_step(self):
    return ADAM_BYTES_PER_PARAM * self.params_count

  def run(self, calls):
    for _ in range(calls):
      last = self._update()
    self.steps_done = int(last.numpy())

  def params(self):
    return [v.numpy() for v in self._vars]

  def state_bytes(self):
    return _variables_bytes(self._state())


class AdamXla(Variant):
  """adam_xla.Adam's apply_gradients in one tf.function(jit_compile=True), built and traced
  under adam_xla's switches: its CPU kernel or XLA's loops, packed or own slots."""

  def __init__(self, problem, learning_rate=LEARNING_RATE, use_cpu_kernel=True, packed_slots=True):
    super().__init__(problem)
    self._vars = [tf.Variable(row) for row in problem.initial]
    self._opt = adam_xla.Adam(learning_rate, BETA_1, BETA_2, EPSILON)
    pairs = list(zip(problem.grads, self._vars))
    self._update = tf.function(lambda: tf.identity(self._opt.apply_gradients(pairs)),
                               jit_compile=True)
    switches = dict([(cpu_kernel.ENV_SWITCH, str(int(use_cpu_kernel))),
                     (engine.PACK_SWITCH, str(int(packed_slots)))])
    with mock.patch.dict(os.environ, switches):  # read while building and tracing
      self._opt.build(self._vars)
      self._update.get_concrete_function()

  def _state(self):
    return self._opt.variables


class KerasAdam(Variant):
  """keras.optimizers.Adam.apply over keras.Variables in a tf.function, XLA or not."""

  def __init__(self, problem, jit_compile):
    super().__init__(problem)
    self._vars = [keras.Variable(row) for row in problem.initial]
    self._opt = keras.optimizers.Adam(LEARNING_RATE, BETA_1, BETA_2, EPSILON)
    self._opt.build(self._vars)

    def update():
      self._opt.apply(list(problem.grads), self._vars)
      return tf.convert_to_tensor(self._opt.iterations)

    self._update = tf.function(update, jit_compile=jit_compile)

  def _state(self):
    return self._opt.variables


class TfResourceApplyAdam(Variant):
  """tf.raw_ops.ResourceApplyAdam per variable in one tf.function without XLA; like Keras it
  takes beta^t and folds the bias correction into the rate (epsilon hat)."""

  def __init__(self, problem):
    super().__init__(problem)
    self._vars = [tf.Variable(row) for row in problem.initial]
    self._m = [tf.Variable(tf.zeros_like(row)) for row in problem.initial]
    self._v = [tf.Variable(tf.zeros_like(row)) for row in problem.initial]
    self._step = tf.Variable(0, dtype=tf.int64)
    f32 = lambda x: tf.constant(x, tf.float32)

    @tf.function(jit_compile=False)
    def update():
      t = tf.cast(self._step + 1, tf.float32)
      for var, m, v, grad in zip(self._vars, self._m, self._v, problem.grads):
        tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(
            f32(BETA_1), t), beta2_power=tf.pow(f32(BETA_2),
                                                t), lr=f32(LEARNING_RATE), beta1=f32(BETA_1),
                                     beta2=f32(BETA_2), epsilon=f32(EPSILON), grad=grad)
      return self._step.assign_add(1)

    self._update = update

  def _state(self):
    return self._m + self._v + [self._step]


class FlatBufferAdam(Variant):
  """The same formula over ONE flat variable of every tensor, with flat m and v, under XLA."""

  def __init__(self, problem):
    super().__init__(problem)
    self._flat = tf.Variable(problem.initial.reshape(-1))
    self._m, self._v = (tf.Variable(tf.zeros_like(self._flat)) for _ in range(2))
    self._step = tf.Variable(0, dtype=tf.int64)
    grad = tf.constant(problem.grad_values.reshape(-1))

    @tf.function(jit_compile=True)
    def update():
      t = tf.cast(self._step + 1, tf.float32)
      lr_t = LEARNING_RATE * tf.sqrt(1 - tf.pow(BETA_2, t)) / (1 - tf.pow(BETA_1, t))
      m = self._m.assign(BETA_1 * self._m + (1 - BETA_1) * grad)
      v = self._v.assign(BETA_2 * self._v + (1 - BETA_2) * tf.square(grad))
      self._flat.assign_sub(lr_t * m / (tf.sqrt(v) + EPSILON))
      return self._step.assign_add(1)

    self._update = update
    self._shape = problem.initial.shape

  def params(self):
    return list(self._flat.numpy().reshape(self._shape))

  def _state(self):
    return [self._m, self._v, self._step]


class PerVariableBound(Variant):
  """var -= grad per variable in one XLA program; `with_slots` adds m += grad, v += grad on a
  pair of variables per variable. Not Adam: timed, but out of the agreement check."""

  def __init__(self, problem, with_slots=False):
    super().__init__(problem)
    self.kind = "reference" if with_slots else "bound"
    self._vars = [tf.Variable(row) for row in problem.initial]
    self._slots = [(tf.Variable(tf.zeros_like(row)), tf.Variable(tf.zeros_like(row)))
                   for row in problem.initial] if with_slots else []

    @tf.function(jit_compile=True)
    def update():
      for var, grad in zip(self._vars, problem.grads):
        var.assign_sub(grad)
      for (m, v), grad in zip(self._slots, problem.grads):
        m.assign_add(grad)
        v.assign_add(grad)
      return self._vars[0][0]

    self._update = update

  def bytes_per_step(self):
    return (28 if self._slots else 12) * self.params_count  # var, grad in; var out (+ m, v)

  def _state(self):
    return []


class PeerAdam(Variant):
  """Another library's Adam (peer_adam.py --system=SYSTEM) in a process of its own under
  problem.peer_python, fed the problem through an .npz; harness.Unavailable when there is no
  such interpreter or it lacks the library."""

  kind = "peer"
  epsilon_hat = False  # torch, optax (and the NumPy stand-in) add epsilon after the correction
  child_cpu_seconds = 0.0
  _process = None

  def __init__(self, problem, system, learning_rate=LEARNING_RATE):
    super().__init__(problem)
    if not problem.peer_python:
      raise harness.Unavailable("no --peer_python given")
    self._system, self._state_bytes = system, 0
    self._dir = tempfile.mkdtemp(prefix=f"peer_adam_{system}_")
    try:
      path = os.path.join(self._dir, "problem.npz")
      np.savez(path, initial=problem.initial, grads=problem.grad_values,
               hyper=np.array([learning_rate, BETA_1, BETA_2, EPSILON]))
      # Not this interpreter's module path: the peer imports its own libraries.
      env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
      try:
        self._process = subprocess.Popen(
            [problem.peer_python, _PEER_SCRIPT, f"--system={system}", f"--problem={path}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
      except OSError as error:
        raise harness.Unavailable(f"cannot start --peer_python: {error}") from None
      status, _, self.version = self._process.stdout.readline().strip().partition(" ")
      if status == "unavailable":
        raise harness.Unavailable(self.version)
      if status != "ready":
        raise RuntimeError(f"peer {system} did not start ({status} {self.version})")
    except BaseException:
      self.close()
      raise

  def _command(self, line):
    self._process.stdin.write(line + "\n")
    self._process.stdin.flush()
    reply = self._process.stdout.readline().split()
    if not reply or reply[0] != "ok":
      raise RuntimeError(f"peer {self._system}: {line!r} -> {' '.join(reply) or 'it exited'}")
    return reply[1:]

  def run(self, calls):
    count, _, cpu, state = self._command(f"run {calls}")
    self.steps_done, self.child_cpu_seconds, self._state_bytes = int(count), float(cpu), int(state)

  def params(self):
    path = os.path.join(self._dir, "params.npy")
    self._command(f"params {path}")
    return list(np.load(path))

  def state_bytes(self):
    return self._state_bytes

  def close(self):
    if self._process and self._process.poll() is None:
      try:
        self._process.communicate("quit\n", timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        self._process.kill()
        self._process.wait()
    shutil.rmtree(self._dir, ignore_errors=True)


# Name -> constructor(problem).
VARIANTS = {
    "adam_xla": AdamXla,
    "adam_xla own slots": functools.partial(AdamXla, packed_slots=False),
    "adam_xla, XLA loops": functools.partial(AdamXla, use_cpu_kernel=False),
    "keras jit": functools.partial(KerasAdam, jit_compile=True),
    "keras no-jit": functools.partial(KerasAdam, jit_compile=False),
    "tf ResourceApplyAdam": TfResourceApplyAdam,
    "jit Adam, one flat buffer": FlatBufferAdam,
    "bound: var -= grad per variable": PerVariableBound,
    "reference: var, m, v per variable": functools.partial(PerVariableBound, with_slots=True),
    TORCH: functools.partial(PeerAdam, system="torch"),
    OPTAX: functools.partial(PeerAdam, system="optax"),
    PROBE: lambda problem: stream_probe.ProbeVariant(problem.bandwidth_mb),
}

# ---- Do the variants do the same work? ---------------------------------------------------


def numpy_reference(initial, grad, steps, learning_rate=LEARNING_RATE, epsilon_hat=True):
  """tests/numpy_adam.py's float64 Adam (epsilon hat), `steps` times with one gradient. With
  epsilon_hat=False torch's and optax's lr m_hat / (sqrt(v_hat) + eps), which is the same
  with eps sqrt(1 - beta_2^t) as epsilon hat at step t."""
  adam = numpy_adam.NumpyAdam(learning_rate, BETA_1, BETA_2, EPSILON)
  params = [np.asarray(initial, np.float64).copy()]
  for t in range(1, steps + 1):
    if not epsilon_hat:
      adam.epsilon = EPSILON * math.sqrt(1 - BETA_2**t)
    adam.step(params, [grad])
  return params[0]


def tolerance(steps, max_abs_param, learning_rate=LEARNING_RATE):
  """The largest honest |difference| of two float32 Adams after `steps` equal steps.

  With fixed gradients errors do not feed back, they add up. Per step and side (2^-24 each):
  the parameter's rounding, 2^-23 max|p|; the step, about lr, with its roundings and m's and
  v's (one more each step): 2^-23 (t / 2 + 16) lr; float32 beta^t, a large relative error of
  a small 1 - beta^t: 2^-21 lr (1 / (2 (1 - beta_2^t)) + 1 / (1 - beta_1^t)). Keras, which
  rounds most, stays within 0.3 of it; a learning rate 1% off is 80-160x it.
  """
  t = np.arange(1, steps + 1, dtype=np.float64)
  bias_correction = np.sum(0.5 / (1 - BETA_2**t) + 1 / (1 - BETA_1**t))
  return float(2.0**-23 * (steps * max_abs_param + learning_rate * np.sum(t / 2 + 16)) +
               2.0**-21 * learning_rate * bias_correction)


def compare_parameters(variants, problem, steps_applied):
  """Each optimizer's (and peer's) max |difference| from adam_xla (not the peers: another
  formula) and, on the first tensor, from NumPy Adam of its formula; with the tolerance."""
  optimizers = {n: v for n, v in variants.items() if v.kind in ("optimizer", "peer")}
  params = {n: v.params() for n, v in optimizers.items()}
  steps = max((steps_applied[n] for n in optimizers), default=0)
  expected = {
      hat: numpy_reference(problem.initial[0], problem.grad_values[0], steps, epsilon_hat=hat)
      for hat in {v.epsilon_hat for v in optimizers.values()}
  }
  scale = max([float(np.max(np.abs(problem.initial)))] +
              [float(np.max(np.abs(a))) for a in expected.values()] +
              [float(np.max(np.abs(p))) for ps in params.values() for p in ps])
  reference = params.get(REFERENCE)
  rows = {}
  for name, ps in params.items():
    hat = optimizers[name].epsilon_hat
    vs_numpy = float(np.max(np.abs(ps[0] - expected[hat])))
    vs_adam_xla = (None if reference is None or not hat else max(
        float(np.max(np.abs(a - b))) for a, b in zip(ps, reference)))
    rows[name] = dict(
        steps=steps_applied[name], steps_reported_by_variant=optimizers[name].steps_done,
        numpy_formula="epsilon hat" if hat else "epsilon after",
        max_abs_diff_vs_numpy_first_tensor=vs_numpy, max_abs_diff_vs_adam_xla=vs_adam_xla)
  return dict(steps=steps, max_abs_param=scale, tolerance=tolerance(steps, scale), variants=rows)


def agreement_failures(agreement):
  """Why the variants did not do the same work; [] when they did."""
  failures = []
  for name, row in agreement["variants"].items():
    if row["steps"] != agreement["steps"]:
      failures.append(f"{name} applied {row['steps']} steps, others {agreement['steps']}")
    if row["steps_reported_by_variant"] != row["steps"]:
      failures.append(f"{name} counts {row['steps_reported_by_variant']} steps of the "
                      f"{row['steps']} it was given")
    for key, against in (("max_abs_diff_vs_adam_xla", REFERENCE),
                         ("max_abs_diff_vs_numpy_first_tensor", "float64 NumPy Adam")):
      if row[key] is not None and not row[key] <= agreement["tolerance"]:  # NaN fails too
        failures.append(f"{name} differs from {against} by {row[key]:.3g} (tolerance "
                        f"{agreement['tolerance']:.3g})")
  return failures


# ---- Running -----------------------------------------------------------------------------


def _result(variant, steps, setup, records):
  result = dict(kind=variant.kind, steps_per_round=steps, bytes_per_step=variant.bytes_per_step(),
                state_bytes=variant.state_bytes(), first_call_seconds=setup["first_call_seconds"],
                **harness.summarize(records))
  if variant.kind == "probe":
    result.update(megabytes=variant.megabytes, threads=variant.threads)
  if variant.kind == "peer":
    result.update(version=variant.version)
  return result


def benchmark_case(case, config, registry):
  """Builds, times and cross-checks every variant of one case; its report row."""
  problem = make_problem(case, config.seed, config.bandwidth_mb, config.peer_python)
  names = config.variants or tuple(registry)
  specs = [(name, functools.partial(registry[name], problem), False) for name in names]
  variants, setup, skipped = harness.build(case.label, specs)
  try:
    update_steps = config.steps or default_steps(case)
    steps = {n: getattr(v, "passes_per_round", update_steps) for n, v in variants.items()}
    records = harness.time_rounds(case.label, variants, steps, config.rounds, config.warmup_rounds)
    applied = {n: 1 + (config.warmup_rounds + config.rounds) * steps[n] for n in variants}
    agreement = compare_parameters(variants, problem, applied)
    results = {n: _result(v, steps[n], setup[n], records[n]) for n, v in variants.items()}
  finally:
    harness.close(variants)
  row = dict(params=case.params, tensors=case.tensors, tensor_size=case.size,
             steps_per_round=update_steps, agreement=agreement, variants=results, skipped=skipped)
  add_derived_figures(row)
  failures = agreement_failures(agreement)
  if failures:
    print(format_agreement([row]))
    raise ParameterMismatch(f"[{case.label}] the variants did not do the same work, so their "
                            "timings cannot be compared:\n  " + "\n  ".join(failures))
  return row


def add_derived_figures(row):
  """The probe's bandwidth and the Adam floor; per variant GB/s, x floor (for what moves Adam's
  bytes), keras jit / this, this / torch fused (x_torch) and this / optax (x_optax)."""
  results = row["variants"]
  probe = results.get(PROBE)
  if probe:
    probe["gbps"] = probe["bytes_per_step"] / (probe["median_ms"] * 1e6)
  row["bandwidth_gbps"] = probe and probe["gbps"]
  row["adam_floor_ms"] = probe and ADAM_BYTES_PER_PARAM * row["params"] / (probe["gbps"] * 1e6)
  ratio = lambda result, other: other and result["median_ms"] / other["median_ms"]
  for result in results.values():
    if result["kind"] == "probe":
      continue
    result["gbps"] = result["bytes_per_step"] / (result["median_ms"] * 1e6)
    adam_bytes = result["bytes_per_step"] == ADAM_BYTES_PER_PARAM * row["params"]
    result["x_floor"] = (result["median_ms"] /
                         row["adam_floor_ms"] if row["adam_floor_ms"] and adam_bytes else None)
    baseline = results.get(BASELINE)
    result["keras_jit_over_this"] = baseline and baseline["median_ms"] / result["median_ms"]
    result["x_torch"], result["x_optax"] = (ratio(result, results.get(TORCH)),
                                            ratio(result, results.get(OPTAX)))


def compute_checks(case_rows):
  """TARGETS, for the cases and variants that were run."""
  checks = []
  for case, key, target in TARGETS:
    row = next((r for r in case_rows if (r["params"], r["tensors"]) == (case.params, case.tensors)),
               None)
    value = ((row["variants"].get(REFERENCE) or {}).get(key)) if row else None
    if value is not None:
      checks.append(target.check(value, f"{target.figure} at {case.label}"))
  return checks


_RESULTS = ("case|case", "variant|variant", "median ms|median_ms|.2f", "min|min_ms|.2f",
            "max|max_ms|.2f", "keras jit/this|keras_jit_over_this|.2f", "x torch|x_torch|.2f",
            "x optax|x_optax|.2f", "x floor|x_floor|.2f", "GB/s|gbps|.1f", "state MB|state_mb|.1f",
            "other load|max_other_load|.0%")
_AGREEMENT = ("case|case", "variant|variant", "steps|steps|d",
              "max |diff| vs adam_xla|max_abs_diff_vs_adam_xla|.2e",
              "vs NumPy (1st tensor)|max_abs_diff_vs_numpy_first_tensor|.2e",
              "NumPy formula|numpy_formula", "tolerance|tolerance|.2e")


def _result_line(case, name, result):
  if result["kind"] == "probe":
    name = f"{name} {result['megabytes']} MB, {result['threads']} threads"
  return dict(result, case=case, variant=name, state_mb=result["state_bytes"] / 2**20)


def format_results(case_rows):
  lines = []
  for row in case_rows:
    case = f"{row['params']:,} x {row['tensors']}"
    lines += [_result_line(case, name, r) for name, r in row["variants"].items()]
    lines += [{"case": case, "variant": f"{name}: skipped ({reason})"}
              for name, reason in row["skipped"].items()]
    if row["adam_floor_ms"]:
      lines.append(
          dict(case=case, variant="Adam floor (28 B/param)", x_floor=1.0,
               median_ms=row["adam_floor_ms"], gbps=row["bandwidth_gbps"]))
  return harness.format_rows(lines, _RESULTS)


def format_agreement(case_rows):
  lines = []
  for row in case_rows:
    case, tolerance_ = f"{row['params']:,} x {row['tensors']}", row["agreement"]["tolerance"]
    lines += [
        dict(a, case=case, variant=name, tolerance=tolerance_)
        for name, a in row["agreement"]["variants"].items()
    ]
  return harness.format_rows(lines, _AGREEMENT)


def run(config, registry=None):
  """Every case of `config`, printed; the report. Raises ParameterMismatch."""
  registry = VARIANTS if registry is None else registry
  unknown = sorted(set(config.variants) - set(registry))
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; known: {list(registry)}.")
  info = machine.machine_info()
  machine.print_head("optimizer", info)
  rows = []
  for case in config.cases:
    rows.append(benchmark_case(case, config, registry))
    keras.backend.clear_session()
    gc.collect()
  checks = compute_checks(rows)
  print("\nAdam update alone, ms/update (medians of the interleaved rounds):")
  print(format_results(rows))
  print("\nParameters after all rounds (same start, same gradients):")
  print(format_agreement(rows))
  print("\n" + harness.format_checks(checks))
  print("keras jit/this: keras jit's median over this one's (> 1: faster). x torch, x optax: "
        "this median over the peer's (< 1:\n  faster). x floor: median over 28 B x params at "
        "the probe's bandwidth. GB/s: bytes moved / median (Adam and the\n  reference 28 B "
        "per parameter, the bound 12). state MB: m, v, counters (2^20 B). other load: the "
        "largest share\n  of the CPUs other processes used during a timed run.")
  loads = {
      f"{row['params']:,} x {row['tensors']}/{name}": r["max_other_load"] for row in rows
      for name, r in row["variants"].items()
  }
  print(harness.noisy_warning(loads))
  hyperparameters = dict(learning_rate=LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON)
  return dict(suite="optimizer", machine=info, config=dataclasses.asdict(config),
              hyperparameters=hyperparameters, cases=rows, checks=checks)
