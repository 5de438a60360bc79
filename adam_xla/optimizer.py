"""`adam_xla.Adam`: the Adam optimizer of the Keras documentation, built to compile with XLA.

It is a `keras.optimizers.Optimizer`, so Keras takes it wherever it takes an optimizer
(`model.compile`, `.keras` files, callbacks, LossScaleOptimizer), but it keeps none of the
base class's state or update path: its checkpoint keys, its slots and its step are its own.

This class owns the state (hyperparameters, slots, iteration count, configuration) and the
order of a step, the Keras one: gradients accepted (`gradients`), summed over replicas,
made canonical and clipped (`clipping`), then applied by `engine.update` once per device
(`distribution`), followed there by the variables' constraints (`engine.constrain`). The
arithmetic is `update_rule`'s (or the CPU kernels', which compute the same), so another front
end can share everything but this class.
"""

import dataclasses
import inspect
import types

from absl import logging
import keras
from keras.src.utils import tracking as keras_tracking
import tensorflow as tf

from adam_xla import clipping
from adam_xla import distribution
from adam_xla import engine
from adam_xla import gradients
from adam_xla import hyperparameters
from adam_xla import sharding
from adam_xla import slots as slots_lib
from adam_xla import update_rule

SPARSE_MODES = engine.SPARSE_MODES
_HYPERPARAMETERS = ("learning_rate", "beta_1", "beta_2", "epsilon")
_SUPPORTED_DTYPES = (tf.float32, tf.float64)


@dataclasses.dataclass(frozen=True)
class _Settings:
  """Choices fixed at construction (they change the traced program, so they are not state)."""

  amsgrad: bool
  sparse_mode: str
  weight_decay: float
  jit_compile: bool
  shard_state: bool
  clip: clipping.ClipConfig


# Checkpoints track attributes that are variables, lists, dicts or trackables; a SimpleNamespace
# is none of these, so what it holds is not saved. Hyperparameter variables are kept there so
# that a resumed run uses the hyperparameters it was started with.
_Untracked = types.SimpleNamespace


class _ShardPlan:
  """Which of a step's variables belong to which `sharding.Group`: [(group, positions in the
  step's list, indices in the group's layout)]. Kept per list of variables, so that the
  compiled per-device functions, which take it as an argument, are traced once."""

  def __init__(self, slots):
    groups = {}
    for k, entry in enumerate(slots):
      groups.setdefault(id(entry.group), (entry.group, []))[1].append(k)
    self.plan = [(group, positions, [slots[k].index for k in positions])
                 for group, positions in groups.values()]


def _no_keras_rate():
  """Given to Keras' base class as the rate, so that it makes no rate variable of its own."""
  return 0.0


