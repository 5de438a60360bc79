"""Internal: the update of one device's variables, and the choice of what computes it.

A front end (`adam_xla.Adam`) owns the state (slots, iteration count, hyperparameters) and
the gradients' preparation (replica sum, clipping, sparse duplicates summed). It then calls
`update`, then `constrain`, once per device, with that device's copies, and everything below
is decided here:

* which backend computes each variable's step:
  - the one-pass CPU kernel for dense float32 gradients (`cpu_kernel.adam_steps`, one call
    for all of them, reading packed m and v (`slots.Packed`) by offset),
  - the CPU rows kernel for sparse gradients in dense mode (`cpu_kernel.adam_step_at_rows`),
  - `update_rule.adam_step_at_rows` as XLA ops for other sparse gradients in dense mode,
  - a gather / step / scatter of the batch's rows for sparse gradients in lazy mode,
  - `update_rule.adam_step` as XLA ops for everything else (and everywhere on GPU and TPU);
* how a step that must not happen (`apply_if` False) leaves every variable and slot exactly
  as it was: a select of the new and old values where the select fuses into the loop that
  computes them, and inside the kernels or the moments' coefficients where a select would
  cost another pass over a table;
* variables' constraints, applied after the step (`constrain`).

The kernels are used only while tracing an XLA-compiled update (`use_cpu_kernels`), since
their op has no implementation outside XLA.
"""

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

from adam_xla import cpu_kernel
from adam_xla import slots as slots_lib
from adam_xla import sparse
from adam_xla import update_rule

SPARSE_MODES = ("dense", "lazy")
PACK_SWITCH = "ADAM_XLA_PACK_SLOTS"  # "0": every variable keeps its own m and v (read at build)


@dataclasses.dataclass(frozen=True)
class Options:
  """What the front end fixed at construction.

  sparse_mode: "dense" or "lazy" (see `adam_xla.Adam`).
  use_cpu_kernels: whether the update is being traced for XLA, where the CPU kernels run.
  """

  sparse_mode: str = "dense"
  use_cpu_kernels: bool = True


def update(variables: Sequence[tf.Variable], grads, slots: Sequence[update_rule.Moments],
           decays: Sequence[bool], coefficients, apply_if: Optional[tf.Tensor], options: Options):
  """Applies one Adam step to `variables`, one device's copies, in place.

  Args:
    variables: the variables on this device.
    grads: their gradients, summed over replicas and clipped; a `tf.IndexedSlices` gradient
      must have its duplicate indices summed (`sparse.sum_duplicates`).
    slots: each variable's slot variables on this device (vhat None without amsgrad).
    decays: whether decoupled weight decay applies to each variable.
    coefficients: the step's `update_rule.StepCoefficients` by dtype name; their `decay` is
      set when weight decay is on.
    apply_if: None, or a boolean scalar: when False, nothing changes.
    options: the front end's fixed choices.
  """
  by_kernel, packed_by_xla = [], []
  for var, grad, moments, decay in zip(variables, grads, slots, decays):
    c = coefficients[var.dtype.base_dtype.name]
    c = c if decay else c._replace(decay=None)
    if isinstance(moments, slots_lib.Packed):
      grad = _dense(grad, var)  # small, and dense mode's step is the dense one
      if options.use_cpu_kernels and cpu_kernel.applies(var, grad, None):
        by_kernel.append((var, grad, moments, decay))
      else:
        packed_by_xla.append((var, grad, moments, c))
    elif options.use_cpu_kernels and cpu_kernel.applies(var, grad, moments.vhat):
      by_kernel.append((var, grad, moments, decay))
    elif not isinstance(grad, tf.IndexedSlices):
      _assign(var, moments,
              *_selected(apply_if, update_rule.adam_step(var, grad, moments, c), (var, moments)))
    elif options.sparse_mode == "lazy":
      _update_rows_lazily(var, grad, moments, c, apply_if)
    elif options.use_cpu_kernels and cpu_kernel.applies_to_rows(var, grad, moments.vhat):
      new_var, m, v = cpu_kernel.adam_step_at_rows(var, grad.indices, grad.values, moments.m,
                                                   moments.v, c, apply_if)
      _assign(var, moments, new_var, update_rule.Moments(m, v))
    else:
      _assign(var, moments, *adam_step_at_rows(var, grad, moments, c, apply_if))
  if by_kernel:
    _update_by_kernel(by_kernel, coefficients[tf.float32.name], apply_if)
  if packed_by_xla:
    _update_packed_with_xla(packed_by_xla, apply_if)


