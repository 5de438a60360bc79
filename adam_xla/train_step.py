"""`make_train_step`: a model, a loss and an `adam_xla.Adam` as one compiled train step.

The step computes and returns metrics only; checkpoints, summaries, evaluation and progress
belong to the loop that calls it. This module is the replica's arithmetic (micro-batches,
loss and metric weighting, loss scaling, the finiteness gate); which pieces are XLA programs
depends on the `tf.distribute` strategy (`distribution.compile_plan`, carried out by
`step_programs`), and the step logs the plan it chose.
"""

import dataclasses
import types
from typing import Optional

from absl import logging
import keras
import tensorflow as tf

from adam_xla import distribution
from adam_xla import loss_scale as loss_scale_lib
from adam_xla import optimizer as optimizer_lib
from adam_xla import step_programs

LOSS_SCALING_MODES = (None, "dynamic")
XLA_SCOPES = ("step", "update")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How the step runs: the options of `make_train_step`. Validated on construction.

  steps_per_loop: steps per call; the call returns metrics averaged over them.
  accumulation_steps: micro-batches per step; gradients are summed over them before one
    update, so the step equals one step on the whole batch (up to float rounding).
  loss_scaling: None, or "dynamic" for float16 compute: the loss is multiplied by a scale
    that halves (and the step is skipped) when gradients overflow and doubles after
    `loss_scale_growth_interval` good steps.
  loop_in_program: with the single-program plan, run the `steps_per_loop` steps in a loop
    inside the XLA program (batches are fetched first and stacked) instead of a host loop that
    calls the program once per step. Faster for small models; on XLA:CPU convolution
    gradients inside a compiled loop are very slow, so it is off by default.
  initial_loss_scale: the dynamic loss scale's start value (>= 1).
  loss_scale_growth_interval: good steps after which the loss scale doubles.
  skip_nonfinite: do not apply a step whose summed gradients hold a NaN or an Inf: variables,
    slots and `iterations` stay as they were. Each call then also returns
    "nonfinite_steps" (bad steps in the call), "consecutive_nonfinite" (bad steps in a row
    up to the call's last) and "nonfinite_variables" (names of the variables whose gradients
    were bad in the call); what to do next (stop or go on) is the caller's policy. With loss
    scaling, overflow is the loss scale's business first: a bad step counts as non-finite
    only when the scale is already at its minimum, 1.
  xla_scope: "step" (default) compiles forward, backward and update (as the plan allows);
    "update" compiles only the Adam update and runs forward and backward as ordinary
    TensorFlow ops. On CPU, XLA's convolution gradients are slower than TensorFlow's oneDNN
    kernels (see docs/performance.md), so convolutional models train faster with "update"
    there; dense models are faster with "step". TPU compiles everything either way.
  """

  steps_per_loop: int = 1
  accumulation_steps: int = 1
  loss_scaling: Optional[str] = None
  initial_loss_scale: float = 2.0**15
  loss_scale_growth_interval: int = 2000
  loop_in_program: bool = False
  xla_scope: str = "step"
  skip_nonfinite: bool = False

  def __post_init__(self):
    for name in ("steps_per_loop", "accumulation_steps", "loss_scale_growth_interval"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"make_train_step: `{name}` must be an integer >= 1; got {value!r}.")
    if self.loss_scaling not in LOSS_SCALING_MODES:
      raise ValueError(f"make_train_step: `loss_scaling` must be one of {LOSS_SCALING_MODES}; "
                       f"got {self.loss_scaling!r}.")
    if not self.initial_loss_scale >= 1:
      raise ValueError("make_train_step: `initial_loss_scale` must be >= 1; got "
                       f"{self.initial_loss_scale!r}.")
    for name in ("loop_in_program", "skip_nonfinite"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(f"make_train_step: `{name}` must be True or False.")
    if self.xla_scope not in XLA_SCOPES:
      raise ValueError(f"make_train_step: `xla_scope` must be one of {XLA_SCOPES}; got "
                       f"{self.xla_scope!r}.")
    if self.loop_in_program and self.xla_scope != "step":
      raise ValueError("make_train_step: loop_in_program needs xla_scope='step'.")


def sparse_top1_accuracy(labels, logits):
  """Per-example 1.0 where the arg-max of `logits` equals the integer label."""
  labels = tf.reshape(labels, [-1])
  predicted = tf.argmax(logits, axis=-1, output_type=tf.int64)
  return tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)), tf.float32)


_NAMED_METRICS = {"accuracy": sparse_top1_accuracy}
_RESERVED_OUTPUTS = step_programs.COUNTED_OUTPUTS + ("loss", "loss_scale", "consecutive_nonfinite",
                                                     "nonfinite_variables")


def make_train_step(model, loss_fn, optimizer, *, metrics=None, strategy=None, **options):
  """Returns a `TrainStep` that trains `model` on batches `(features, labels)`.

  Args:
    model: a Keras model, or any callable `tf.Module` with `trainable_variables`, created
      under `strategy.scope()`.
    loss_fn: `loss_fn(labels, predictions)` returning per-example losses (shape [batch];
      more axes are summed), e.g. a Keras loss with `reduction=None`. The step divides their
      sum by the global batch size, so replicas' gradients add up to the global mean's.
    optimizer: an `adam_xla.Adam`; its state is created here, in the strategy's scope.
    metrics: optional dict of name -> `fn(labels, predictions)` giving per-example values
      (averaged over the global batch like the loss), or a list of names ("accuracy").
    strategy: a `tf.distribute.Strategy`; default: the one in scope, or none.
    **options: the fields of `StepConfig` (steps_per_loop, accumulation_steps, loss_scaling,
      initial_loss_scale, loss_scale_growth_interval, loop_in_program, xla_scope,
      skip_nonfinite), described there.

  Returns:
    A `TrainStep`: call it with an iterator over `step.distribute(dataset)` (any strategy)
    or, with no strategy and steps_per_loop=1, with one batch. It returns a dict of scalar
    tensors: "loss", each metric, with loss scaling "loss_scale" and "skipped_steps", and
    with skip_nonfinite the non-finite report described in `StepConfig`.
  """
  if not isinstance(optimizer, optimizer_lib.Adam):
    raise TypeError(f"make_train_step: `optimizer` must be an adam_xla.Adam; got "
                    f"{type(optimizer).__name__}.")
  if not callable(loss_fn):
    raise TypeError("make_train_step: `loss_fn` must be callable as loss_fn(labels, "
                    "predictions).")
  unknown = sorted(set(options) - {f.name for f in dataclasses.fields(StepConfig)})
  if unknown:
    raise TypeError(f"make_train_step got unexpected keyword argument(s) {unknown}; the step "
                    "options are the fields of StepConfig: "
                    f"{', '.join(f.name for f in dataclasses.fields(StepConfig))}.")
  return TrainStep(model, loss_fn, optimizer, _metric_fns(metrics),
                   distribution.strategy_or_active(strategy), StepConfig(**options))


def _metric_fns(metrics):
  if metrics is None:
    return {}
  if isinstance(metrics, dict):
    named = dict(metrics)
  else:
    unknown = [m for m in metrics if m not in _NAMED_METRICS]
    if unknown:
      raise ValueError(f"make_train_step: unknown metric names {unknown}; named metrics are "
                       f"{sorted(_NAMED_METRICS)}, or pass a dict of name -> function.")
    named = {m: _NAMED_METRICS[m] for m in metrics}
  for name in named:
    if name in _RESERVED_OUTPUTS:
      raise ValueError(f"make_train_step: metric name {name!r} is reserved.")
  return named


# References the step uses but does not own: a SimpleNamespace is not tracked, so they are
# not saved with the step's checkpoint.
_Untracked = types.SimpleNamespace


class TrainStep(tf.Module):
  """A compiled train step; see `make_train_step`. Checkpoint it to keep the loss scale."""

  def __init__(self, model, loss_fn, optimizer, metric_fns, strategy, config):
    super().__init__(name="train_step")
    self._parts = _Untracked(model=model, loss_fn=loss_fn, optimizer=optimizer,
                             metric_fns=metric_fns, strategy=strategy)
    self.config = config
    self.plan = distribution.compile_plan(strategy)
    self.trace_count = 0
    counter = distribution.step_variable
    with distribution.creation_scope(strategy=strategy):
      optimizer.build(model.trainable_variables)
      if config.loss_scaling:
        self.loss_scale = counter(config.initial_loss_scale, tf.float32, "loss_scale")
        self.good_steps = counter(0, tf.int64, "good_steps")
      if config.skip_nonfinite:
        self.nonfinite_counts = counter(tf.zeros([len(model.trainable_variables)], tf.int64),
                                        tf.int64, "nonfinite_counts")
        self.consecutive_nonfinite = counter(0, tf.int64, "consecutive_nonfinite")
    if config.loop_in_program and self.plan != distribution.SINGLE_PROGRAM:
      raise ValueError(f"make_train_step: loop_in_program needs the single-program plan; the "
                       f"{type(strategy).__name__} strategy uses {self.plan}.")
    described = (distribution.PLAN_DESCRIPTIONS[self.plan] if config.xla_scope == "step" else
                 "xla_scope='update': only the Adam update is an XLA program (one per "
                 "device); forward and backward run as TensorFlow ops")
    logging.info("adam_xla train step: %s plan (%s); %d step(s) per call", self.plan, described,
                 config.steps_per_loop)
    self._functions = _Untracked(**step_programs.build(
        step_programs.StepParts(self._forward_backward, self._finish, self._around_call), strategy,
        self.plan, config))

  # ---- Public -------------------------------------------------------------------------

  @property
  def variable_names(self):
    """Names of the trained variables (Keras paths where there are), as `nonfinite_counts`."""
    return [getattr(v, "path", v.name) for v in self._variables()]

  def distribute(self, dataset):
    """Returns `dataset` (batched at the global batch size) split across the replicas.

    Batch with `drop_remainder=True`: a last, smaller batch would trace and compile a second
    program, and under several replicas would not split evenly.
    """
    return distribution.distribute_dataset(self._parts.strategy, dataset)

  def __call__(self, data):
    """Runs `steps_per_loop` steps on `data` (an iterator) or one step on a batch."""
    if distribution.is_iterator(data):
      return self._functions.loop(data)
    if self.plan != distribution.SINGLE_PROGRAM or self.config.steps_per_loop != 1:
      raise ValueError("TrainStep: pass an iterator (iter(step.distribute(dataset))); a "
                       "single batch works only with no strategy and steps_per_loop=1.")
    return self._functions.one_batch(data)

  # ---- The replica step ---------------------------------------------------------------

  def _variables(self):
    return self._parts.model.trainable_variables

  def _forward_backward(self, batch):
    """This replica's share of the loss, its gradients and its metric sums."""
    features, labels = batch[0], batch[1]
    parts, n = self._parts, self.config.accumulation_steps
    replicas = distribution.replicas_in_sync()
    local_batch = tf.shape(tf.nest.flatten(labels)[0])[0]
    global_batch = tf.cast(local_batch * replicas, tf.float32)
    scale = self.loss_scale if self.config.loss_scaling else None
    variables = self._variables()
    loss, grads = 0.0, None
    metrics = {name: 0.0 for name in parts.metric_fns}
    for micro_features, micro_labels in zip(_split(features, n), _split(labels, n)):
      with tf.GradientTape() as tape:
        predictions = _to_float32(_call_model(parts.model, micro_features))
        micro_loss = _sum_examples(parts.loss_fn(micro_labels, predictions)) / global_batch
        micro_loss += _regularization(parts.model) / (replicas * n)
        scaled = micro_loss * scale if scale is not None else micro_loss
      micro_grads = tape.gradient(scaled, variables)
      grads = micro_grads if grads is None else [
          _add_gradients(a, b) for a, b in zip(grads, micro_grads)
      ]
      loss += micro_loss
      for name, fn in parts.metric_fns.items():
        metrics[name] += _sum_examples(fn(micro_labels, predictions)) / global_batch
    if scale is not None:
      grads = [None if g is None else _scale_gradient(g, 1.0 / scale) for g in grads]
    return loss, grads, metrics

  def _finish(self, loss, grads, metrics):
    """Applies this replica's gradients; returns per-replica outputs whose sum over replicas
    is the step's value."""
    config, gate = self.config, {}
    guarded = config.loss_scaling or config.skip_nonfinite
    self._parts.optimizer.apply_gradients(
        zip(grads, self._variables()),
        apply_if=(lambda summed: self._gate(grads, summed, gate)) if guarded else None)
    share = 1.0 / distribution.replicas_in_sync()
    outputs = {"loss": loss, **metrics}
    if config.loss_scaling:
      new_scale, good_steps = loss_scale_lib.next_state(self.loss_scale, self.good_steps,
                                                        gate["applied"],
                                                        config.loss_scale_growth_interval)
      self.good_steps.assign(good_steps)
      self.loss_scale.assign(new_scale)
      outputs["skipped_steps"] = (1.0 - tf.cast(gate["applied"], tf.float32)) * share
      outputs["loss_scale"] = tf.convert_to_tensor(self.loss_scale) * share
    if config.skip_nonfinite:
      outputs["nonfinite_steps"] = tf.cast(gate["nonfinite"], tf.float32) * share
    return outputs

  def _gate(self, grads, summed, decision):
    """The optimizer's apply_if: whether every gradient summed over replicas is finite.

    `grads` are this replica's (None where a variable has no gradient; the optimizer skips
    those, so `summed` has the others in order). Records the decision, and with
    skip_nonfinite counts a bad step the loss scale (if any) cannot explain.
    """
    finite = iter([_is_finite(g) for g in summed])
    finite_each = tf.stack([next(finite) if g is not None else tf.constant(True) for g in grads])
    decision["applied"] = tf.reduce_all(finite_each)
    if self.config.skip_nonfinite:
      bad = tf.logical_not(decision["applied"])
      if self.config.loss_scaling:
        bad = tf.logical_and(bad, self.loss_scale <= 1.0)
      self.nonfinite_counts.assign_add(
          tf.cast(tf.logical_and(bad, tf.logical_not(finite_each)), tf.int64))
      self.consecutive_nonfinite.assign(
          tf.where(bad, self.consecutive_nonfinite + 1, tf.constant(0, tf.int64)))
      decision["nonfinite"] = bad
    return decision["applied"]

  def _around_call(self, run):
    """Runs one call's steps (`run`); with skip_nonfinite adds the call's non-finite report,
    so that the caller needs none of the step's state."""
    self.trace_count += 1
    if not self.config.skip_nonfinite:
      return run()
    counts_before = tf.convert_to_tensor(self.nonfinite_counts)
    outputs = run()
    went_bad = tf.convert_to_tensor(self.nonfinite_counts) > counts_before
    outputs["consecutive_nonfinite"] = tf.convert_to_tensor(self.consecutive_nonfinite)
    outputs["nonfinite_variables"] = tf.boolean_mask(tf.constant(self.variable_names), went_bad)
    return outputs


