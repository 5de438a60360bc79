"""Reading XLA's optimized HLO: which TensorFlow op each compiled kernel comes from, and which
kernels pass over a whole table (the embedding suite's account of the bytes an update moves).
"""

import glob
import math
import os
import re
import tempfile

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%(\S+) .*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%(\S+) = (\([^)]*\)|[^\s(]\S*) ([a-z][\w-]*)\(([^)]*)\)(.*)$")
_NAMED = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s")
_METADATA = re.compile(r"metadata=\{([^}]*)\}")
_METADATA_FIELD = re.compile(r'(op_type|op_name)="([^"]*)"')
_ARRAY = re.compile(r"^(\w+)\[([\d,]*)\]")
_ARRAYS = re.compile(r"\w+\[[\d,]*\]")
_DTYPE_BYTES = {
    "f32": 4, "f64": 8, "s32": 4, "s64": 8, "bf16": 2, "f16": 2, "pred": 1, "u32": 4, "u8": 1,
    "s8": 1
}
_IN_PLACE = ("scatter", "dynamic-update-slice")
_NOT_KERNELS = ("parameter", "constant", "bitcast", "tuple", "get-tuple-element")


def kernel_ops(hlo_text):
  """{instruction name: (op_type, op_name)} from the instructions' metadata."""
  kernels = {}
  for line in hlo_text.splitlines():
    match = _NAMED.match(line)
    if match:
      metadata = _METADATA.search(line)
      fields = dict(_METADATA_FIELD.findall(metadata.group(1))) if metadata else {}
      kernels[match.group(1)] = (fields.get("op_type", ""), fields.get("op_name", ""))
  return kernels


def dump_to_temporary_directory():
  """Makes XLA dump every module it compiles from now on; returns the directory.

  XLA reads XLA_FLAGS when it first compiles, so this works only in a process that has not
  compiled yet, which then should compile only what is to be profiled: kernel names repeat
  from one module to the next.
  """
  directory = tempfile.mkdtemp(prefix="adam_xla_hlo_")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_dump_to={directory} --xla_dump_hlo_as_text").strip()
  return directory


def dumped_kernel_ops(directory):
  """kernel_ops of every module XLA dumped after optimizations into `directory`."""
  kernels = {}
  for path in glob.glob(os.path.join(directory, "*after_optimizations.txt")):
    with open(path) as f:
      kernels.update(kernel_ops(f.read()))
  return kernels


def _array(shape):
  """(dtype, element count) of an HLO array shape, or None for tuples and tokens."""
  match = _ARRAY.match(shape or "")
  if not match:
    return None
  return match.group(1), math.prod(int(d) for d in match.group(2).split(",") if d)


def _parse(hlo_text):
  """{computation: {"shapes", "order", "root"}} and the entry computation's name."""
  computations, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(2)
      computations[current] = {"shapes": {}, "order": [], "root": None}
      entry = current if header.group(1) else entry
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      computation = computations[current]
      computation["shapes"][match.group(1)] = match.group(2)
      computation["order"].append(match.groups())
      if line.lstrip().startswith("ROOT"):
        computation["root"] = match.group(3)
  return computations, entry


def table_passes(hlo_text, table_elements):
  """The entry computation's kernels that read or write table-sized arrays, with their bytes.

  Each table-sized operand read and each table-sized result written (every table-sized
  element of a tuple result, as the CPU kernel's param, m and v) is one pass over the table.
  A scatter, or a fusion rooted in one, updates its operand in place and touches only the
  scattered rows, so it counts no table-wide bytes.
  """
  computations, entry = _parse(hlo_text)
  if entry is None:
    return []
  shapes = computations[entry]["shapes"]
  is_table = lambda shape: (_array(shape) or (None, None))[1] == table_elements
  size = lambda shape: _DTYPE_BYTES.get(_array(shape)[0], 4)
  passes = []
  for name, shape, opcode, operands, attributes in computations[entry]["order"]:
    if opcode in _NOT_KERNELS:
      continue
    operand_shapes = [shapes.get(op.strip().lstrip("%")) for op in operands.split(",")]
    reads = [s for s in operand_shapes if is_table(s)]
    writes = [s for s in _ARRAYS.findall(shape) if is_table(s)]  # each element of a tuple
    if not reads and not writes:
      continue
    called = re.search(r"calls=%([^\s,]+)", attributes)
    root = computations.get(called.group(1), {}).get("root") if called else None
    in_place = opcode in _IN_PLACE or root in _IN_PLACE
    passes.append({
        "kernel": name, "opcode": opcode, "root": root or opcode, "table_sized_reads": len(reads),
        "table_sized_writes": len(writes), "in_place_rows_only": in_place,
        "bytes_per_param": 0 if in_place else sum(map(size, reads + writes))
    })
  return passes
