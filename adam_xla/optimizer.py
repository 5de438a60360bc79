"""`adam_xla.Adam`: the Adam optimizer of the Keras documentation, built to compile with XLA.

The update rule lives in `update_rule`, clipping in `clipping`, sparse-gradient handling in
`sparse` and everything about `tf.distribute` in `distribution`; this class owns the state
(slots, iteration count, hyperparameters) and puts those pieces together.
"""

import dataclasses
import types
import warnings

import numpy as np
import tensorflow as tf

from adam_xla import clipping
from adam_xla import cpu_kernel
from adam_xla import distribution
from adam_xla import hyperparameters
from adam_xla import sparse
from adam_xla import update_rule

SPARSE_MODES = ("dense", "lazy")
_CLIP_KWARGS = ("clipnorm", "clipvalue", "global_clipnorm")
_ARGUMENTS = ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "name",
              "sparse_mode", "weight_decay", "jit_compile") + _CLIP_KWARGS
_HYPERPARAMETERS = ("learning_rate", "beta_1", "beta_2", "epsilon")
_SUPPORTED_DTYPES = (tf.float32, tf.float64)


@dataclasses.dataclass(frozen=True)
class _Settings:
  """Choices fixed at construction (they change the traced program, so they are not state)."""

  amsgrad: bool
  sparse_mode: str
  weight_decay: float
  jit_compile: bool
  clip: clipping.ClipConfig


# Checkpoints track tf.Module attributes that are variables, lists, dicts or trackables; a
# SimpleNamespace is none of these, so what it holds is not saved. Hyperparameter variables are
# kept there so that a resumed run uses the hyperparameters it was started with.
_Untracked = types.SimpleNamespace


