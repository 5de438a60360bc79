"""Times the Adam update alone (gradients given) of adam_xla beside Keras 3, TF, torch, optax.

    ./bazelw run //tools:benchmark_optimizer -- [--cases=16000000x50,1000000x200] [--quick]
        [--peer_python=$PWD/.venv-peers/bin/python]

torch and optax are not this project's dependencies; they run in an interpreter of their own:
    python3 -m venv .venv-peers && .venv-peers/bin/pip install -r tools/requirements-peers.txt
Without --peer_python (or when its interpreter cannot import torch or jax) their rows are
skipped and the report says which and why.

No model, no loss, no input pipeline: each case is PARAMS float32 parameters split into
TENSORS equally sized 1-D variables of PARAMS/TENSORS elements each (PARAMS must be a multiple
of TENSORS), and fixed gradients. The gradients are constant tensors drawn once from --seed
(normal, scale 0.01) and the initial values too (normal, scale 0.05); every variant gets the
same ones and holds its own copy of the variables. The variants (registry VARIANTS):

  adam_xla              adam_xla.Adam(learning_rate=1e-3); build(vars); one
                        tf.function(jit_compile=True) calling apply_gradients(zip(grads, vars));
                        on CPU its update is adam_xla's one-pass kernel (adam_xla/cpu_kernel.py)
  adam_xla own slots    the same built with ADAM_XLA_PACK_SLOTS=0: every variable's m and v
                        variables of its own instead of ranges of two shared buffers
  adam_xla, XLA loops   the same traced with ADAM_XLA_CPU_KERNEL=0: XLA's own loops, three per
                        tensor (what adam_xla did before the kernel, and does on GPU and TPU)
  keras jit             keras.optimizers.Adam(learning_rate=1e-3) over keras.Variables;
                        build(vars); tf.function(jit_compile=True) calling apply(grads, vars)
  keras no-jit          the same in a tf.function without XLA
  tf ResourceApplyAdam  TensorFlow's fused C++ kernel (tf.raw_ops.ResourceApplyAdam) once per
                        variable, with its own m and v variables and beta powers computed from
                        its step count: the same math as Keras (epsilon hat), no XLA
  jit Adam, one flat buffer   hand-written Adam (same formula) over one flat variable holding
                        every tensor, with flat m and v: the layout a per-variable optimizer
                        cannot use (a model's weights are separate variables); it shows the
                        cost of the tensor count
  bound: var -= grad per variable
                        not Adam: each variable minus its gradient in one XLA program, the
                        least any update of TENSORS separate variables does; a lower bound on
                        time (checked against nothing)
  reference: var, m, v per variable
                        the same plus m += grad and v += grad on an m and a v variable per
                        variable, as XLA's loops: the variables and bytes (28 per parameter) of
                        an Adam with per-variable m and v, with the least arithmetic; what
                        Keras jit pays before its arithmetic (checked against nothing)
  torch fused           torch.optim.Adam(fused=True), torch.set_num_threads(os.cpu_count())
  optax                 optax.adam; update and apply_updates in one jax.jit, params and state
                        donated. These two "peers" run tools/peer_adam.py in a process of their
                        own under --peer_python, on a copy of the same problem (an .npz in a
                        temporary directory), driven over a line protocol; a round of a peer
                        is timed here around its "run N" command (the round trip, which waits
                        for the updates; the pipe adds well under 1 ms), and the peer's own CPU
                        time is counted as this tool's, not as other processes' load.
  bandwidth probe       tools/stream_probe.cc: native code on every usable core streaming four
                        float32 arrays of --bandwidth_mb / 4 each as Adam does (read p, g, m,
                        v; write p, m, v in place: 28 bytes per element). It is one of the
                        timed variants, so the bandwidth is measured under the same conditions
                        as the updates it is held against.

All use the Keras defaults beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-7. Adam must read the
parameter, its gradient, m and v and write the parameter, m and v: 28 bytes per float32
parameter. The floor of a case is 28 B x PARAMS / (probe bandwidth), and "x floor" is how far
above it an update runs. The probe on one thread is measured once and reported beside it
(informational). torch and optax add epsilon after the bias correction,
p -= lr m_hat / (sqrt(v_hat) + eps), where adam_xla and Keras use epsilon hat; same bytes.

Each variant is built and called once untimed (tracing, XLA compilation), then all of them run
--warmup_rounds untimed rounds and --rounds timed rounds, every variant once per round (--steps
updates; the probe as many passes as take about 0.2 s, counted once after compiling) in an
order rotated from round to round, so that noise from other processes hits them alike. Each
timed run ends by fetching a value, which waits for its work. Figures are medians over the
rounds, with the range, and the largest share of the CPUs other processes used during a run.
Cases run one after the other, each one's variables freed before the next.

Checks (the issue's targets, module constants TARGETS; each only when its case and the variant
it compares with were run): at 16,000,000 x 50, adam_xla within 1.2x of the floor, adam_xla /
torch fused <= 1 and keras jit / adam_xla >= 1.6; at 1,000,000 x 200 (per-variable overhead
dominates), adam_xla / optax <= 1, adam_xla / torch fused <= 1.5, keras jit / adam_xla >= 5.

A timing of different work is worthless, so after the rounds the tool checks that every
optimizer variant applied the same number of steps and ends with the same parameters: each is
compared with adam_xla over all tensors and, on the first tensor, with a float64 NumPy Adam
(see `tolerance`); each peer on the first tensor with a float64 NumPy Adam of its own formula
(epsilon after). A disagreement stops the tool with a non-zero exit and the differences.
"""

import dataclasses
import functools
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

import adam_xla
from adam_xla import cpu_kernel
from adam_xla import engine
from tools import cpu_load
from tools import run_info
from tools import stream_probe
from tools import text_table

