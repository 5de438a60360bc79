"""Internal: the dense float32 Adam update on CPU as one pass over memory, inside the XLA program.

XLA:CPU compiles `update_rule.adam_step` into three loops per tensor (m, v, then the variable
from the new m and v): 40 bytes of memory traffic per parameter where 28 are needed, and the
update is memory-bound. cpu_kernel.cc does it in one loop, split over two threads. It is
compiled here on first use with the machine's C++ compiler (a few seconds, cached), registered
as an XLA:CPU custom call target, and called once for all the tensors of one device's update
through an `XlaCallModule` op whose StableHLO custom call aliases its outputs to the param, m
and v inputs, so that XLA updates the variables' buffers in place (the plain `XlaCustomCallV2`
op cannot alias, and XLA then copies every result). One call rather than one per tensor also
saves XLA's per-kernel dispatch on models with many small variables.

A second target does the same for a table with a sparse gradient in dense mode
(`update_rule.adam_step_at_rows`: every row moves, most with a zero gradient): 24 bytes per
parameter in one pass, where XLA:CPU's loops and scatters move 32 in three and stay at 36-40
GB/s when the machine's memory could stream 100 GB/s or more.

Used only where it computes what `adam_step` (`adam_step_at_rows`) computes: float32, no
amsgrad, in the optimizer's XLA-compiled update (jit_compile=True, the default), on a CPU
device. Everywhere else (GPU, TPU, no compiler, ADAM_XLA_CPU_KERNEL=0, lazy sparse mode) the
update is `update_rule`'s, which XLA fuses well on accelerators. The arithmetic is the same
operation for operation, without fused multiply-adds, so both paths agree to within a rounding.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

from absl import logging
import tensorflow as tf

# XlaCallModule is not in tf.raw_ops; this is the generated wrapper TensorFlow's own jax2tf uses.
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

TARGET = "adam_xla_adam_update_f32"
ROWS_TARGET = "adam_xla_adam_rows_f32"
COPY_TARGET = "adam_xla_copy_ranges_f32"
ENV_SWITCH = "ADAM_XLA_CPU_KERNEL"  # "0" turns the kernel off
ENV_CACHE_DIR = "ADAM_XLA_CACHE_DIR"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernel.cc")
_XLA_CALL_MODULE_VERSION = 9

_lock = threading.Lock()
_state = {"loaded": None, "reason": None}


def enabled():
  """False when ADAM_XLA_CPU_KERNEL=0 asks for XLA's own loops."""
  return switched_on(ENV_SWITCH)


def switched_on(variable):
  """False when the environment variable is set to 0, false, no or off."""
  return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")


def _compile_flags():
  flags = ["-O3", "-shared", "-fPIC", "-std=c++17", "-ffp-contract=off", "-fno-math-errno"]
  if _cpu_has("avx2"):
    flags.append("-mavx2")
  return flags


def _cpu_has(feature):
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("flags"):
          return feature in line.split()
  except OSError:
    pass
  return False


def _cache_dirs():
  """Where to keep the built kernel: the user's cache, else (read-only home, sandboxes such as
  Bazel's tests) the temporary directory."""
  if os.environ.get(ENV_CACHE_DIR):
    return [os.environ[ENV_CACHE_DIR]]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return [
      os.path.join(base, "adam_xla"),
      os.path.join(tempfile.gettempdir(), f"adam_xla-{os.getuid()}")
  ]


def library_path(compiler, flags, cache_dir=None):
  """Where the kernel built from this source, compiler, flags and TensorFlow is cached."""
  with open(_SOURCE, "rb") as source:
    key = hashlib.sha256(source.read())
  for part in [compiler, tf.__version__, tf.sysconfig.get_lib(), platform.machine()] + flags:
    key.update(part.encode())
  directory = _cache_dirs()[0] if cache_dir is None else cache_dir
  return os.path.join(directory, f"cpu_kernel-{key.hexdigest()[:16]}.so")