def packs_slots(var, options, amsgrad):
  """Whether `var`'s m and v may live in flat buffers shared with other variables'
  (`slots.Packed`): only where the CPU kernel, which reads them by offset, will update it.
  Lazy mode is left out: its row updates need a variable's own slots."""
  return (options.use_cpu_kernels and options.sparse_mode == "dense" and not amsgrad and
          cpu_kernel.switched_on(PACK_SWITCH) and cpu_kernel.can_update(var))


def constrain(variables, constraints, apply_if: Optional[tf.Tensor]):
  """Applies each variable's constraint (None: none) to it after its step, as Keras does.

  A skipped step (`apply_if` False) keeps the variable as it was: a variable need not start
  inside its constraint, and a constraint need not be idempotent (MaxNorm scales by
  norm / (epsilon + norm) every time). Variables without a constraint cost nothing.
  """
  for var, constraint in zip(variables, constraints):
    if constraint is not None:
      new = tf.convert_to_tensor(constraint(var), var.dtype.base_dtype)
      var.assign(new if apply_if is None else tf.where(apply_if, new, var))


def adam_step_at_rows(var, grad, moments, c, apply_if=None):
  """`update_rule.adam_step_at_rows` as XLA ops, skipped when `apply_if` is False.

  A select of the scattered moments would be another pass over the table. Instead a skipped
  step keeps them through their coefficients: beta 1 keeps m and v, and the batch's rows add
  -0.0 to m (the exact additive identity, so negative zeros survive) and +0.0 to v (never
  negative). vhat = max(vhat, v) is then vhat again (vhat >= v always), and the variable is
  selected, which fuses into the loop computing it. (A select of vhat as well would make XLA
  copy the old vhat for the variable's loop.)
  """
  rows = grad.values
  if apply_if is not None:
    one = tf.ones([], c.beta_1.dtype)
    c = c._replace(beta_1=tf.where(apply_if, c.beta_1, one),
                   beta_2=tf.where(apply_if, c.beta_2, one))
    # -0.0 (not tf.constant(-0.0): eagerly TF may hand back its cached 0.0, which equals it);
    # the rows of a skipped step may be NaN, which must not reach m.
    rows = tf.where(apply_if, rows, -tf.zeros([], rows.dtype))
  new_var, new = update_rule.adam_step_at_rows(var, grad.indices, rows, moments, c)
  return (new_var if apply_if is None else tf.where(apply_if, new_var, var)), new


def _update_rows_lazily(var, grad, moments, c, apply_if):
  """Lazy mode: the rows in `grad` and nothing else."""
  rows = grad.indices
  gather = lambda t: None if t is None else tf.gather(t, rows)
  old = (gather(var), update_rule.Moments(*(gather(s) for s in moments)))
  new = _selected(apply_if,
                  update_rule.adam_step(old[0], sparse.first_entry_padding(grad), old[1], c), old)
  for target, value in zip(_flat(var, moments), _flat(*new)):
    if target is not None:
      target.scatter_update(tf.IndexedSlices(value, rows))