LEARNING_RATE = 1e-3
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # Keras's defaults, given to every variant
ADAM_BYTES_PER_PARAM = 28  # read var, grad, m, v; write var, m, v (float32)
_INITIAL_SCALE, _GRADIENT_SCALE = 0.05, 0.01
# The probe runs whole passes per round, at least 3 and enough for about this long (like one
# round of an update variant, and above the 0.1 s cpu_load.CpuMeter needs).
_PROBE_SECONDS_PER_ROUND = 0.2
_PROBE_MIN_PASSES = 3
_SINGLE_THREAD_PASSES = 5
_PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_adam.py")
# Default updates per round: this many parameter-updates, within [_MIN_STEPS, _MAX_STEPS]
# (20 at 16M parameters, 100 at 1M): a few tenths of a second per variant and round.
_PARAMS_PER_ROUND = 320_000_000
_MIN_STEPS, _MAX_STEPS = 5, 100

REFERENCE = "adam_xla"  # what every other optimizer variant is compared with
BASELINE = "keras jit"  # the "keras jit / this" column
PROBE = "bandwidth probe"
TORCH, OPTAX = "torch fused", "optax"  # the peers, and the ratio columns "x torch", "x optax"

# The targets. Each check is emitted only when its case (params, tensors) was run.
FLOOR_RATIO_MAX_16M = 1.2  # adam_xla median / Adam floor at 16,000,000 x 50
TORCH_RATIO_MAX_16M = 1.0  # adam_xla / torch fused at 16,000,000 x 50
KERAS_OVER_ADAM_XLA_MIN_16M = 1.6  # keras jit / adam_xla at 16,000,000 x 50
OPTAX_RATIO_MAX_1M = 1.0  # adam_xla / optax at 1,000,000 x 200
TORCH_RATIO_MAX_1M = 1.5  # adam_xla / torch fused at 1,000,000 x 200
KERAS_OVER_ADAM_XLA_MIN_1M = 5.0  # keras jit / adam_xla at 1,000,000 x 200
TARGETS = (
    # (params, tensors, figure, adam_xla's result key, comparison, threshold)
    (16_000_000, 50, "x floor", "x_floor", "<=", FLOOR_RATIO_MAX_16M),
    (16_000_000, 50, "adam_xla / torch fused", "x_torch", "<=", TORCH_RATIO_MAX_16M),
    (16_000_000, 50, "keras jit / adam_xla", "keras_jit_over_this", ">=",
     KERAS_OVER_ADAM_XLA_MIN_16M),
    (1_000_000, 200, "adam_xla / optax", "x_optax", "<=", OPTAX_RATIO_MAX_1M),
    (1_000_000, 200, "adam_xla / torch fused", "x_torch", "<=", TORCH_RATIO_MAX_1M),
    (1_000_000, 200, "keras jit / adam_xla", "keras_jit_over_this", ">=",
     KERAS_OVER_ADAM_XLA_MIN_1M),
)

DEFAULT_CASES = ("16000000x50", "1000000x200")
QUICK = {"cases": ("400000x20", "100000x50"), "rounds": 1, "warmup_rounds": 1, "steps": 5,
         "bandwidth_mb": 64}


class ParameterMismatch(RuntimeError):
  """Optimizer variants ended with different parameters (or step counts): timings invalid."""


class PeerUnavailable(RuntimeError):
  """No --peer_python, or it cannot import the peer's library: the peer's row is skipped."""


# ---- Configuration -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
  """PARAMS float32 parameters in TENSORS 1-D variables of PARAMS / TENSORS elements."""

  params: int
  tensors: int

  @property
  def size(self):
    return self.params // self.tensors

  @property
  def label(self):
    return f"{self.params:,} x {self.tensors}"


@dataclasses.dataclass
class Config:
  """Everything `run` needs; main() fills it from the flags, tests build it directly."""

  cases: tuple = dataclasses.field(default_factory=lambda: parse_cases(DEFAULT_CASES))
  rounds: int = 7
  warmup_rounds: int = 1
  steps: int | None = None  # None: default_steps(case)
  bandwidth_mb: int = 512
  seed: int = 0
  variants: tuple = ()  # () means every registered variant
  json_out: str | None = None
  quick: bool = False
  peer_python: str | None = None  # interpreter with torch and jax/optax for the peers
  command: str | None = None  # for the report; None: this process's command line


def parse_cases(values):
  """["16000000x50", ...] -> (Case, ...); a UsageError naming --cases otherwise."""
  cases = []
  for value in values:
    parts = value.strip().lower().split("x")
    try:
      params, tensors = (int(p) for p in parts)
    except ValueError:
      raise app.UsageError(f"--cases: {value!r} is not PARAMSxTENSORS (e.g. 16000000x50)."
                           ) from None
    if tensors < 1 or params < tensors or params % tensors:
      raise app.UsageError(f"--cases: {value!r}: TENSORS must be >= 1 and PARAMS a positive "
                           "multiple of it.")
    cases.append(Case(params, tensors))
  if not cases or len(set(cases)) < len(cases):
    raise app.UsageError(f"--cases must list distinct cases; got {values}.")
  return tuple(cases)


def validate(config, registry):
  """UsageErrors naming the flag, for configs from flags and from code alike."""
  for name in ("rounds", "bandwidth_mb"):
    if getattr(config, name) < 1:
      raise app.UsageError(f"--{name} must be >= 1; got {getattr(config, name)}.")
  if config.warmup_rounds < 0:
    raise app.UsageError(f"--warmup_rounds must be >= 0; got {config.warmup_rounds}.")
  if config.steps is not None and config.steps < 1:
    raise app.UsageError(f"--steps must be >= 1; got {config.steps}.")
  unknown = [v for v in config.variants if v not in registry]
  if unknown or len(set(config.variants)) < len(config.variants):
    raise app.UsageError(f"--variants must list distinct names from {list(registry)}; got "
                         f"{list(config.variants)}.")
  if not config.cases:
    raise app.UsageError("--cases must not be empty.")