@keras.saving.register_keras_serializable(package="adam_xla", name="Adam")
class Adam(keras.optimizers.Optimizer):
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
    clipnorm: clip each gradient to this norm; None (default): no clipping.
    clipvalue: clip each gradient element to [-clipvalue, clipvalue].
    global_clipnorm: clip all gradients together to this norm; excludes `clipnorm`.
    shard_state: under MirroredStrategy and MultiWorkerMirroredStrategy with N replicas, each
      replica keeps m and v (and vhat) for 1/N of the parameters, updates those, and the
      updated parameters are gathered so that every replica holds the whole model: 1/N of
      the optimizer's memory and work per replica, the same results bit for bit. Checkpoints
      are the same as without it. Elsewhere it changes nothing (TPU's compiler shards the
      update itself). See `exclude_from_state_sharding`.

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

  def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
               name="Adam", *, sparse_mode="dense", weight_decay=0.0, clipnorm=None, clipvalue=None,
               global_clipnorm=None, jit_compile=True, shard_state=False, **unknown):
    _reject_unknown_arguments(unknown)
    settings = _validated_settings(
        amsgrad=amsgrad, name=name, sparse_mode=sparse_mode, weight_decay=weight_decay,
        jit_compile=jit_compile, shard_state=shard_state,
        clip=dict(clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm))
    super().__init__(learning_rate=_no_keras_rate, name=name)
    self._leave_keras_state_out_of_checkpoints()
    self._settings = settings
    # Read by Keras users as on keras.optimizers.Adam; this class's step reads `_settings`.
    self.weight_decay = settings.weight_decay
    self.clipnorm, self.clipvalue, self.global_clipnorm = (clipnorm, clipvalue, global_clipnorm)
    self._decay_exclusions = _Untracked(refs=set(), names=set())
    self._sharding = _Untracked(exclusions=set(), plans={})
    # The update of all variables on one device, as one XLA program. Inside a step that is
    # itself compiled it is inlined into that program.
    compiled = lambda fn: tf.function(fn, jit_compile=True) if self.jit_compile else fn
    self._compiled = _Untracked(update_on_device=compiled(self._update_on_device),
                                update_shards=compiled(self._update_shards),
                                write_ranges=compiled(self._write_ranges))
    self._hyper = _Untracked(
        learning_rate=hyperparameters.validate("learning_rate", learning_rate, low=0.0,
                                               allow_schedule=True),
        beta_1=hyperparameters.validate("beta_1", beta_1, 0.0, 1.0, high_open=True),
        beta_2=hyperparameters.validate("beta_2", beta_2, 0.0, 1.0, high_open=True),
        epsilon=hyperparameters.validate("epsilon", epsilon, low=0.0, low_open=True))
    # Whether a traced (graph) step has read the hyperparameters: it keeps what it read, so
    # from then on a schedule or callable can no longer be replaced (see `learning_rate`).
    self._traced = False
    # What checkpoints see: the iteration count and every slot under a readable key; both
    # are filled in by `build` (see `slots`).
    self._iterations = None
    with keras_tracking.DotNotTrackScope():  # a dict TensorFlow wraps and saves, not Keras
      self._slots = {}
    self._slot_table = slots_lib.SlotTable(name, self.slot_names, self._slots)

  def _leave_keras_state_out_of_checkpoints(self):
    """Drops what Keras' base class tracked, so that checkpoints hold this class's state only.

    Keras made an `iteration` variable in the current strategy and tracks lists of variables
    (which include the model's); this class makes its step count lazily, in the first
    variable's context, under the same checkpoint key `_iterations` it has always had.
    """
    del self._iterations
    for keras_list in ("_variables", "_trainable_variables", "_trainable_variables_indices"):
      self._delete_tracking(keras_list)

  # ---- Public state -------------------------------------------------------------------

  jit_compile = property(lambda self: self._settings.jit_compile)
  amsgrad = property(lambda self: self._settings.amsgrad)
  shard_state = property(lambda self: self._settings.shard_state)
  sparse_mode = property(lambda self: self._settings.sparse_mode)
  beta_1 = property(lambda self: self._hyper.beta_1)
  beta_2 = property(lambda self: self._hyper.beta_2)
  epsilon = property(lambda self: self._hyper.epsilon)

  @property
  def iterations(self):
    """Number of steps applied so far (int64 variable, created on first use)."""
    if self._iterations is None:
      distribution.in_cross_replica_context(lambda _: self._create_step_state(None))
    return self._iterations

  @property
  def learning_rate(self):
    """The rate of the next step, as Keras gives it: the variable that holds a numeric rate,
    a schedule's value at `iterations`, a callable's value. Reading it creates the step
    state, as reading `iterations` does. (`get_config` gives the schedule itself.)"""
    return self._current("learning_rate")

  @learning_rate.setter
  def learning_rate(self, value):
    """Sets the rate so that compiled steps see it, or raises: never a stale step.

    A number (or tensor) is assigned to the rate's variable, which compiled steps read. A
    schedule cannot become a number (Keras raises too). A schedule or callable, or a number
    in place of a callable, replaces the rate only until a traced step has read it.
    """
    value = hyperparameters.validate("learning_rate", value, low=0.0, allow_schedule=True)
    current = self._hyper.learning_rate
    if hyperparameters.is_variable(current) and not callable(value):
      current.assign(tf.cast(value, current.dtype))
      return
    hyperparameters.check_replaceable("learning_rate", current, value, self._traced)
    self._hyper.learning_rate = self._held_rate(value)

  # Not named get_slot/get_slot_names: TF's checkpointer treats objects with those methods as
  # legacy optimizers with a private restore protocol. Slots are saved under readable keys.
  @property
  def slot_names(self):
    return ("m", "v", "vhat") if self.amsgrad else ("m", "v")

  def slot(self, var, slot_name):
    """The slot `slot_name` ("m", "v" or, with amsgrad, "vhat") of variable `var`."""
    if distribution.as_tf_variable(var) not in self._slot_table:
      raise KeyError(f"Adam: no slots for variable '{var.name}'; it has not been built "
                     "or updated by this optimizer.")
    if slot_name not in self.slot_names:
      raise KeyError(f"Adam: unknown slot {slot_name!r}; this optimizer has "
                     f"{self.slot_names}.")
    return self._slot_table.slot(distribution.as_tf_variable(var), slot_name)

  def state_bytes_per_replica(self):
    """Bytes of m, v and vhat that one replica holds (all of them without sharded state)."""
    return self._slot_table.bytes_per_replica()

  @property
  def variables(self):
    """The step count, the rate's variable (if the rate is a number) and every slot, in the
    order they were built: what Keras saves in `.keras` and weights files, by position."""
    if self._iterations is None:
      return []
    rate = self._hyper.learning_rate
    return ([self._iterations] + ([rate] if hyperparameters.is_variable(rate) else []) + [
        slot for var in self._slot_table.variables() for slot in self._slot_table.slot_objects(var)
    ])

  # ---- State creation -----------------------------------------------------------------

  def build(self, var_list):
    """Creates the slots of `var_list` (and the step state) in each variable's context.

    Called by `apply_gradients`; call it yourself to create all state up front, e.g. before
    restoring a checkpoint or tracing a step.
    """
    variables = [distribution.as_tf_variable(v) for v in var_list]
    new = [v for v in variables if v not in self._slot_table]
    new = list({v.ref(): v for v in new}.values())
    if new or self._iterations is None:
      distribution.in_cross_replica_context(
          lambda _: self._create_state(new, variables[0] if variables else None))
    self.built = True  # what Keras' compile_from_config and BackupAndRestore test

  def _create_state(self, new_variables, anchor):
    for var in new_variables:  # every check before any state is created
      _check_dtype(var)
      for key in ("beta_1", "beta_2", "epsilon"):
        hyperparameters.check_in_dtype(key, getattr(self._hyper, key), var.dtype.base_dtype,
                                       var.name)
      distribution.check_created_in_scope(var)
    if self._iterations is None:
      self._create_step_state(anchor)
    self._slot_table.create(
        new_variables,
        packable=lambda var: engine.packs_slots(var, self._engine_options(), self.amsgrad),
        shardable=self._shards)
    if self.shard_state and self._slot_table.groups():
      logging.info("Adam: state sharded across %d replicas: %d bytes per replica.",
                   self._slot_table.groups()[0].layout.num_shards, self.state_bytes_per_replica())

  def _shards(self, var):
    """Whether `var`'s slots are split across replicas (`shard_state`)."""
    if not self.shard_state or var.ref() in self._sharding.exclusions:
      return False
    strategy = getattr(var, "distribute_strategy", None)
    if strategy is None or not distribution.shards_state(strategy):
      if strategy is not None and distribution.compile_plan(strategy) == distribution.TPU_PROGRAM:
        logging.log_first_n(
            logging.INFO, "Adam(shard_state=True): on TPU the compiler shards "
            "the weight update itself; the state stays as it is.", 1)
      return False
    return var.shape.num_elements() not in (None, 0)

  def _create_step_state(self, anchor):
    """The iteration count, and a variable for a numeric learning rate (`_held_rate`).

    Numeric betas and epsilon stay Python floats, cast to each variable's dtype exactly (they
    cannot be set later); pass a callable to vary them during training.
    """
    with distribution.creation_scope(anchor):
      self._iterations = distribution.step_variable(0, tf.int64, f"{self.name}/iterations")
    self._hyper.learning_rate = self._held_rate(self._hyper.learning_rate)

  def _held_rate(self, value):
    """A numeric rate as a variable once the step state exists, else `value` as it is.

    The variable (float32 for a number, as in Keras) is what compiled steps read, so that
    assigning a new number reaches them. It is placed and replicated like `iterations`, and
    not saved in checkpoints: a resumed run uses the rate it is started with.
    """
    if self._iterations is None or callable(value) or hyperparameters.is_variable(value):
      return value
    dtype = value.dtype if isinstance(value, tf.Tensor) and value.dtype.is_floating else (
        tf.float32)
    with distribution.creation_scope(self._iterations):
      return distribution.step_variable(tf.cast(value, dtype), dtype, f"{self.name}/learning_rate")

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

  def apply(self, grads, trainable_variables=None):
    """Keras' form of `apply_gradients` (what LossScaleOptimizer calls): gradients and their
    variables as two lists, the variables by default those given to `build`."""
    if trainable_variables is None:
      trainable_variables = self._slot_table.variables()
    grads, trainable_variables = list(grads), list(trainable_variables)
    if len(grads) != len(trainable_variables):
      raise ValueError(f"Adam.apply: {len(grads)} gradients for {len(trainable_variables)} "
                       "variables; pass one gradient per variable.")
    self.apply_gradients(zip(grads, trainable_variables))

  def apply_gradients(self, grads_and_vars, *, apply_if=None):
    """Applies one Adam step; returns `iterations`.

    Pairs whose gradient is None are skipped with a warning; no pairs at all change nothing
    (not even `iterations`), as in Keras. Gradients are cast to their variable's dtype (as
    Keras does) and must have its shape (no broadcasting); then they are summed over replicas
    when called in a replica context (the Keras convention: scale the loss by the global batch
    size), clipped, and applied to every copy of each variable, followed by the variable's
    `constraint` if it has one (as Keras does).

    Args:
      grads_and_vars: pairs of (gradient, variable).
      apply_if: None; a boolean scalar tensor; or a function that is given the list of
        gradients summed over replicas (those not None, in the order given, before clipping)
        and returns one. When it is False the step changes nothing (variables, slots and
        `iterations` keep their values): a way to skip steps whose gradients are not finite
        without leaving the compiled program.
    """
    grads_and_vars = list(grads_and_vars)
    grads, variables = gradients.accepted(grads_and_vars)
    if not variables:  # no gradients at all: nothing to do, as in Keras' `apply`
      return self.iterations
    constraints = gradients.constraints(grads_and_vars)
    self.build(variables)
    grads = distribution.sum_over_replicas(grads)
    if callable(apply_if):
      apply_if = apply_if(grads)
    grads = [gradients.canonical(g, v, self.sparse_mode) for g, v in zip(grads, variables)]
    grads = clipping.clip_gradients(grads, self._settings.clip)
    distribution.in_cross_replica_context(self._apply_in_cross_replica, grads, variables,
                                          constraints, apply_if)
    return self.iterations

  def _apply_in_cross_replica(self, strategy, grads, variables, constraints, apply_if):
    dtypes = dict.fromkeys(v.dtype.base_dtype for v in variables)
    coefficients = {dtype.name: self._step_coefficients(dtype) for dtype in dtypes}
    slots = [self._slot_table[v] for v in variables]
    per_variable = (grads, slots, [self._decays(v) for v in variables], constraints)
    is_sharded = [isinstance(s, sharding.Sharded) for s in slots]
    own, sharded = (tuple([x for x, flag in zip(xs, is_sharded) if flag == want]
                          for xs in (variables,) + per_variable) for want in (False, True))
    if own[0]:
      distribution.update_on_each_device(strategy, self._compiled.update_on_device, own[0], own[1:],
                                         (coefficients, apply_if))
    if sharded[0]:
      self._update_sharded(strategy, sharded[0], sharded[1:], (coefficients, apply_if))
    if apply_if is None:
      self._iterations.assign_add(1)
    else:
      applied = distribution.first_local_value(strategy, apply_if)
      self._iterations.assign_add(tf.cast(applied, tf.int64))

  def _step_coefficients(self, dtype):
    value = self._current
    return update_rule.step_coefficients(value("learning_rate"), value("beta_1"), value("beta_2"),
                                         value("epsilon"), self._iterations, dtype,
                                         weight_decay=self._settings.weight_decay)

  def _current(self, key):
    """Hyperparameter `key`'s value for the step about to run; notes a traced step's read."""
    if not tf.executing_eagerly():
      self._traced = True
    iterations = self.iterations  # first: creating the step state may turn a number into a variable
    return hyperparameters.current_value(getattr(self._hyper, key), iterations)

  def _update_on_device(self, variables, per_variable, shared):
    """`engine.update` of one device's copies, then their constraints (compiled as one XLA
    program per device).

    Its ops are named under the optimizer's name, so that profiles and XLA dumps (op_name
    metadata) tell the update's kernels from the model's.
    """
    grads, slots, decays, constraints = per_variable
    coefficients, apply_if = shared
    with tf.name_scope(self.name):
      engine.update(variables, grads, slots, decays, coefficients, apply_if, self._engine_options())
      engine.constrain(variables, constraints, apply_if)

  def _update_sharded(self, strategy, variables, per_variable, shared):
    """The step of variables with sharded slots (`sharding.step`): each replica updates its
    shard (one XLA program per device), then the devices exchange the new shards."""
    grads, slots, decays, constraints = per_variable
    static = self._sharding.plans.get(tuple(v.ref() for v in variables))
    if static is None:
      static = self._sharding.plans[tuple(v.ref() for v in variables)] = _ShardPlan(slots)
    shard_moments = [
        update_rule.Moments(*(group.shards.get(name) for name in ("m", "v", "vhat")))
        for group, _, _ in static.plan
    ]
    sharding.step(
        strategy, static.plan, lambda v, per, shared_, replica: self._compiled.update_shards(
            v, per, shared_, replica, static), self._compiled.write_ranges, variables,
        (grads, decays, shard_moments), shared)
    if any(c is not None for c in constraints):
      distribution.update_on_each_device(
          strategy, lambda copies, per, shared_: engine.constrain(copies, per[0], shared_[1]),
          variables, (constraints,), shared)

  def _update_shards(self, variables, per_device, shared, replica, static):
    """`engine.update_shard` of each group: one XLA program per device."""
    grads, decays, shard_moments = per_device
    coefficients, apply_if = shared
    with tf.name_scope(self.name):
      for (group, positions, indices), moments in zip(static.plan, shard_moments):
        pick = lambda xs: [xs[k] for k in positions]
        engine.update_shard(pick(variables), pick(grads), pick(decays), indices, group.layout,
                            moments, coefficients[moments.m.dtype.base_dtype.name], apply_if,
                            self._engine_options(), replica)

  def _write_ranges(self, variables, targets, values):
    """`engine.write_ranges`: the other replicas' new rows into one device's copies."""
    with tf.name_scope(self.name):
      engine.write_ranges(variables, targets, values, self._engine_options())

  def _engine_options(self):
    return engine.Options(sparse_mode=self.sparse_mode, use_cpu_kernels=self.jit_compile)

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

  def exclude_from_state_sharding(self, var_list):
    """Keeps the state of the variables in `var_list` whole on every replica under
    `shard_state`: for embedding tables updated in lazy mode (which needs each row's own
    state) or whose sparse updates should not become dense. Call before `build`."""
    for var in var_list:
      var = distribution.as_tf_variable(var)
      if var in self._slot_table:
        raise ValueError(f"Adam.exclude_from_state_sharding: variable '{var.name}' already has "
                         "its state; call this before the optimizer is built.")
      self._sharding.exclusions.add(var.ref())

  # ---- Configuration --------------------------------------------------------------------

  def get_config(self):
    config = {
        "name": self.name, "amsgrad": self.amsgrad, "sparse_mode": self.sparse_mode,
        "weight_decay": self._settings.weight_decay, "jit_compile": self.jit_compile,
        "shard_state": self.shard_state
    }
    for key in _HYPERPARAMETERS:
      config[key] = hyperparameters.to_config(getattr(self._hyper, key))
    config.update(dataclasses.asdict(self._settings.clip))
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    del custom_objects  # schedules are found by their registered names
    config = dict(config)
    if "learning_rate" in config:  # absent when Keras makes one from the registered name
      config["learning_rate"] = hyperparameters.from_config(config["learning_rate"])
    return cls(**config)