def _update_by_kernel(updates, coefficients, apply_if):
  """One call of the one-pass kernel for all the dense float32 variables, in place; the
  kernel honours apply_if itself (the same for all). Each slot variable or packed buffer is
  one operand, however many variables' m or v it holds."""
  variables, grads, slots, decays = zip(*updates)
  buffers, positions, layouts = [], {}, []

  def position(buffer):
    if buffer.ref() not in positions:
      positions[buffer.ref()] = len(buffers)
      buffers.append(buffer)
    return positions[buffer.ref()]

  for moments in slots:
    offset = moments.offset if isinstance(moments, slots_lib.Packed) else 0
    layouts.append((position(moments.m), position(moments.v), offset))
  new_variables, new_buffers = cpu_kernel.adam_steps(
      variables, grads, [tf.reshape(b, [b.shape.num_elements()]) for b in buffers], layouts, decays,
      coefficients, apply_if)
  for target, value in zip(variables + tuple(buffers), new_variables + new_buffers):
    target.assign(tf.reshape(value, target.shape))


def _dense(grad, var):
  if not isinstance(grad, tf.IndexedSlices):
    return grad
  return tf.scatter_nd(tf.expand_dims(grad.indices, -1), grad.values, var.shape)


def _update_packed_with_xla(updates, apply_if):
  """`update_rule.adam_step` of variables whose m and v are ranges of packed buffers, where
  the kernel is off (ADAM_XLA_CPU_KERNEL=0 set after the slots were built packed): correct,
  but slower than either the kernel or XLA on a variable's own slots."""
  by_buffer = {}
  for update in updates:
    by_buffer.setdefault(update[2].m.ref(), []).append(update)
  for group in by_buffer.values():
    variables, grads, packed, cs = zip(*group)
    new_variables = _steps_in_ranges(variables, grads, update_rule.Moments(
        packed[0].m, packed[0].v), [p.offset for p in packed], cs, apply_if)
    for var, new in zip(variables, new_variables):
      var.assign(new)


def _steps_in_ranges(params, grads, buffers, offsets, cs, apply_if):
  """`update_rule.adam_step` of `params` whose moments are the ranges at `offsets` of the flat
  `buffers` (`update_rule.Moments` of variables); returns the new params and writes the
  buffers. Each buffer is read once and written once whole, the new ranges and the untouched
  ones between them: writing each range on its own made XLA copy the whole buffer per range."""
  old = update_rule.Moments(*(None if b is None else tf.convert_to_tensor(b) for b in buffers))
  new_params, new_ranges = [], {}
  for param, grad, offset, c in zip(params, grads, offsets, cs):
    end = offset + param.shape.num_elements()
    moments = update_rule.Moments(
        *(None if b is None else tf.reshape(b[offset:end], param.shape) for b in old))
    new_param, new = _selected(apply_if, update_rule.adam_step(param, grad, moments, c),
                               (param, moments))
    new_params.append(new_param)
    new_ranges[offset] = (end, new)
  for slot, buffer in zip(update_rule.Moments._fields, buffers):
    if buffer is None:
      continue
    old_flat, pieces, at = getattr(old, slot), [], 0
    for offset in sorted(new_ranges):
      end, new = new_ranges[offset]
      pieces += [old_flat[at:offset], tf.reshape(getattr(new, slot), [end - offset])]
      at = end
    pieces.append(old_flat[at:])
    buffer.assign(tf.concat(pieces, 0))
  return new_params


# ---- Sharded state (see `sharding`) ---------------------------------------------------------