def default_steps(case):
  """Updates per round: about _PARAMS_PER_ROUND parameter-updates, i.e. 0.1-0.3 s per run."""
  return min(max(_PARAMS_PER_ROUND // case.params, _MIN_STEPS), _MAX_STEPS)


# ---- The problem and the variants --------------------------------------------------------

@dataclasses.dataclass
class Problem:
  """What every variant of a case starts from: initial values, gradients, probe size."""

  case: Case
  initial: np.ndarray  # [tensors, size] float32; row i is variable i
  grad_values: np.ndarray  # the same for the gradients
  grads: list  # tf.Tensor per variable, constant
  bandwidth_mb: int
  peer_python: str | None = None


def make_problem(case, seed, bandwidth_mb, peer_python=None):
  rng = np.random.default_rng(seed)
  shape = (case.tensors, case.size)
  initial = rng.standard_normal(shape, dtype=np.float32) * np.float32(_INITIAL_SCALE)
  grads = rng.standard_normal(shape, dtype=np.float32) * np.float32(_GRADIENT_SCALE)
  return Problem(case, initial, grads, [tf.constant(g) for g in grads], bandwidth_mb,
                 peer_python)


def _variables_bytes(variables):
  """Bytes held by distinct variables (tf or Keras)."""
  seen, total = set(), 0
  for v in variables:
    if id(v) not in seen:
      seen.add(id(v))
      total += int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size
  return total


class Variant:
  """An optimizer variant: run(steps) -> its step count after them, params(), state_bytes().

  run() ends by fetching a value, which waits for the work; params() returns the variables as
  NumPy arrays (for the agreement check); state_bytes() the bytes of the optimizer's own
  variables (m, v, step count, ...).
  """

  kind = "optimizer"
  epsilon_hat = True  # its formula: the float64 NumPy Adam it is checked against
  child_cpu_seconds = 0.0  # CPU time of its own process during the last run (peers)

  def __init__(self, problem):
    self.params_count = problem.case.params

  def bytes_per_step(self):
    return ADAM_BYTES_PER_PARAM * self.params_count

  def steps_per_round(self, update_steps):
    """Runs per timed round: the case's updates per round."""
    return update_steps

  def run(self, steps):
    """Calls the variant's compiled update (`self._update`, which returns its step count)
    `steps` times; fetching the count waits for the work."""
    for _ in range(steps):
      count = self._update()
    return int(count.numpy())

  def params(self):
    return [v.numpy() for v in self._vars]

  def state_bytes(self):
    raise NotImplementedError

  def close(self):
    """Frees what outlives the variant's Python object (a peer's process)."""


class AdamXla(Variant):
  """adam_xla.Adam, its apply_gradients in one tf.function(jit_compile=True).

  With use_cpu_kernel=False the optimizer is built and its function traced with
  ADAM_XLA_CPU_KERNEL=0, so that the update is XLA's own loops over each variable's own m and
  v (what adam_xla does on GPU and TPU) rather than adam_xla's one-pass CPU kernel. With
  packed_slots=False it is built with ADAM_XLA_PACK_SLOTS=0: the kernel, with every variable's
  m and v variables of their own.
  """

  def __init__(self, problem, learning_rate=LEARNING_RATE, use_cpu_kernel=True,
               packed_slots=True):
    super().__init__(problem)
    self._vars = [tf.Variable(row) for row in problem.initial]
    self._opt = adam_xla.Adam(learning_rate=learning_rate, beta_1=BETA_1, beta_2=BETA_2,
                              epsilon=EPSILON)
    pairs = list(zip(problem.grads, self._vars))
    self._update = tf.function(lambda: tf.identity(self._opt.apply_gradients(pairs)),
                               jit_compile=True)
    # adam_xla's user-facing switches (see the README), read while building and tracing.
    switches = {cpu_kernel.ENV_SWITCH: "1" if use_cpu_kernel else "0",
                engine.PACK_SWITCH: "1" if packed_slots else "0"}
    with mock.patch.dict(os.environ, switches):  # read while building and tracing
      self._opt.build(self._vars)
      self._update.get_concrete_function()  # traces now; later calls reuse this trace

  def state_bytes(self):
    return _variables_bytes(self._opt.variables)  # iterations, the rate's variable, the slots


class KerasAdam(Variant):
  """keras.optimizers.Adam over keras.Variables, its apply in a tf.function (XLA or not)."""

  def __init__(self, problem, jit_compile, learning_rate=LEARNING_RATE):
    super().__init__(problem)
    self._vars = [keras.Variable(row) for row in problem.initial]
    self._opt = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=BETA_1, beta_2=BETA_2,
                                      epsilon=EPSILON)
    self._opt.build(self._vars)
    grads = list(problem.grads)

    def update():
      self._opt.apply(grads, self._vars)
      return tf.convert_to_tensor(self._opt.iterations)

    self._update = tf.function(update, jit_compile=jit_compile)

  def state_bytes(self):
    return _variables_bytes(self._opt.variables)


class TfResourceApplyAdam(Variant):
  """tf.raw_ops.ResourceApplyAdam per variable in one tf.function without XLA."""

  def __init__(self, problem, learning_rate=LEARNING_RATE):
    super().__init__(problem)
    self._vars = [tf.Variable(row) for row in problem.initial]
    self._m = [tf.Variable(tf.zeros([problem.case.size])) for _ in self._vars]
    self._v = [tf.Variable(tf.zeros([problem.case.size])) for _ in self._vars]
    self._step = tf.Variable(0, dtype=tf.int64)
    grads = list(problem.grads)
    f32 = lambda x: tf.constant(x, tf.float32)

    @tf.function(jit_compile=False)
    def update():
      # The kernel takes beta^t and folds the bias correction into lr (epsilon hat), as Keras.
      t = tf.cast(self._step + 1, tf.float32)
      beta_1_power, beta_2_power = tf.pow(f32(BETA_1), t), tf.pow(f32(BETA_2), t)
      for var, m, v, grad in zip(self._vars, self._m, self._v, grads):
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=m.handle, v=v.handle, beta1_power=beta_1_power,
            beta2_power=beta_2_power, lr=f32(learning_rate), beta1=f32(BETA_1),
            beta2=f32(BETA_2), epsilon=f32(EPSILON), grad=grad)
      return self._step.assign_add(1)

    self._update = update

  def state_bytes(self):
    return _variables_bytes(self._m + self._v + [self._step])


