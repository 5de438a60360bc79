"""`make_train_step`: a model, a loss and an `adam_xla.Adam` as one compiled train step.

The step computes and returns metrics only; checkpoints, summaries, evaluation and progress
belong to the loop that calls it. Which pieces are XLA programs depends on the active
`tf.distribute` strategy (`distribution.compile_plan`); the step logs the plan it chose.
"""

import dataclasses
import types
from typing import Optional
import warnings

from absl import logging
import keras
import tensorflow as tf

from adam_xla import distribution
from adam_xla import optimizer as optimizer_lib

LOSS_SCALING_MODES = (None, "dynamic")
XLA_SCOPES = ("step", "update")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How the step runs. Validated on construction.

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
  skip_nonfinite: do not apply a step whose summed gradients hold a NaN or an Inf: variables,
    slots and `iterations` stay as they were. The step counts it in the "nonfinite_steps"
    output and records which variables' gradients were bad in `TrainStep.nonfinite_counts`
    and the run of bad steps in `TrainStep.consecutive_nonfinite`; what to do next (stop or
    go on) is the caller's policy. With loss scaling, overflow is the loss scale's business
    first: a bad step counts as non-finite only when the scale is already at its minimum, 1.
  xla_scope: "step" (default) compiles forward, backward and update (as the plan allows);
    "update" compiles only the Adam update and runs forward and backward as ordinary
    TensorFlow ops. On CPU, XLA's convolution gradients are slower than TensorFlow's oneDNN
    kernels (see the README's figures), so convolutional models train faster with "update"
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
# Outputs that count steps over a call (summed, not averaged, over its steps).
_COUNTED_OUTPUTS = ("skipped_steps", "nonfinite_steps")


def make_train_step(model, loss_fn, optimizer, *, metrics=None, strategy=None,
                    steps_per_loop=1, accumulation_steps=1, loss_scaling=None,
                    initial_loss_scale=2.0**15, loss_scale_growth_interval=2000,
                    loop_in_program=False, xla_scope="step", skip_nonfinite=False):
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
    steps_per_loop: steps per call (metrics are averaged over them).
    accumulation_steps: micro-batches per step, for global batches that do not fit.
    loss_scaling: None, or "dynamic" for float16 compute (see `StepConfig`).
    initial_loss_scale, loss_scale_growth_interval: the dynamic loss scale's start value and
      the number of good steps after which it doubles.
    loop_in_program: loop over `steps_per_loop` inside the XLA program (see `StepConfig`).
    xla_scope: "step" compiles the whole step where the strategy allows; "update" only the
      Adam update (faster for convolutional models on CPU; see `StepConfig`).
    skip_nonfinite: leave out steps whose gradients are not finite and count them (see
      `StepConfig`).

  Returns:
    A `TrainStep`: call it with an iterator over `step.distribute(dataset)` (any strategy)
    or, with no strategy and steps_per_loop=1, with one batch. It returns a dict of scalar
    tensors: "loss", each metric, with loss scaling "loss_scale" and "skipped_steps", and
    with skip_nonfinite "nonfinite_steps".
  """
  if not isinstance(optimizer, optimizer_lib.Adam):
    raise TypeError(f"make_train_step: `optimizer` must be an adam_xla.Adam; got "
                    f"{type(optimizer).__name__}.")
  if not callable(loss_fn):
    raise TypeError("make_train_step: `loss_fn` must be callable as loss_fn(labels, "
                    "predictions).")
  config = StepConfig(steps_per_loop=steps_per_loop, accumulation_steps=accumulation_steps,
                      loss_scaling=loss_scaling, initial_loss_scale=initial_loss_scale,
                      loss_scale_growth_interval=loss_scale_growth_interval,
                      loop_in_program=loop_in_program, xla_scope=xla_scope,
                      skip_nonfinite=skip_nonfinite)
  return TrainStep(model, loss_fn, optimizer, _metric_fns(metrics),
                   strategy or tf.distribute.get_strategy(), config)


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
    if name in _COUNTED_OUTPUTS + ("loss", "loss_scale"):
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
    with strategy.scope():
      optimizer.build(model.trainable_variables)
      if config.loss_scaling:
        self.loss_scale = tf.Variable(
            config.initial_loss_scale, dtype=tf.float32, trainable=False, name="loss_scale",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.good_steps = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="good_steps",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      if config.skip_nonfinite:
        self.nonfinite_counts = tf.Variable(
            tf.zeros([len(model.trainable_variables)], tf.int64), trainable=False,
            name="nonfinite_counts", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.consecutive_nonfinite = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="consecutive_nonfinite",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    if config.loop_in_program and self.plan != distribution.SINGLE_PROGRAM:
      raise ValueError(f"make_train_step: loop_in_program needs the single-program plan; the "
                       f"{type(strategy).__name__} strategy uses {self.plan}.")
    described = (distribution.PLAN_DESCRIPTIONS[self.plan] if config.xla_scope == "step" else
                 "xla_scope='update': only the Adam update is an XLA program (one per "
                 "device); forward and backward run as TensorFlow ops")
    logging.info("adam_xla train step: %s plan (%s); %d step(s) per call", self.plan,
                 described, config.steps_per_loop)
    self._functions = _Untracked(**self._build_functions())

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
    batch_dim = tf.nest.flatten(dataset.element_spec)[0].shape[:1]
    if batch_dim.rank and batch_dim[0] is None:
      warnings.warn("TrainStep.distribute: the batch dimension is not fixed; batch with "
                    "drop_remainder=True so that a partial last batch does not recompile.")
    return distribution.distribute_dataset(self._parts.strategy, dataset)

  def __call__(self, data):
    """Runs `steps_per_loop` steps on `data` (an iterator) or one step on a batch."""
    if isinstance(data, (tf.data.Iterator, tf.distribute.DistributedIterator)):
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
    replicas = distribution.num_replicas(parts.strategy)
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
          _add_gradients(a, b) for a, b in zip(grads, micro_grads)]
      loss += micro_loss
      for name, fn in parts.metric_fns.items():
        metrics[name] += _sum_examples(fn(micro_labels, predictions)) / global_batch
    if scale is not None:
      grads = [None if g is None else _scale_gradient(g, 1.0 / scale) for g in grads]
    return loss, grads, metrics

  def _apply(self, grads):
    """Sums gradients over replicas and applies them.

    Returns (whether the step applied, whether it was non-finite); None where not tracked.
    """
    pairs = [(g, v) for g, v in zip(grads, self._variables()) if g is not None]
    if len(pairs) < len(grads):
      missing = [v.name for g, v in zip(grads, self._variables()) if g is None]
      warnings.warn(f"TrainStep: no gradient for {missing}; they are not trained.")
    summed = distribution.sum_over_replicas([g for g, _ in pairs])
    config, applied, nonfinite = self.config, None, None
    if config.loss_scaling or config.skip_nonfinite:
      finite = iter([_is_finite(g) for g in summed])
      finite_each = tf.stack([next(finite) if g is not None else tf.constant(True)
                              for g in grads])
      applied = tf.reduce_all(finite_each)
      if config.skip_nonfinite:
        nonfinite = self._record_nonfinite(applied, finite_each)
    self._parts.optimizer.apply_gradients(
        zip(summed, [v for _, v in pairs]), apply_if=applied, sum_over_replicas=False)
    if config.loss_scaling:
      self._update_loss_scale(applied)
    return applied, nonfinite

  def _record_nonfinite(self, finite, finite_each):
    """Counts a bad step the loss scale (if any) cannot explain; returns whether it was one."""
    bad = tf.logical_not(finite)
    if self.config.loss_scaling:
      bad = tf.logical_and(bad, self.loss_scale <= 1.0)
    bad_each = tf.logical_and(bad, tf.logical_not(finite_each))
    self.nonfinite_counts.assign_add(tf.cast(bad_each, tf.int64))
    self.consecutive_nonfinite.assign(
        tf.where(bad, self.consecutive_nonfinite + 1, tf.constant(0, tf.int64)))
    return bad

  def _update_loss_scale(self, applied):
    good = tf.where(applied, self.good_steps + 1, tf.constant(0, tf.int64))
    grow = good >= self.config.loss_scale_growth_interval
    scale = tf.where(applied, tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                     tf.maximum(self.loss_scale / 2.0, 1.0))
    self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), good))
    self.loss_scale.assign(scale)

  def _outputs(self, loss, metrics, applied_and_nonfinite):
    """Per-replica results whose sum over replicas is the step's value."""
    outputs = {"loss": loss, **metrics}
    applied, nonfinite = applied_and_nonfinite
    if self.config.loss_scaling:
      share = 1.0 / distribution.num_replicas(self._parts.strategy)
      outputs["skipped_steps"] = (1.0 - tf.cast(applied, tf.float32)) * share
      outputs["loss_scale"] = tf.convert_to_tensor(self.loss_scale) * share
    if self.config.skip_nonfinite:
      share = 1.0 / distribution.num_replicas(self._parts.strategy)
      outputs["nonfinite_steps"] = tf.cast(nonfinite, tf.float32) * share
    return outputs

  def _replica_step(self, batch):
    loss, grads, metrics = self._forward_backward(batch)
    return self._outputs(loss, metrics, self._apply(grads))

  # ---- The compiled functions, per plan -----------------------------------------------

  def _build_functions(self):
    strategy, plan, config = self._parts.strategy, self.plan, self.config
    device = distribution.program_device(strategy)
    compile_step = config.xla_scope == "step"
    if plan == distribution.REPLICA_PROGRAMS:
      forward_backward = tf.function(self._forward_backward, jit_compile=compile_step)

      def replica_step(batch):
        loss, grads, metrics = forward_backward(batch)
        return self._outputs(loss, metrics, self._apply(grads))
    else:
      replica_step = self._replica_step

    def one_step(batch):
      return distribution.sum_replica_results(
          strategy, distribution.run_on_replicas(strategy, replica_step, (batch,)))

    if plan == distribution.SINGLE_PROGRAM and compile_step:
      # The compiled program must run where the variables live (OneDeviceStrategy's device):
      # XLA cannot read a resource on another device.
      compiled_step = tf.function(one_step, jit_compile=True)

      def one_step(batch):  # pylint: disable=function-redefined
        with tf.device(device):
          return compiled_step(batch)

    def loop(iterator):
      self.trace_count += 1
      if config.loop_in_program:
        batches = [next(iterator) for _ in range(config.steps_per_loop)]
        with tf.device(device):
          return compiled_loop(tf.nest.map_structure(lambda *b: tf.stack(b), *batches))
      return _average(_run_steps(lambda: one_step(next(iterator)), config.steps_per_loop),
                      config.steps_per_loop)

    @tf.function(jit_compile=True)
    def compiled_loop(stacked):
      pick = lambda k: tf.nest.map_structure(lambda t: t[k], stacked)
      totals = one_step(pick(0))
      for k in tf.range(1, config.steps_per_loop):
        totals = _add_results(totals, one_step(pick(k)))
      return _average(totals, config.steps_per_loop)

    def one_batch(batch):
      self.trace_count += 1
      return one_step(batch)

    return {"loop": tf.function(loop), "one_batch": tf.function(one_batch)}


def _run_steps(step, count):
  totals = step()
  for _ in tf.range(count - 1):
    totals = _add_results(totals, step())
  return totals


def _add_results(a, b):
  added = {key: a[key] + b[key] for key in a}
  if "loss_scale" in b:
    added["loss_scale"] = b["loss_scale"]  # the latest, not a sum
  return added


def _average(totals, count):
  return {key: value if key in _COUNTED_OUTPUTS + ("loss_scale",) else value / count
          for key, value in totals.items()}


def _call_model(model, features):
  if isinstance(model, keras.Model):
    return model(features, training=True)
  return model(features)


def _regularization(model):
  losses = getattr(model, "losses", None) if isinstance(model, keras.Model) else None
  return tf.add_n([tf.cast(l, tf.float32) for l in losses]) if losses else 0.0


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
    return tf.IndexedSlices(tf.concat([a.values, b.values], 0),
                            tf.concat([a.indices, b.indices], 0), a.dense_shape)
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