def bias_corrected_learning_rate(learning_rate, beta_1, beta_2, iterations):
  """Adam's step size lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), t = iterations + 1, float32.

  What an update engine without bias correction must be given to compute this Adam's step,
  e.g. TensorFlow's TPU embedding Adam. `learning_rate` takes every form `Adam` accepts (a
  schedule is called with `iterations`); the betas are floats, tensors or callables.
  """
  value = lambda h: hyperparameters.current_value(h, iterations)
  return update_rule.step_coefficients(value(learning_rate), value(beta_1), value(beta_2), 0.0,
                                       iterations, tf.float32).lr_t


def _reject_unknown_arguments(unknown):
  """A Keras user's `use_ema=True` (or a typo) gets the list of what is accepted."""
  if unknown:
    accepted = [
        name for name in inspect.signature(Adam.__init__).parameters
        if name not in ("self", "unknown")
    ]
    raise TypeError(f"Adam got unexpected keyword argument(s) {sorted(unknown)}; accepted "
                    f"arguments are {', '.join(accepted)}.")


def _validated_settings(*, amsgrad, name, sparse_mode, weight_decay, jit_compile, shard_state,
                        clip):
  """The constructor's non-hyperparameter arguments, checked, with a clear error for each."""
  clip = clipping.ClipConfig(
      **{key: hyperparameters.validate_positive_or_none(key, value) for key, value in clip.items()})
  if clip.clipnorm is not None and clip.global_clipnorm is not None:
    raise ValueError("Adam: set at most one of `clipnorm` (per gradient) and "
                     "`global_clipnorm` (all gradients together); both were given.")
  for flag_name, flag in (("amsgrad", amsgrad), ("jit_compile", jit_compile), ("shard_state",
                                                                               shard_state)):
    if not isinstance(flag, bool):
      raise TypeError(f"Adam: `{flag_name}` must be True or False; got {flag!r}.")
  if sparse_mode not in SPARSE_MODES:
    raise ValueError(f"Adam: `sparse_mode` must be one of {SPARSE_MODES}; "
                     f"got {sparse_mode!r}.")
  if not isinstance(name, str) or not name:
    raise TypeError(f"Adam: `name` must be a non-empty string; got {name!r}.")
  weight_decay = float(hyperparameters.validate_non_negative("weight_decay", weight_decay))
  return _Settings(amsgrad=amsgrad, sparse_mode=sparse_mode, weight_decay=weight_decay,
                   jit_compile=jit_compile, shard_state=shard_state, clip=clip)


def _check_dtype(var):
  if var.dtype.base_dtype not in _SUPPORTED_DTYPES:
    raise TypeError(
        f"Adam: variable '{var.name}' is {var.dtype.name}; adam_xla.Adam updates float32 "
        "and float64 variables only. For bfloat16 or float16 training keep float32 master "
        "weights and compute in low precision, e.g. "
        "keras.mixed_precision.set_global_policy('mixed_bfloat16').")