class BandwidthProbe(Variant):
  """The native bandwidth probe (tools/stream_probe.py) over bandwidth_mb, as a timed variant."""

  kind = "probe"

  def __init__(self, problem):  # pylint: disable=super-init-not-called
    self._probe = stream_probe.StreamProbe(problem.bandwidth_mb)
    self.megabytes, self.threads = problem.bandwidth_mb, self._probe.threads
    self.passes = self._passes_per_round()

  def _passes_per_round(self):
    """Passes for about _PROBE_SECONDS_PER_ROUND, from a short timing after compiling."""
    self.run(1)
    start = time.perf_counter()
    self.run(_PROBE_MIN_PASSES)
    seconds_per_pass = (time.perf_counter() - start) / _PROBE_MIN_PASSES
    return max(_PROBE_MIN_PASSES, math.ceil(_PROBE_SECONDS_PER_ROUND / seconds_per_pass))

  def bytes_per_step(self):
    return self._probe.bytes_per_pass

  def steps_per_round(self, update_steps):
    del update_steps  # passes take their own time, calibrated in __init__
    return self.passes

  def run(self, steps):
    self._probe.run(steps)
    return None

  def params(self):
    return None

  def state_bytes(self):
    return 0

  def close(self):
    self._probe.close()


class PeerAdam(Variant):
  """Another library's Adam (tools/peer_adam.py --system=SYSTEM) in a process of its own under
  problem.peer_python, fed a copy of the problem through an .npz in a temporary directory.
  Raises PeerUnavailable when there is no such interpreter or it lacks the library."""

  kind = "peer"
  epsilon_hat = False  # torch, optax (and the NumPy stand-in) add epsilon after the correction

  def __init__(self, problem, system, learning_rate=LEARNING_RATE):
    super().__init__(problem)
    if not problem.peer_python:
      raise PeerUnavailable("no --peer_python given")
    self._system, self._state_bytes = system, 0
    self._dir = tempfile.mkdtemp(prefix=f"peer_adam_{system}_")
    self._process = None
    try:
      path = os.path.join(self._dir, "problem.npz")
      np.savez(path, initial=problem.initial, grads=problem.grad_values,
               hyper=np.array([learning_rate, BETA_1, BETA_2, EPSILON]))
      # Not this interpreter's module path (Bazel's runfiles): the peer imports its own.
      env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
      try:
        self._process = subprocess.Popen(
            [problem.peer_python, _PEER_SCRIPT, f"--system={system}", f"--problem={path}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
      except OSError as error:
        raise PeerUnavailable(f"cannot start --peer_python: {error}") from None
      status, _, detail = self._process.stdout.readline().strip().partition(" ")
      if status == "unavailable":
        raise PeerUnavailable(detail)
      if status != "ready":
        raise RuntimeError(f"peer {system} did not start ({status} {detail}); see its stderr")
      self.version = detail
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

  def run(self, steps):
    count, _, cpu, state = self._command(f"run {steps}")
    self.child_cpu_seconds, self._state_bytes = float(cpu), int(state)
    return int(count)

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


class FlatBufferAdam(Variant):
  """Hand-written Adam (same formula) over ONE flat variable holding every tensor, under XLA.

  Not something a per-variable optimizer can do (a model's weights are separate variables):
  it shows what the per-tensor cost is, next to the same work as one kernel chain.
  """

  def __init__(self, problem, learning_rate=LEARNING_RATE):
    super().__init__(problem)
    self._shape = problem.initial.shape
    self._flat = tf.Variable(problem.initial.reshape(-1))
    self._m = tf.Variable(tf.zeros_like(self._flat))
    self._v = tf.Variable(tf.zeros_like(self._flat))
    self._step = tf.Variable(0, dtype=tf.int64)
    grad = tf.constant(problem.grad_values.reshape(-1))

    @tf.function(jit_compile=True)
    def update():
      t = tf.cast(self._step + 1, tf.float32)
      lr_t = learning_rate * tf.sqrt(1 - tf.pow(BETA_2, t)) / (1 - tf.pow(BETA_1, t))
      m = BETA_1 * self._m + (1 - BETA_1) * grad
      v = BETA_2 * self._v + (1 - BETA_2) * tf.square(grad)
      self._m.assign(m)
      self._v.assign(v)
      self._flat.assign_sub(lr_t * m / (tf.sqrt(v) + EPSILON))
      return self._step.assign_add(1)

    self._update = update

  def params(self):
    return list(self._flat.numpy().reshape(self._shape))

  def state_bytes(self):
    return _variables_bytes([self._m, self._v, self._step])


class PerVariableBound(Variant):
  """var -= grad for each variable in one XLA program: the least any update of TENSORS
  separate variables does (read each variable and gradient, write each variable). Not Adam:
  a lower bound on time, so it is left out of the agreement check.

  With `with_slots` ("reference: var, m, v per variable"), also m += grad and v += grad on an
  m and a v variable per variable: the variables and bytes (28 per parameter) of an Adam whose
  m and v are per variable, with the least arithmetic, as XLA's own loops. What any such
  update compiled by XLA (Keras jit, adam_xla's XLA loops) pays before its arithmetic; not a
  bound on adam_xla's kernel, which updates all three in one call.
  """

  def __init__(self, problem, with_slots=False):
    super().__init__(problem)
    self.kind = "reference" if with_slots else "bound"
    self._with_slots = with_slots
    self._vars = [tf.Variable(row) for row in problem.initial]
    self._slots = [(tf.Variable(tf.zeros_like(row)), tf.Variable(tf.zeros_like(row)))
                   for row in problem.initial] if with_slots else []
    grads = list(problem.grads)

    @tf.function(jit_compile=True)
    def update():
      for var, grad in zip(self._vars, grads):
        var.assign_sub(grad)
      for (m, v), grad in zip(self._slots, grads):
        m.assign_add(grad)
        v.assign_add(grad)
      return self._vars[0][0]

    self._update = update

  def bytes_per_step(self):
    # read var and grad, write var; with slots also read and write m and v
    return (28 if self._with_slots else 12) * self.params_count

  def run(self, steps):
    for _ in range(steps):
      last = self._update()
    last.numpy()
    return None

  def params(self):
    return None

  def state_bytes(self):
    return 0


# Name -> constructor(problem). A new variant (say, another slot layout of adam_xla) is one line.
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
    PROBE: BandwidthProbe,
}


# ---- Correctness of the comparison -------------------------------------------------------

def numpy_adam(initial, grad, steps, learning_rate=LEARNING_RATE, epsilon_hat=True):
  """Adam in float64, `steps` times with the same gradient: the documented formula (epsilon
  hat, lr_t m / (sqrt(v) + eps)), or with epsilon_hat=False torch's and optax's (epsilon
  after the bias correction, lr m_hat / (sqrt(v_hat) + eps))."""
  var = np.asarray(initial, np.float64).copy()
  g = np.asarray(grad, np.float64)
  m, v = np.zeros_like(var), np.zeros_like(var)
  for t in range(1, steps + 1):
    m = BETA_1 * m + (1 - BETA_1) * g
    v = BETA_2 * v + (1 - BETA_2) * g * g
    if epsilon_hat:
      lr_t = learning_rate * math.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
      var -= lr_t * m / (np.sqrt(v) + EPSILON)
    else:
      var -= learning_rate * (m / (1 - BETA_1**t)) / (np.sqrt(v / (1 - BETA_2**t)) + EPSILON)
  return var


def tolerance(steps, max_abs_param, learning_rate=LEARNING_RATE):
  """Largest honest |difference| between two float32 Adams after `steps` identical steps.

  The gradients are fixed, so m and v do not depend on the parameters: errors do not feed
  back, they only add up over the steps. Per step t, between two implementations (each side
  contributes, hence 2^-23 = 2 x 2^-24, float32's unit roundoff):
    * each rounds the new parameter: 2^-23 max|p|;
    * the step is about learning_rate in size (bias-corrected m / sqrt(v) is 1 for a constant
      gradient) and carries the relative error of its own few roundings and of m and v, whose
      recurrences add a rounding per step (v's decays only after 1 / (1 - beta_2) = 1000
      steps; m's stays below 10 roundings): below 2^-23 (t / 2 + 16) learning_rate;
    * bias correction: beta^t is computed in float32 (within 4 ulps for tf.pow), and the
      absolute error of 1 - beta^t is a large relative error while 1 - beta_2^t is small:
      2^-21 learning_rate (1 / (2 (1 - beta_2^t)) + 1 / (1 - beta_1^t)).
  (That Keras rounds beta_2 to float32 changes nothing here: with a constant gradient the
  bias-corrected m and v do not depend on the betas.) Summed over the steps, worst case (no
  cancellation); the float64 NumPy reference, exact by comparison, is within half of it.

  After 11 steps (--quick) it is 1.1e-6, after 121 steps at 16M 7.5e-6, after 601 steps at 1M
  7.3e-5. Measured (seed 0): Keras, which rounds most, within 0.14, 0.27 and 0.18 of it;
  ResourceApplyAdam within 0.03; adam_xla within 0.1 of NumPy. A real difference is far
  larger: a learning rate 1% off moves the parameters by 1e-5 per step, 80-160x the
  tolerance in those cases.
  """
  t = np.arange(1, steps + 1, dtype=np.float64)
  bias_correction = np.sum(0.5 / (1 - BETA_2**t) + 1 / (1 - BETA_1**t))
  return float(2.0**-23 * (steps * max_abs_param + learning_rate * np.sum(t / 2 + 16)) +
               2.0**-21 * learning_rate * bias_correction)


def compare_parameters(variants, problem, steps_applied, steps_reported=None,
                       learning_rate=LEARNING_RATE):
  """Max |difference| of each optimizer variant (and peer) from adam_xla (the peers, of
  another formula, are not compared with it) and from NumPy Adam of its formula.

  `variants`: {name: Variant}; `steps_applied`: the updates each was asked for;
  `steps_reported`: the step counts the variants report themselves. Returns a dict with the
  tolerance, the step count and per-variant figures; `agreement_failures` reads it.
  """
  steps_reported = steps_reported or steps_applied
  optimizers = {n: v for n, v in variants.items() if v.kind in ("optimizer", "peer")}
  params = {n: v.params() for n, v in optimizers.items()}
  steps = max(steps_applied[n] for n in optimizers) if optimizers else 0
  expected = {hat: numpy_adam(problem.initial[0], problem.grad_values[0], steps, learning_rate,
                              epsilon_hat=hat)
              for hat in {v.epsilon_hat for v in optimizers.values()}}
  scale = max([float(np.max(np.abs(problem.initial)))] +
              [float(np.max(np.abs(e))) for e in expected.values()] +
              [float(np.max(np.abs(p))) for ps in params.values() for p in ps])
  reference = params.get(REFERENCE)
  rows = {}
  for name, ps in params.items():
    hat = optimizers[name].epsilon_hat
    rows[name] = {
        "steps": steps_applied[name], "steps_reported_by_variant": steps_reported[name],
        "numpy_formula": "epsilon hat" if hat else "epsilon after",
        "max_abs_diff_vs_numpy_first_tensor": float(np.max(np.abs(ps[0] - expected[hat]))),
        "max_abs_diff_vs_adam_xla": (None if reference is None or not hat else
                                     max(float(np.max(np.abs(a - b)))
                                         for a, b in zip(ps, reference)))}
  return {"steps": steps, "max_abs_param": scale,
          "tolerance": tolerance(steps, scale, learning_rate), "variants": rows}


def agreement_failures(agreement):
  """Human-readable reasons the variants did not do the same work; [] when they did."""
  failures = []
  for name, row in agreement["variants"].items():
    if row["steps"] != agreement["steps"]:
      failures.append(f"{name} applied {row['steps']} steps, others {agreement['steps']}")
    if row["steps_reported_by_variant"] != row["steps"]:
      failures.append(f"{name} counts {row['steps_reported_by_variant']} steps of the "
                      f"{row['steps']} it was given")
    for key, against in (("max_abs_diff_vs_adam_xla", REFERENCE),
                         ("max_abs_diff_vs_numpy_first_tensor", "float64 NumPy Adam")):
      diff = row[key]
      if diff is not None and not diff <= agreement["tolerance"]:  # NaN fails too
        failures.append(f"{name} differs from {against} by {diff:.3g} "
                        f"(tolerance {agreement['tolerance']:.3g})")
  return failures


# ---- Timing ------------------------------------------------------------------------------

def build_variants(problem, names, registry):
  """Constructs each variant and calls it once (tracing, compiling); untimed.

  Returns ({name: variant}, {name: setup figures}, {name: why it was skipped} for peers that
  cannot run).
  """
  variants, setup, skipped = {}, {}, {}
  try:
    for name in names:
      logging.info("[%s] %s: building and compiling ...", problem.case.label, name)
      start = time.perf_counter()
      try:
        variants[name] = variant = registry[name](problem)
      except PeerUnavailable as reason:
        logging.warning("[%s] %s skipped: %s", problem.case.label, name, reason)
        skipped[name] = str(reason)
        continue
      variant.run(1)
      setup[name] = {"first_call_seconds": time.perf_counter() - start,
                     "state_bytes": variant.state_bytes()}
  except BaseException:
    for variant in variants.values():
      variant.close()
    raise
  return variants, setup, skipped


def time_variants(label, variants, steps, rounds, warmup_rounds):
  """Untimed warm-up rounds, then interleaved timed rounds with the order rotated.

  `steps`: {name: updates (or probe passes) per run}. Returns ({name: per-round records},
  {name: steps applied in total, the first call included}, {name: step count reported}).
  """
  names = list(variants)
  applied = {name: 1 for name in names}  # the untimed first call
  reported = {}

  def run(name):
    applied[name] += steps[name]
    reported[name] = variants[name].run(steps[name])

  for r in range(warmup_rounds):
    logging.info("[%s] untimed warm-up round %d/%d ...", label, r + 1, warmup_rounds)
    for name in names:
      run(name)
  meter = cpu_load.CpuMeter()
  records = {name: [] for name in names}
  for r in range(rounds):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      started = meter.start()
      run(name)
      wall, cores, other = meter.stop(started)
      child = variants[name].child_cpu_seconds  # a peer's process: ours, not other load
      if child and cores is not None:
        cores += child / wall
        other = None if other is None else max(other - child / (wall * os.cpu_count()), 0.0)
      records[name].append({"seconds": wall, "steps": steps[name],
                            "ms_per_step": 1000 * wall / steps[name], "cores": cores,
                            "other_load": other})
      logging.info("[%s] round %d/%d  %-22s %4d steps in %6.3f s = %8.3f ms/step "
                   "(other processes %s)", label, r + 1, rounds, name, steps[name], wall,
                   1000 * wall / steps[name], cpu_load.format_share(other))
  return records, applied, reported


def summarize(records):
  ms = [r["ms_per_step"] for r in records]
  loads = [r["other_load"] for r in records if r["other_load"] is not None]
  return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
          "max_other_load": max(loads) if loads else None, "rounds": records}