class Adam(tf.Module):
  """Adam, exactly as `tf.keras.optimizers.Adam` is documented, for XLA-compiled steps.

  Args:
    learning_rate: float, tensor, `keras.optimizers.schedules.LearningRateSchedule` (called
      with the iteration count) or zero-argument callable. Default 0.001.
    beta_1: decay of the first-moment estimate; float, tensor or zero-argument callable.
      Default 0.9.
    beta_2: decay of the second-moment estimate; same types. Default 0.999.
    epsilon: "epsilon hat" of Kingma & Ba (the formula just before Section 2.1), not the
      epsilon of Algorithm 1; default 1e-7. For Inception on ImageNet 1.0 or 0.1 work better.
      Must be > 0, and a normal number in each variable's dtype (checked when the variable is
      built): with 0 a zero gradient element gives 0 / 0. Betas must stay below 1 there too.
    amsgrad: use the running maximum of the second moment (Reddi et al., 2018).
    name: the optimizer's name, used for its variables.
    sparse_mode: how `tf.IndexedSlices` gradients update a variable. "dense" (default) is
      exactly the dense update: every row's moments decay every step and rows absent from
      the batch still move. The dense gradient is never built (the batch's rows are added
      into the decayed moments in place), which saves its memory and a quarter of the
      step's memory traffic. "lazy" updates only the rows in the batch (LazyAdam, the TPU
      embedding "lazy Adam"), whose cost does not grow with the table size; an empty
      IndexedSlices changes no row. Indices outside [0, rows) raise a ValueError when
      `apply_gradients` runs eagerly; inside tf.function/XLA they are not checked, and under
      XLA those rows are ignored (see `sparse`).
    weight_decay: decoupled weight decay (AdamW); 0 (default) is plain Adam. Each step first
      shrinks a variable by learning_rate * weight_decay * var (in lazy mode, only the rows
      in the batch). See `exclude_from_weight_decay`.
    jit_compile: compile the update of all variables on a device as one XLA program (the
      default). Inside a compiled step it is part of that step's program either way; False
      runs it as ordinary TensorFlow ops, e.g. for debugging with tf.print.
    **kwargs: `clipnorm` (clip each gradient's norm), `clipvalue` (clip each element) or
      `global_clipnorm` (clip the norm of all gradients together); `clipnorm` and
      `global_clipnorm` exclude each other.

  Update, with t = iterations + 1:
    lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m = beta_1 * m + (1 - beta_1) * g;  v = beta_2 * v + (1 - beta_2) * g^2
    var = var - lr_t * m / (sqrt(v) + epsilon)     (amsgrad: max(vhat, v) in place of v)

  Usage:
    >>> opt = adam_xla.Adam(learning_rate=0.1)
    >>> var1 = tf.Variable(10.0)
    >>> loss = lambda: (var1 ** 2) / 2.0  # d(loss)/d(var1) == var1
    >>> step_count = opt.minimize(loss, [var1]).numpy()
    >>> var1.numpy()  # the first step is -learning_rate * sign(grad)
    9.9
  """

  def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
               amsgrad=False, name="Adam", *, sparse_mode="dense", weight_decay=0.0,
               jit_compile=True, **kwargs):
    super().__init__()
    self._optimizer_name = name
    self._settings = _validated_settings(amsgrad, name, sparse_mode, weight_decay, jit_compile,
                                         kwargs)
    self._decay_exclusions = _Untracked(refs=set(), names=set())
    # The update of all variables on one device, as one XLA program. Inside a step that is
    # itself compiled it is inlined into that program.
    self._compiled = _Untracked(update_variables=(
        tf.function(self._update_variables, jit_compile=True) if self.jit_compile
        else self._update_variables))
    self._hyper = _Untracked(
        learning_rate=hyperparameters.validate(
            "learning_rate", learning_rate, low=0.0, allow_schedule=True),
        beta_1=hyperparameters.validate("beta_1", beta_1, 0.0, 1.0, high_open=True),
        beta_2=hyperparameters.validate("beta_2", beta_2, 0.0, 1.0, high_open=True),
        epsilon=hyperparameters.validate("epsilon", epsilon, low=0.0, low_open=True))
    # Slot variables by variable: {var.ref(): {"m": ..., "v": ..., "vhat": ...}}.
    self._slot_index = _Untracked(slots={}, keys=set())
    # What checkpoints see: the iteration count and every slot under a readable key
    # ("<variable name>/<slot name>"). Both are filled in by `build`; a checkpoint restored
    # before that is applied as the variables are created (TF's deferred restoration).
    self._iterations = None
    self._slots = {}

  # ---- Public state -------------------------------------------------------------------

  @property
  def name(self):
    return self._optimizer_name

  @property
  def iterations(self):
    """Number of steps applied so far (int64 variable, created on first use)."""
    if self._iterations is None:
      distribution.in_cross_replica_context(lambda _: self._create_step_state(None))
    return self._iterations

  @property
  def jit_compile(self):
    return self._settings.jit_compile

  @property
  def amsgrad(self):
    return self._settings.amsgrad

  @property
  def sparse_mode(self):
    return self._settings.sparse_mode

  @property
  def learning_rate(self):
    return self._hyper.learning_rate

  @learning_rate.setter
  def learning_rate(self, value):
    """Assigns a new rate; numbers go into the existing variable, so nothing retraces."""
    current = self._hyper.learning_rate
    if isinstance(current, tf.Variable) and not callable(value):
      hyperparameters.validate("learning_rate", value, low=0.0)
      current.assign(tf.cast(value, current.dtype))
    else:
      self._hyper.learning_rate = hyperparameters.validate(
          "learning_rate", value, low=0.0, allow_schedule=True)

  @property
  def beta_1(self):
    return self._hyper.beta_1

  @property
  def beta_2(self):
    return self._hyper.beta_2

  @property
  def epsilon(self):
    return self._hyper.epsilon

  # Not named get_slot/get_slot_names: TF's checkpointer treats objects with those methods as
  # legacy optimizers with a private restore protocol. Slots are saved under readable keys.
  @property
  def slot_names(self):
    return ("m", "v", "vhat") if self.amsgrad else ("m", "v")

  def slot(self, var, slot_name):
    """The slot `slot_name` ("m", "v" or, with amsgrad, "vhat") of variable `var`."""
    slots = self._slot_index.slots.get(distribution.as_tf_variable(var).ref())
    if slots is None:
      raise KeyError(f"Adam: no slots for variable '{var.name}'; it has not been built "
                     "or updated by this optimizer.")
    if slot_name not in slots:
      raise KeyError(f"Adam: unknown slot {slot_name!r}; this optimizer has "
                     f"{self.slot_names}.")
    return slots[slot_name]

  # ---- State creation -----------------------------------------------------------------

  def build(self, var_list):
    """Creates the slots of `var_list` (and the step state) in each variable's context.

    Called by `apply_gradients`; call it yourself to create all state up front, e.g. before
    restoring a checkpoint or tracing a step.
    """
    variables = [distribution.as_tf_variable(v) for v in var_list]
    new = [v for v in variables if v.ref() not in self._slot_index.slots]
    new = list({v.ref(): v for v in new}.values())
    if new or self._iterations is None:
      distribution.in_cross_replica_context(
          lambda _: self._create_state(new, variables[0] if variables else None))

  def _create_state(self, new_variables, anchor):
    for var in new_variables:  # every check before any state is created
      _check_dtype(var)
      for key in ("beta_1", "beta_2", "epsilon"):
        hyperparameters.check_in_dtype(key, getattr(self._hyper, key), var.dtype.base_dtype,
                                       var.name)
      distribution.check_created_in_scope(var)
    if self._iterations is None:
      self._create_step_state(anchor)
    for var in new_variables:
      key = self._unique_key(var)
      with distribution.creation_scope(var):
        slots = {
            slot_name: tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False,
                                   name=f"{self.name}/{key}/{slot_name}")
            for slot_name in self.slot_names}
      self._slot_index.slots[var.ref()] = slots
      for slot_name, slot in slots.items():
        self._slots[f"{key}/{slot_name}"] = slot

  def _create_step_state(self, anchor):
    """The iteration count, and a variable for a numeric learning rate.

    The learning rate is a (float32, as in Keras) variable so that assigning a new value
    reaches an already compiled step. Numeric betas and epsilon stay Python floats, cast to
    each variable's dtype exactly; pass a callable to vary them during training.
    """
    with distribution.creation_scope(anchor):
      if isinstance(self._hyper.learning_rate, (int, float)):
        self._hyper.learning_rate = tf.Variable(
            float(self._hyper.learning_rate), dtype=tf.float32, trainable=False,
            name=f"{self.name}/learning_rate")
      self._iterations = tf.Variable(
          0, dtype=tf.int64, trainable=False, name=f"{self.name}/iterations",
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _unique_key(self, var):
    """A readable checkpoint key for `var`'s slots, unique within this optimizer."""
    base = getattr(var, "path", None) or var.name.split(":")[0]
    key, suffix = base, 1
    while key in self._slot_index.keys:
      key, suffix = f"{base}_{suffix}", suffix + 1
    self._slot_index.keys.add(key)
    return key

  # ---- Updates ------------------------------------------------------------------------

  def minimize(self, loss, var_list, tape=None):
    """Computes gradients of `loss` and applies them; returns `iterations`.

    `loss` is a zero-argument callable, or a tensor computed under `tape`. `var_list` is a
    list of variables or a zero-argument callable returning one.
    """
    if not callable(loss) and tape is None:
      raise ValueError("Adam.minimize: `tape` is required when `loss` is a tensor; pass "
                       "the tf.GradientTape that computed it, or pass `loss` as a callable.")
    tape = tape if tape is not None else tf.GradientTape()
    if callable(loss):
      with tape:
        loss = loss()
    if callable(var_list):
      var_list = var_list()
    grads = tape.gradient(loss, var_list)
    return self.apply_gradients(zip(grads, var_list))

  def apply_gradients(self, grads_and_vars, *, apply_if=None, sum_over_replicas=True):
    """Applies one Adam step; returns `iterations`.

    Gradients are cast to their variable's dtype (as Keras does) and must have its shape
    (no broadcasting); then they are summed over replicas when called in a replica context,
    clipped, and applied to every copy of each variable. Pairs whose gradient is None are
    skipped with a warning.

    Args:
      grads_and_vars: pairs of (gradient, variable).
      apply_if: optional boolean scalar tensor; when it is False the step changes nothing
        (variables, slots and `iterations` keep their values). Used to skip steps whose
        gradients are not finite, without leaving the compiled program.
      sum_over_replicas: False when the caller has already summed the gradients.
    """
    grads, variables = _drop_missing_gradients(grads_and_vars)
    grads = [_checked_gradient(g, v) for g, v in zip(grads, variables)]
    self.build(variables)
    if sum_over_replicas:
      grads = distribution.sum_over_replicas(grads)
    grads = [self._canonical_gradient(g, v) for g, v in zip(grads, variables)]
    grads = clipping.clip_gradients(grads, self._settings.clip)
    distribution.in_cross_replica_context(
        self._apply_in_cross_replica, grads, variables, apply_if)
    return self.iterations

  def _canonical_gradient(self, grad, var):
    """Sums the repeated rows of a sparse gradient (both modes), so that clipping sees the
    dense gradient's norms without a table-sized dense gradient being built."""
    if not isinstance(grad, tf.IndexedSlices):
      return grad
    if self.sparse_mode == "dense":
      grad = sparse.zero_out_of_range(grad, var.shape[0])
    return sparse.sum_duplicates(grad)

  def _apply_in_cross_replica(self, strategy, grads, variables, apply_if):
    coefficients = {}
    for var in variables:
      dtype = var.dtype.base_dtype
      if dtype.name not in coefficients:
        coefficients[dtype.name] = self._step_coefficients(dtype)
    slots = [tuple(self._slot_index.slots[v.ref()].get(n) for n in ("m", "v", "vhat"))
             for v in variables]
    per_variable = (grads, slots, [apply_if] * len(variables),
                    [self._decays(v) for v in variables])
    distribution.update_on_each_device(
        strategy, self._compiled.update_variables, variables, per_variable, coefficients)
    if apply_if is None:
      self._iterations.assign_add(1)
    else:
      applied = distribution.local_values(strategy, apply_if)[0]
      self._iterations.assign_add(tf.cast(applied, tf.int64))

  def _step_coefficients(self, dtype):
    step = self._iterations
    value = lambda key: hyperparameters.current_value(getattr(self._hyper, key), step)
    return update_rule.step_coefficients(
        value("learning_rate"), value("beta_1"), value("beta_2"), value("epsilon"),
        step, dtype, weight_decay=self._settings.weight_decay)

  def _update_variables(self, variables, per_variable, coefficients):
    """The update of `variables` on one device (compiled as one XLA program per device).

    Its ops are named under the optimizer's name, so that profiles and XLA dumps (op_name
    metadata) tell the update's kernels from the model's.
    """
    with tf.name_scope(self.name):
      by_cpu_kernel = []
      for var, grad, slots, apply_if, decays in zip(variables, *per_variable):
        if self.jit_compile and cpu_kernel.applies(var, grad, slots[2]):
          by_cpu_kernel.append((var, grad, slots, apply_if, decays))
          continue
        c = coefficients[var.dtype.base_dtype.name]
        self._update_variable(var, grad, slots, apply_if,
                              c if decays else c._replace(decay=None))
      if by_cpu_kernel:
        self._update_by_cpu_kernel(by_cpu_kernel, coefficients[tf.float32.name])

  def _update_by_cpu_kernel(self, updates, coefficients):
    """One pass over memory, one call for all the tensors, instead of XLA:CPU's three loops
    per tensor (see cpu_kernel.py); apply_if (the same for all) is applied inside, in place."""
    variables, grads, slots, apply_ifs, decays = zip(*updates)
    results = cpu_kernel.adam_steps(
        variables, grads, [s[0] for s in slots], [s[1] for s in slots], decays, coefficients,
        apply_ifs[0])
    for var, var_slots, values in zip(variables, slots, results):
      for target, value in zip((var,) + var_slots[:2], values):
        target.assign(value)

  def _update_variable(self, var, grad, slots, apply_if, coefficients):
    """One variable's update; `var` and `slots` (m, v, vhat) are one device's copies."""
    if isinstance(grad, tf.IndexedSlices) and self.sparse_mode == "lazy":
      self._update_rows(var, grad, slots, apply_if, coefficients)
      return
    if isinstance(grad, tf.IndexedSlices) and self.jit_compile and cpu_kernel.applies_to_rows(
        var, grad, slots[2]):
      # Dense mode on CPU: every row in one pass of the rows kernel (no amsgrad, so no vhat),
      # in place; apply_if is applied inside.
      new_var, m, v = cpu_kernel.adam_step_at_rows(
          var, grad.indices, grad.values, slots[0], slots[1], coefficients, apply_if)
      moments, apply_if = update_rule.Moments(m, v, None), None
    elif isinstance(grad, tf.IndexedSlices):
      # Dense mode: the dense update without a dense gradient (duplicates are summed, with
      # zero padding); apply_if is applied inside, where it adds no pass over the table.
      new_var, moments = update_rule.adam_step_at_rows(
          var, grad.indices, grad.values, update_rule.Moments(*slots), coefficients, apply_if)
      apply_if = None
    else:
      new_var, moments = update_rule.adam_step(
          var, grad, update_rule.Moments(*slots), coefficients)
    for target, value in zip((var,) + slots, (new_var,) + tuple(moments)):
      if target is not None:
        target.assign(_select(apply_if, value, target))

  def _update_rows(self, var, grad, slots, apply_if, coefficients):
    """Lazy mode: the rows in `grad` (duplicates summed) and nothing else."""
    rows = grad.indices
    gather = lambda t: None if t is None else tf.gather(t, rows)
    old = (gather(var),) + tuple(gather(s) for s in slots)
    new_rows, moments = update_rule.adam_step(
        old[0], sparse.first_entry_padding(grad), update_rule.Moments(*old[1:]), coefficients)
    for target, value, before in zip((var,) + slots, (new_rows,) + tuple(moments), old):
      if target is not None:
        target.scatter_update(tf.IndexedSlices(_select(apply_if, value, before), rows))

  def _decays(self, var):
    """Whether decoupled weight decay applies to `var` (see `exclude_from_weight_decay`)."""
    if not self._settings.weight_decay or var.ref() in self._decay_exclusions.refs:
      return False
    return not any(part in var.name for part in self._decay_exclusions.names)

  def exclude_from_weight_decay(self, var_list=None, var_names=None):
    """Exempts variables from weight decay: those in `var_list`, and those whose name contains
    any string of `var_names` (e.g. ["bias", "norm"]). Call before the first step."""
    self._decay_exclusions.refs.update(
        distribution.as_tf_variable(v).ref() for v in (var_list or []))
    self._decay_exclusions.names.update(var_names or [])

  # ---- Configuration --------------------------------------------------------------------

  def get_config(self):
    config = {"name": self.name, "amsgrad": self.amsgrad, "sparse_mode": self.sparse_mode,
              "weight_decay": self._settings.weight_decay, "jit_compile": self.jit_compile}
    for key in _HYPERPARAMETERS:
      config[key] = hyperparameters.to_config(getattr(self._hyper, key))
    config.update(dataclasses.asdict(self._settings.clip))
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["learning_rate"] = hyperparameters.from_config(config["learning_rate"])
    return cls(**config)


def _validated_settings(amsgrad, name, sparse_mode, weight_decay, jit_compile, kwargs):
  """The constructor's non-hyperparameter arguments, checked, with a clear error for each."""
  unknown = sorted(set(kwargs) - set(_CLIP_KWARGS))
  if unknown:
    raise TypeError(f"Adam got unexpected keyword argument(s) {unknown}; accepted "
                    f"arguments are {', '.join(_ARGUMENTS)}.")
  clip = clipping.ClipConfig(**{
      key: hyperparameters.validate_positive_or_none(key, kwargs.get(key))
      for key in _CLIP_KWARGS})
  if clip.clipnorm is not None and clip.global_clipnorm is not None:
    raise ValueError("Adam: set at most one of `clipnorm` (per gradient) and "
                     "`global_clipnorm` (all gradients together); both were given.")
  for flag_name, flag in (("amsgrad", amsgrad), ("jit_compile", jit_compile)):
    if not isinstance(flag, bool):
      raise TypeError(f"Adam: `{flag_name}` must be True or False; got {flag!r}.")
  if sparse_mode not in SPARSE_MODES:
    raise ValueError(f"Adam: `sparse_mode` must be one of {SPARSE_MODES}; "
                     f"got {sparse_mode!r}.")
  if not isinstance(name, str) or not name:
    raise TypeError(f"Adam: `name` must be a non-empty string; got {name!r}.")
  weight_decay = float(hyperparameters.validate_non_negative("weight_decay", weight_decay))
  return _Settings(amsgrad=amsgrad, sparse_mode=sparse_mode, weight_decay=weight_decay,
                   jit_compile=jit_compile, clip=clip)


def _select(apply_if, new, old):
  return new if apply_if is None else tf.where(apply_if, new, old)


def _check_dtype(var):
  if var.dtype.base_dtype not in _SUPPORTED_DTYPES:
    raise TypeError(
        f"Adam: variable '{var.name}' is {var.dtype.name}; adam_xla.Adam updates float32 "
        "and float64 variables only. For bfloat16 or float16 training keep float32 master "
        "weights and compute in low precision, e.g. "
        "keras.mixed_precision.set_global_policy('mixed_bfloat16').")


def _checked_gradient(grad, var):
  """`grad` in `var`'s dtype, with its shape checked against `var`'s.

  A gradient that already has the dtype is returned as it is (no cast op). Shapes must match
  exactly: a scalar or (1,) gradient broadcast over a larger variable would hide a bug in the
  caller (Keras would broadcast it). Static shapes are checked when traced; unknown dimensions
  are left to the ops.
  """
  dtype = var.dtype.base_dtype
  if isinstance(grad, tf.IndexedSlices):
    values = _cast_gradient(grad.values, dtype, var)
    rows = tf.TensorShape([None]).concatenate(var.shape[1:])  # one row per index
    if var.shape.rank == 0 or not values.shape.is_compatible_with(rows):
      raise ValueError(
          f"Adam: the tf.IndexedSlices gradient of variable '{var.name}' has values of shape "
          f"{values.shape}, whose rows do not fit the variable's shape {var.shape}: each row "
          f"must have shape {var.shape[1:]}.")
    if tf.executing_eagerly():
      _check_indices(grad.indices, var)
    return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
  tensor = _cast_gradient(grad, dtype, var)
  if not tensor.shape.is_compatible_with(var.shape):
    raise ValueError(f"Adam: the gradient of variable '{var.name}' has shape {tensor.shape}, "
                     f"but the variable has shape {var.shape}; a gradient must have its "
                     "variable's shape (it is not broadcast).")
  return tensor


def _cast_gradient(value, dtype, var):
  """A tensor of `dtype`; a list or NumPy array is converted straight to it when it can be."""
  tensor = tf.convert_to_tensor(value, dtype_hint=dtype)
  if tensor.dtype == dtype:
    return tensor
  if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
    raise TypeError(f"Adam: the gradient of variable '{var.name}' is {tensor.dtype.name}; "
                    "gradients must be real numbers, which are cast to the variable's dtype "
                    f"({dtype.name}).")
  return tf.cast(tensor, dtype)


def _check_indices(indices, var):
  """Eagerly only: out-of-range ids would be dropped or fail inside a TF op (see `sparse`)."""
  rows = var.shape[0] if var.shape.rank else None
  ids = np.asarray(indices).reshape(-1)
  bad = ids[(ids < 0) | (ids >= rows)] if rows is not None else ids[ids < 0]
  if bad.size:
    raise ValueError(f"Adam: the tf.IndexedSlices gradient of variable '{var.name}' has index "
                     f"{bad[0]}, outside the variable's rows [0, {rows}).")


def _drop_missing_gradients(grads_and_vars):
  pairs = [(g, distribution.as_tf_variable(v)) for g, v in grads_and_vars]
  missing = [v.name for g, v in pairs if g is None]
  kept = [(g, v) for g, v in pairs if g is not None]
  if not kept:
    raise ValueError(f"Adam: no gradients provided for any variable: {missing}.")
  if missing:
    warnings.warn(f"Adam: gradients do not exist for variables {missing}; they are not "
                  "updated. Check that the loss depends on them.", stacklevel=3)
  return [g for g, _ in kept], [v for _, v in kept]