def update_shard(variables, grads, decays, indices, layout, shards, c, apply_if, options, shard):
  """The step of shard `shard` of a sharded group, on one device, in place.

  `variables` (this device's copies) and their `grads` are the group's variables that have a
  gradient in this step, at positions `indices` of `layout`; `shards` are this replica's
  `update_rule.Moments` shard variables. The shard's elements of the variables and the shard's
  state are updated; `sharding.step` then copies them to the other replicas.
  """
  position = {index: k for k, index in enumerate(indices)}
  pieces = [(p, position[p.index]) for p in layout.pieces(shard) if p.index in position]
  if not pieces:
    return
  grads = [_dense_for_shard(grads[k], variables[k], options) for _, k in pieces]
  params = [variables[k] for _, k in pieces]
  piece_decays = [decays[k] for _, k in pieces]
  if options.use_cpu_kernels and cpu_kernel.applies(shards.m, grads[0], shards.vhat):
    # The kernel reads and writes the shard's range of each whole variable in place.
    new_params, (new_m, new_v) = cpu_kernel.adam_steps(
        params, grads, [tf.convert_to_tensor(shards.m),
                        tf.convert_to_tensor(shards.v)],
        [(0, 1, p.at, p.start, p.size) for p, _ in pieces], piece_decays, c, apply_if)
    shards.m.assign(new_m)
    shards.v.assign(new_v)
  else:
    new_pieces = _steps_in_ranges(
        [_window(param, p) for param, (p, _) in zip(params, pieces)],
        [_window(grad, p) for grad, (p, _) in zip(grads, pieces)], shards,
        [p.at for p, _ in pieces],
        [c if decay else c._replace(decay=None) for decay in piece_decays], apply_if)
    new_params = [
        _with_range(param, p.start, new, options)
        for param, (p, _), new in zip(params, pieces, new_pieces)
    ]
  for param, new in zip(params, new_params):
    param.assign(new)


def write_ranges(variables, targets, values, options):
  """Writes each of `values` into this device's copy of variable targets[i][0] (flattened)
  from element targets[i][1] on, in place: one call of the CPU copy kernel, else XLA's
  dynamic-update-slices."""
  by_variable = {}
  for (k, start), value in zip(targets, values):
    by_variable.setdefault(k, []).append((start, tf.reshape(value, [-1])))
  ks = sorted(by_variable)
  if options.use_cpu_kernels and all(cpu_kernel.can_update(variables[k]) for k in ks):
    sources = [value for k in ks for _, value in by_variable[k]]
    copies, at = [], 0
    for d, k in enumerate(ks):
      for start, _ in by_variable[k]:
        copies.append((d, start, at))
        at += 1
    news = cpu_kernel.copy_ranges([tf.reshape(variables[k], [-1]) for k in ks], sources, copies)
  else:
    news = []
    for k in ks:
      new = variables[k]
      for start, value in by_variable[k]:
        new = _with_range(new, start, value, options)
      news.append(new)
  for k, new in zip(ks, news):
    variables[k].assign(tf.reshape(new, variables[k].shape))


def _dense_for_shard(grad, var, options):
  """A sharded variable's gradient as a dense tensor (dense mode's step is the dense one)."""
  if not isinstance(grad, tf.IndexedSlices):
    return grad
  if options.sparse_mode == "lazy":
    raise ValueError(f"Adam: variable '{var.name}' has a sparse gradient, and its state is sharded "
                     "(shard_state=True); lazy mode needs the rows' own state. Exclude it with "
                     "`exclude_from_state_sharding` before the optimizer is built.")
  return _dense(grad, var)


def _window(tensor, piece):
  """Elements [piece.start, piece.start + piece.size) of `tensor`, flattened."""
  return tf.reshape(tensor, [-1])[piece.start:piece.start + piece.size]


def _with_range(tensor, start, values, options):
  """`tensor` with its flattened elements from `start` on replaced by the 1-D `values`: an
  in-place dynamic-update-slice when compiled by XLA."""
  flat = tf.reshape(tensor, [-1])
  if options.use_cpu_kernels:  # i.e. traced for XLA (jit_compile)
    flat = gen_xla_ops.xla_dynamic_update_slice(flat, values, tf.constant([start]))
  else:
    flat = tf.concat([flat[:start], values, flat[start + values.shape[0]:]], 0)
  return tf.reshape(flat, tensor.shape)


def _selected(apply_if, new, old):
  """(var, moments) `new` where apply_if holds, else `old`."""
  if apply_if is None:
    return new
  pick = lambda n, o: None if n is None else tf.where(apply_if, n, o)
  return pick(new[0], old[0]), update_rule.Moments(*map(pick, new[1], old[1]))


def _flat(var, moments):
  return (var, moments.m, moments.v, moments.vhat)


def _assign(var, slots, new_var, new_moments):
  for target, value in zip(_flat(var, slots), _flat(new_var, new_moments)):
    if target is not None and value is not None:
      target.assign(value)