def single_thread_bandwidth(megabytes, passes=_SINGLE_THREAD_PASSES):
  """The native probe on one thread: GB/s at 28 B per element (median of passes)."""
  probe = stream_probe.StreamProbe(megabytes, threads=1)
  try:
    probe.run(1)
    times = []
    for _ in range(passes):
      start = time.perf_counter()
      probe.run(1)
      times.append(time.perf_counter() - start)
  finally:
    probe.close()
  return {"megabytes": megabytes, "threads": 1, "passes": passes, "seconds_per_pass": times,
          "gbps": probe.bytes_per_pass / (statistics.median(times) * 1e9)}


# ---- One case ----------------------------------------------------------------------------

def benchmark_case(case, config, registry):
  """Builds, times and cross-checks every variant on one case; returns its report row."""
  names = list(config.variants) or list(registry)
  problem = make_problem(case, config.seed, config.bandwidth_mb, config.peer_python)
  variants, setup, skipped = build_variants(problem, names, registry)
  try:
    update_steps = config.steps or default_steps(case)
    steps = {n: v.steps_per_round(update_steps) for n, v in variants.items()}
    records, applied, reported = time_variants(case.label, variants, steps, config.rounds,
                                               config.warmup_rounds)
    logging.info("[%s] comparing parameters ...", case.label)
    agreement = compare_parameters(variants, problem, applied, reported)
    results = {n: {"kind": v.kind, "steps_per_round": steps[n], "bytes_per_step":
                   v.bytes_per_step(), **setup[n], **summarize(records[n])}
               for n, v in variants.items()}
    for n, v in variants.items():
      if v.kind == "probe":
        results[n].update(megabytes=v.megabytes, threads=v.threads)
      if v.kind == "peer":
        results[n]["version"] = v.version
  finally:
    for variant in variants.values():
      variant.close()
  del variants, problem
  gc.collect()
  row = {"params": case.params, "tensors": case.tensors, "tensor_size": case.size,
         "steps_per_round": update_steps, "agreement": agreement, "variants": results,
         "skipped": skipped}
  add_derived_figures(row)
  failures = agreement_failures(agreement)
  if failures:
    print(format_agreement([row]))
    raise ParameterMismatch(f"[{case.label}] the variants did not do the same work, so their "
                            "timings cannot be compared:\n  " + "\n  ".join(failures))
  return row