def _call_model(model, features):
  if isinstance(model, keras.Model):
    return model(features, training=True)
  return model(features)


def _regularization(model):
  losses = getattr(model, "losses", None) if isinstance(model, keras.Model) else None
  return tf.add_n([tf.cast(loss, tf.float32) for loss in losses]) if losses else 0.0


def _to_float32(predictions):
  cast = lambda t: tf.cast(t, tf.float32) if t.dtype in (tf.bfloat16, tf.float16) else t
  return tf.nest.map_structure(cast, predictions)


def _sum_examples(values):
  """Sum over the batch of per-example values; a scalar is taken as the batch mean."""
  values = tf.cast(values, tf.float32)
  if values.shape.rank == 0:
    raise ValueError("make_train_step: loss and metric functions must return per-example "
                     "values (shape [batch]), e.g. a Keras loss with reduction=None; a "
                     "scalar cannot be weighted by the global batch size.")
  return tf.reduce_sum(values)


def _split(structure, parts):
  """`parts` micro-batches of a structure of tensors, split along the batch axis."""
  if parts == 1:
    return [structure]
  leaves = tf.nest.flatten(structure)
  size = leaves[0].shape[0]
  if size is not None and size % parts:
    raise ValueError(f"make_train_step: the per-replica batch of {size} does not split into "
                     f"accumulation_steps={parts} equal micro-batches.")
  pieces = [tf.split(leaf, parts, axis=0) for leaf in leaves]
  return [tf.nest.pack_sequence_as(structure, [p[k] for p in pieces]) for k in range(parts)]


def _add_gradients(a, b):
  if a is None or b is None:
    return a if b is None else b
  if isinstance(a, tf.IndexedSlices) or isinstance(b, tf.IndexedSlices):
    a, b = _as_slices(a), _as_slices(b)
    return tf.IndexedSlices(tf.concat([a.values, b.values], 0), tf.concat([a.indices, b.indices],
                                                                          0), a.dense_shape)
  return a + b


def _as_slices(grad):
  if isinstance(grad, tf.IndexedSlices):
    return grad
  rows = tf.shape(grad)[0]
  return tf.IndexedSlices(grad, tf.range(rows), tf.shape(grad, out_type=tf.int64))


def _scale_gradient(grad, factor):
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(grad.values * tf.cast(factor, grad.values.dtype), grad.indices,
                            grad.dense_shape)
  return grad * tf.cast(factor, grad.dtype)


def _is_finite(grad):
  values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
  return tf.reduce_all(tf.math.is_finite(values))