def _build(compiler, flags, path):
  """Compiles to a temporary file and renames it, so that concurrent builds never see half."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lib_dir = tf.sysconfig.get_lib()
  fd, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
  os.close(fd)
  command = (
      [compiler] + flags +
      [_SOURCE, "-o", partial, f"-L{lib_dir}", "-l:libtensorflow_cc.so.2", f"-Wl,-rpath,{lib_dir}"])
  try:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def load():
  """Builds (once per machine) and registers the kernel; returns whether it can be used."""
  with _lock:
    if _state["loaded"] is None:
      _state["loaded"], _state["reason"] = _load()
      if not _state["loaded"]:
        logging.warning(
            "adam_xla: the one-pass CPU Adam kernel is not used (%s); the update "
            "runs as XLA's own loops, which is correct but slower on CPU.", _state["reason"])
    return _state["loaded"]


def _load():
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
    return False, f"not built for {platform.system()} {platform.machine()}"
  compiler = shutil.which(os.environ.get("CXX", "")) or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    return False, "no C++ compiler found (set CXX, or install g++)"
  flags = _compile_flags()
  problems = []
  for cache_dir in _cache_dirs():
    path = library_path(compiler, flags, cache_dir)
    try:
      if not os.path.exists(path):
        logging.info("adam_xla: compiling the CPU Adam kernel into %s", path)
        _build(compiler, flags, path)
      ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # its static initializer registers TARGET
      return True, None
    except RuntimeError as error:  # the compiler failed: another directory will not help
      return False, str(error)
    except OSError as error:  # e.g. a read-only directory: try the next one
      problems.append(f"{cache_dir}: {error}")
  return False, "; ".join(problems)


@tf.autograph.experimental.do_not_convert  # plain Python, run while tracing
def applies(var, grad, vhat):
  """Whether the update of `var` (one device's copy) can use the kernel.

  Call only while tracing a function compiled with XLA (jit_compile=True): the op it emits
  has no kernel outside XLA.
  """
  if isinstance(grad, tf.IndexedSlices) or not _kernel_can_update(var, vhat):
    return False
  return load()


@tf.autograph.experimental.do_not_convert  # plain Python, run while tracing
def applies_to_rows(var, grad, vhat):
  """Whether the dense-mode update of `var` by the sparse `grad` can use the rows kernel.

  `grad` must already have its duplicates summed (sparse.sum_duplicates). Call only while
  tracing a function compiled with XLA, as for `applies`.
  """
  if not isinstance(grad, tf.IndexedSlices) or not _kernel_can_update(var, vhat):
    return False
  values = grad.values.shape
  if grad.values.dtype != tf.float32 or var.shape.rank < 1:
    return False
  if not values.is_fully_defined() or values[0] == 0 or values[1:] != var.shape[1:]:
    return False  # the rows kernel's module needs static shapes
  return load()


def _kernel_can_update(var, vhat):
  """What both kernels need of the variable: `can_update`, no amsgrad, while tracing."""
  return vhat is None and not tf.executing_eagerly() and can_update(var, load_kernel=False)


def can_update(var, load_kernel=True):
  """Whether the kernels can update `var` (switched on, float32, a static non-empty shape,
  on a CPU device) and, with `load_kernel`, are built and loaded."""
  if not enabled() or var.dtype.base_dtype != tf.float32 or not _on_cpu(var):
    return False
  if var.shape.num_elements() in (None, 0):
    return False
  return load() if load_kernel else True


def _on_cpu(var):
  device = var.device
  if device:
    return tf.DeviceSpec.from_string(device).device_type == "CPU"
  return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


_ELEMENT_TYPES = {tf.float32: "f32", tf.int64: "i64"}


def _call_in_place(target, operands, updated, config):
  """Calls the kernel `target` (an XLA:CPU custom call) on `operands` (1-D float32 or int64
  tensors) through an `XlaCallModule` op. Result i is the new value of operand updated[i],
  and the StableHLO custom call aliases it to that operand, so that XLA updates the buffer in
  place instead of copying it. `config` is the kernel's backend_config string."""
  types = [f"tensor<{t.shape[0]}x{_ELEMENT_TYPES[t.dtype]}>" for t in operands]
  results = ", ".join(types[i] for i in updated)
  names = ", ".join(f"%a{i}" for i in range(len(operands)))
  aliases = ", ".join(  # a single result is not a tuple: it has no index
      f"#stablehlo.output_operand_alias<output_tuple_indices = "
      f"[{result if len(updated) > 1 else ''}], operand_index = {operand}, "
      "operand_tuple_indices = []>" for result, operand in enumerate(updated))
  module = ("module @adam_xla_kernel {\n"
            f"  func.func public @main({', '.join(f'%a{i}: {t}' for i, t in enumerate(types))}) -> "
            f"({results}) {{\n"
            f"    %0:{len(updated)} = stablehlo.custom_call @{target}({names}) "
            f"{{api_version = 3 : i32, backend_config = \"{config}\", "
            f"output_operand_aliases = [{aliases}]}} : ({', '.join(types)}) -> ({results})\n"
            f"    return {', '.join(f'%0#{i}' for i in range(len(updated)))} : {results}\n"
            "  }\n"
            "}\n")
  return gen_xla_ops.xla_call_module(operands, version=_XLA_CALL_MODULE_VERSION, module=module,
                                     Sout=[operands[i].shape for i in updated],
                                     Tout=[operands[i].dtype for i in updated], platforms=["CPU"])


def _scalars(c, apply_if):
  """The kernels' coefficients operand: lr_t, beta_1, beta_2, epsilon, decay, apply."""
  zero = tf.zeros([], tf.float32)
  apply = tf.ones([], tf.float32) if apply_if is None else tf.cast(apply_if, tf.float32)
  return tf.stack([
      c.lr_t, c.beta_1, c.beta_2, c.epsilon, zero if c.decay is None else c.decay, apply
  ])


def adam_steps(params, grads, buffers, layouts, decays, coefficients, apply_if=None):
  """`update_rule.adam_step` (without amsgrad) of several tensors by one call of the kernel.

  `buffers` are the m and v state as 1-D float32 tensors; `layouts[i]` = (m, v, offset) says
  that tensor i's m and v are elements [offset, offset + size) of buffers[m] and buffers[v].
  A layout (m, v, offset, start, size) updates elements [start, start + size) of param i
  (flattened) and of its gradient only, and keeps the param's others. Returns (the new params,
  shaped as given; the new buffers). `decays[i]` says whether decoupled weight decay
  (coefficients.decay) applies to tensor i. Call only where `applies` is true for each. With
  `apply_if` False the inputs come back unchanged.
  """
  c = coefficients
  shapes = [param.shape for param in params]
  decays = [bool(d) and c.decay is not None for d in decays]
  operands, config = [], []  # param and grad of tensor i at 2i, 2i+1, then the buffers, c
  for param, grad, shape, decay, layout in zip(params, grads, shapes, decays, layouts):
    m, v, offset, start, size = tuple(layout) + (0, shape.num_elements())[len(layout) - 3:]
    operands += [tf.reshape(param, [-1]), tf.reshape(grad, [-1])]
    config.append(f"{size}:{int(decay)}:{m}:{v}:{offset}:{start}")
  operands += list(buffers) + [_scalars(c, apply_if)]
  n = len(params)
  updated = [2 * i for i in range(n)] + [2 * n + j for j in range(len(buffers))]
  outputs = _call_in_place(TARGET, operands, updated, ",".join(config))
  return ([tf.reshape(t, shape) for t, shape in zip(outputs[:n], shapes)], list(outputs[n:]))


def adam_step_at_rows(param, indices, row_grads, m, v, coefficients, apply_if=None):
  """`update_rule.adam_step_at_rows` (without amsgrad) by the rows kernel: (param, m, v).

  Decoupled weight decay applies when coefficients.decay is set. Call only where
  `applies_to_rows` is true. With `apply_if` False the inputs come back unchanged.
  """
  shape = param.shape
  rows, width = shape[0], shape[1:].num_elements()
  entries = row_grads.shape[0]
  decays = coefficients.decay is not None
  operands = [tf.reshape(t, [rows * width]) for t in (param, m, v)]
  operands += [
      tf.cast(tf.reshape(indices, [entries]), tf.int64),
      tf.reshape(row_grads, [entries * width]),
      _scalars(coefficients, apply_if)
  ]
  outputs = _call_in_place(ROWS_TARGET, operands, [0, 1, 2],
                           f"{rows}:{width}:{entries}:{int(decays)}")
  return tuple(tf.reshape(t, shape) for t in outputs)


def copy_ranges(destinations, sources, copies):
  """Copies 1-D float32 `sources` into ranges of 1-D float32 `destinations` by one call of the
  copy kernel; returns the new destinations (in place). `copies` are (destination, start,
  source) index triples: sources[source] goes to destinations[destination] from `start` on."""
  operands = list(destinations) + list(sources)
  config = ",".join(f"{d}:{start}:{s}:{sources[s].shape[0]}" for d, start, s in copies)
  return _call_in_place(COPY_TARGET, operands, list(range(len(destinations))), config)