def add_derived_figures(row):
  """Probe bandwidth, Adam floor, and per variant: GB/s, x floor, keras jit / this, this /
  torch fused (x_torch), this / optax (x_optax)."""
  results = row["variants"]
  probe = results.get(PROBE)
  floor_ms = None
  if probe:
    probe["gbps"] = probe["bytes_per_step"] / (probe["median_ms"] * 1e6)
    floor_ms = ADAM_BYTES_PER_PARAM * row["params"] / (probe["gbps"] * 1e6)
  row["bandwidth_gbps"] = probe["gbps"] if probe else None
  row["adam_floor_ms"] = floor_ms
  baseline = results.get(BASELINE)
  for result in results.values():
    if result["kind"] == "probe":
      continue
    result["gbps"] = result["bytes_per_step"] / (result["median_ms"] * 1e6)
    # "x floor" for whatever moves Adam's bytes: the optimizers and the var, m, v reference.
    adam_bytes = result["bytes_per_step"] == ADAM_BYTES_PER_PARAM * row["params"]
    result["x_floor"] = result["median_ms"] / floor_ms if floor_ms and adam_bytes else None
    result["keras_jit_over_this"] = (baseline["median_ms"] / result["median_ms"]
                                     if baseline else None)
    for key, peer in (("x_torch", results.get(TORCH)), ("x_optax", results.get(OPTAX))):
      result[key] = result["median_ms"] / peer["median_ms"] if peer else None


# ---- Checks and reporting ----------------------------------------------------------------

def compute_checks(case_rows):
  """The issue's targets (TARGETS) for the cases that were run, as JSON-ready dicts."""
  checks = []
  for params, tensors, figure, key, comparison, threshold in TARGETS:
    row = next((r for r in case_rows if (r["params"], r["tensors"]) == (params, tensors)),
               None)
    adam = row["variants"].get(REFERENCE) if row else None
    value = adam.get(key) if adam else None
    if value is None:  # the probe, keras jit or the peer was not run
      continue
    passed = value <= threshold if comparison == "<=" else value >= threshold
    checks.append({"name": f"{figure} at {params:,} x {tensors}", "value": value,
                   "target": f"{comparison} {threshold:g}x", "passed": bool(passed),
                   "unit": "x"})
  return checks


def _fixed(value, digits=2, suffix=""):
  return "-" if value is None else f"{value:.{digits}f}{suffix}"


def format_results(case_rows):
  lines = []
  for row in case_rows:
    label = f"{row['params']:,} x {row['tensors']}"
    for name, r in row["variants"].items():
      times = (f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['max_ms']:.2f}")
      load = cpu_load.format_share(r["max_other_load"])
      if r["kind"] == "probe":
        lines.append((label, f"{name} {r['megabytes']} MB, {r['threads']} threads", *times,
                      "", "", "", "", f"{r['gbps']:.1f}", "", load))
        continue
      lines.append((label, name, *times, *(_fixed(r[k], suffix="x") for k in (
          "keras_jit_over_this", "x_torch", "x_optax", "x_floor")), f"{r['gbps']:.1f}",
                    f"{r['state_bytes'] / 2**20:.1f}", load))
    lines += [(label, f"{name}: skipped (see above)", *["-"] * 10) for name in row["skipped"]]
    if row["adam_floor_ms"]:
      lines.append((label, "Adam floor (28 B/param)", f"{row['adam_floor_ms']:.2f}", "", "", "",
                    "", "", "1.00x", f"{row['bandwidth_gbps']:.1f}", "", ""))
  return text_table.table(("case", "variant", "median ms", "min", "max", "keras jit/this",
                           "x torch", "x optax", "x floor", "GB/s", "state MB", "other load"),
                          lines)


def format_agreement(case_rows):
  lines = []
  for row in case_rows:
    agreement = row["agreement"]
    for name, a in agreement["variants"].items():
      lines.append((f"{row['params']:,} x {row['tensors']}", name, a["steps"],
                    "-" if a["max_abs_diff_vs_adam_xla"] is None else
                    f"{a['max_abs_diff_vs_adam_xla']:.2e}",
                    f"{a['max_abs_diff_vs_numpy_first_tensor']:.2e}", a["numpy_formula"],
                    f"{agreement['tolerance']:.2e}"))
  return text_table.table(("case", "variant", "steps", "max |diff| vs adam_xla",
                           "vs NumPy (1st tensor)", "NumPy formula", "tolerance"), lines)


def format_checks(checks):
  if not checks:
    return "Checks: none (no case of the issue's targets was run)."
  return "Checks (the issue's targets):\n" + text_table.table(
      ("check", "figure", "target", "result"),
      [(c["name"], f"{c['value']:.2f}{c['unit']}", c["target"],
        "PASS" if c["passed"] else "FAIL") for c in checks], left=1)


def print_header(command, info):
  print(f"command: {command}")
  print(f"machine: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} "
        f"usable), last-level cache {info['last_level_cache']}, {info['memory_gib']} GiB; "
        f"Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
        f"NumPy {info['numpy']}")
  env = info["environment"]
  print("environment (one process: applies to every variant alike): " +
        (", ".join(f"{k}={v}" for k, v in env.items()) if env else
         f"none of {', '.join(run_info.ENV_VARS)} set"), flush=True)


def print_report(report):
  config = report["config"]
  print()
  for row in report["cases"]:
    print(f"{row['params']:,} x {row['tensors']}: {row['tensors']} variables of "
          f"{row['tensor_size']:,} float32 ({row['params'] * 4 / 2**20:.0f} MB); "
          f"{config['warmup_rounds']} untimed + {config['rounds']} timed round(s) of "
          f"{row['steps_per_round']} updates per variant; {row['agreement']['steps']} updates "
          "applied in all")
  nb = report["single_thread_bandwidth"]
  print(f"bandwidth probe on 1 thread over {nb['megabytes']} MB (not used for the floor): "
        f"{nb['gbps']:.1f} GB/s")
  versions = sorted({f"{name} {r['version']}" for row in report["cases"]
                     for name, r in row["variants"].items() if r["kind"] == "peer"})
  if versions:
    print(f"peers (under {config['peer_python']}): {'; '.join(versions)}")
  skipped = sorted({f"{name} ({reason})" for row in report["cases"]
                    for name, reason in row["skipped"].items()})
  if skipped:
    print(f"SKIPPED rows: {'; '.join(skipped)}")
  print()
  print("Adam update alone, ms/update:")
  print(format_results(report["cases"]))
  print()
  print("Parameters after all rounds (every optimizer variant, same start, same gradients):")
  print(format_agreement(report["cases"]))
  print()
  print(format_checks(report["checks"]))
  print()
  print("keras jit/this: median of keras jit over this variant's (> 1: faster than Keras jit). "
        "x torch, x optax: this\n  variant's median over torch fused's, optax's (< 1: faster "
        "than the peer). x floor: median / Adam floor,\n  the floor being 28 B x params / probe "
        "bandwidth (probe: 28 B x elements per pass on every core, median over\n  the same "
        "rounds). GB/s: bytes moved / median (28 B x params for Adam and the var, m, v "
        "reference,\n  12 B for the bound; 10^9 B/s). state MB: the optimizer's own state (m, "
        "v, step count, ...), MB = 2^20 B.\n  other load: the largest share of the CPUs used by "
        "other processes during a timed run (from\n  /proc/stat; ? for runs under 0.1 s; a "
        "peer's own process is not counted as other).")
  noisy = sorted({f"{row['params']:,} x {row['tensors']}/{name}" for row in report["cases"]
                  for name, r in row["variants"].items()
                  if r["max_other_load"] is not None and r["max_other_load"] > 0.1})
  if noisy:
    print(f"WARNING: other processes used more than 10% of the CPUs during timed runs of "
          f"{', '.join(noisy)}; the machine was not quiet, so the numbers are noisy.")
  print(f"wall time: {report['wall_seconds']:.0f} s")


def write_json(report, path):
  # `bazel run` starts the tool in its runfiles tree; a relative path means the user's.
  path = os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY", ""), path)
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {path}")


def run(config, registry=None):
  """Runs every case of `config`; prints the report and returns it (the JSON dict).

  Raises ParameterMismatch when the variants of a case end with different parameters.
  """
  registry = VARIANTS if registry is None else registry
  validate(config, registry)
  command = config.command or run_info.command_line()
  info = run_info.machine_info()
  print_header(command, info)
  start = time.perf_counter()
  nb = single_thread_bandwidth(config.bandwidth_mb)
  case_rows = []
  for case in config.cases:
    case_rows.append(benchmark_case(case, config, registry))
    keras.backend.clear_session()
    gc.collect()
  checks = compute_checks(case_rows)
  config_dict = dataclasses.asdict(config)
  config_dict.update(cases=[f"{c.params}x{c.tensors}" for c in config.cases],
                     variants=list(config.variants) or list(registry),
                     learning_rate=LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON,
                     command=command)
  report = {"suite": "optimizer", "command": command, "machine": info, "config": config_dict,
            "single_thread_bandwidth": nb, "cases": case_rows, "checks": checks,
            "wall_seconds": time.perf_counter() - start}
  print_report(report)
  if config.json_out:
    write_json(report, config.json_out)
  return report


# ---- Flags -------------------------------------------------------------------------------

def define_flags(flag_values=flags.FLAGS):
  """Defines the tool's flags on `flag_values`.

  Not at import: other tools define --rounds, --seed, --quick too, and tests of several tools
  may share one process (the tests give each tool its own flags.FlagValues).
  """
  define = lambda kind, name, default, text: kind(name, default, text, flag_values=flag_values)
  define(flags.DEFINE_list, "cases", list(DEFAULT_CASES),
         "Cases PARAMSxTENSORS: PARAMS float32 parameters in TENSORS 1-D variables of "
         "PARAMS/TENSORS each (PARAMS a multiple of TENSORS), benchmarked one after the other.")
  define(flags.DEFINE_integer, "rounds", 7, "Timed interleaved rounds (every variant once).")
  define(flags.DEFINE_integer, "warmup_rounds", 1,
         "Untimed rounds of every variant after the first (compiling) calls.")
  define(flags.DEFINE_integer, "steps", None,
         f"Updates per round per variant (default per case: {_PARAMS_PER_ROUND:,} / PARAMS "
         f"within [{_MIN_STEPS}, {_MAX_STEPS}]: 20 at 16M, 100 at 1M).")
  define(flags.DEFINE_integer, "bandwidth_mb", 512,
         "Size of the bandwidth probe's four arrays together (MB = 2^20 B); keep it far above "
         "the last-level cache.")
  define(flags.DEFINE_string, "peer_python", None,
         "Python interpreter with torch and jax/optax (tools/requirements-peers.txt) for the "
         f"{TORCH} and {OPTAX} rows; without it they are skipped.")
  define(flags.DEFINE_integer, "seed", 0, "Seed of the initial values and the gradients.")
  define(flags.DEFINE_list, "variants", None,
         f"Variants to time (default all): {', '.join(VARIANTS)}.")
  define(flags.DEFINE_string, "json_out", None,
         "Write the report (raw per-round times, machine, config, checks) as JSON here; a "
         "relative path is taken from the directory `bazel run` was called in.")
  define(flags.DEFINE_bool, "quick", False,
         f"Smoke test: {QUICK}; flags given explicitly win.")


def config_from_flags(flag_values=flags.FLAGS):
  """The parsed flags as a Config (--quick values for flags not given explicitly)."""
  def setting(name):
    flag = flag_values[name]
    if flag_values.quick and not flag.present and name in QUICK:
      return QUICK[name]
    return flag.value
  peer_python = flag_values.peer_python
  if peer_python and os.sep in peer_python:  # a path, from where `bazel run` was called
    peer_python = os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY", ""), peer_python)
  return Config(cases=parse_cases(setting("cases")), rounds=setting("rounds"),
                warmup_rounds=setting("warmup_rounds"), steps=setting("steps"),
                bandwidth_mb=setting("bandwidth_mb"), seed=flag_values.seed,
                variants=tuple(v.strip() for v in flag_values.variants or ()),
                json_out=flag_values.json_out, quick=flag_values.quick,
                peer_python=peer_python, command=run_info.command_line())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = config_from_flags()
  try:
    run(config)
  except ParameterMismatch as e:
    sys.exit(f"FAILED: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
