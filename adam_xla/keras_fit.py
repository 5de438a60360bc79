"""`compile_model`: Keras' `model.compile`, with `fit`'s train step compiled as `make_train_step`'s.

Keras 3 compiles `fit`'s step with XLA only when asked, and under `tf.distribute` not at all:
it would compile `strategy.run` as a whole, which fails under MirroredStrategy (a compiled
function cannot read the other replicas' variables). `compile_model` picks the largest XLA
programs the model's strategy allows (`distribution.compile_plan`), as `make_train_step`
does, and keeps everything else of `fit` (callbacks, progress bar, History, validation,
sample and class weights, multi-output models, `add_loss`). Under MultiWorkerMirroredStrategy
it also works around the Keras bugs that stop `fit` there.
"""

from absl import logging
import keras
from keras.src.losses import loss as keras_loss
from keras.src.trainers import trainer as keras_trainer
import tensorflow as tf

from adam_xla import distribution


def compile_model(model, optimizer, **compile_args):
  """`model.compile(optimizer=optimizer, **compile_args)`, with fit's step compiled by XLA.

  Under no strategy, OneDeviceStrategy or TPUStrategy, forward, backward and update are one
  XLA program (Keras' own step with `jit_compile=True`; TPUStrategy compiles it by itself).
  Under MirroredStrategy and MultiWorkerMirroredStrategy each replica's forward and backward
  are one XLA program; the gradients are then summed across replicas and applied by the
  optimizer (with `adam_xla.Adam`, one XLA program per device). A model with a layer that
  does not support XLA, or with op determinism enabled, keeps Keras' step without XLA; the
  reason is logged.

  Args:
    model: a Keras model, built or not, created in the strategy's scope.
    optimizer: the optimizer, normally an `adam_xla.Adam` created in the same scope.
    **compile_args: the other arguments of `model.compile` (loss, metrics, loss_weights,
      weighted_metrics, steps_per_execution, ...). `jit_compile` is this function's choice.

  Returns:
    The compile plan chosen: one of `distribution.PLAN_DESCRIPTIONS`' keys, or None when
    the model keeps Keras' step without XLA.
  """
  if "jit_compile" in compile_args:
    raise ValueError("compile_model: `jit_compile` is chosen by compile_model from the "
                     "model's strategy; call model.compile yourself to set it.")
  plan = distribution.compile_plan(model.distribute_strategy)
  reason = _why_not_xla(model)
  if reason:
    logging.warning("adam_xla.compile_model: %s, so fit uses Keras' train step without XLA.",
                    reason)
    plan = None
  # Keras turns XLA off by itself under TPUStrategy, whose compiler takes the whole step.
  # In the scope, as Keras' guides do it: metrics created by compile (the loss tracker) are
  # then aggregated over every worker, not this one's replicas alone.
  with model.distribute_strategy.scope():
    model.compile(optimizer=optimizer, jit_compile=plan == distribution.SINGLE_PROGRAM,
                  **compile_args)
  if plan == distribution.REPLICA_PROGRAMS:
    model.train_step = ReplicaProgramsStep(model)
  if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
    _work_around_keras_multi_worker_bugs(model)
  if plan:
    logging.info("adam_xla.compile_model: fit's train step: %s.",
                 distribution.PLAN_DESCRIPTIONS[plan])
  return plan


def _why_not_xla(model):
  """Why the model's step cannot be compiled by XLA (Keras' own test), or None."""
  if keras_trainer.model_supports_jit(model):
    return None
  unsupported = [
      layer.name for layer in model._flatten_layers()  # pylint: disable=protected-access
      if not layer.supports_jit
  ]
  if unsupported:
    return f"layers {unsupported} do not support XLA"
  return "op determinism is enabled (XLA does not support it for every op)"


def _work_around_keras_multi_worker_bugs(model):
  """Makes Keras 3's fit and evaluate run under MultiWorkerMirroredStrategy with 2+ workers.

  Keras fails there before the first step (keras-team/keras#20585), twice over:
  * it builds a distributed model's metrics from one batch averaged over the replicas, and
    this strategy cannot reduce a tuple of values: the first local replica's batch, which
    has the same shapes, is used instead;
  * it averages each step's logs over the replicas with `reduce(MEAN, axis=0)`, which
    fails on scalars: the steps' logs are given that axis (one element per replica).
  """
  strategy = model.distribute_strategy

  def build_from_first_replica(iterator=None, data_batch=None):
    if iterator is not None:
      for _, _, batches in iterator:
        data_batch = tf.nest.map_structure(
            lambda value: distribution.first_local_value(strategy, value), next(batches))
        break
    with strategy.scope():
      model._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

  def with_replica_axis(step):
    return lambda data: tf.nest.map_structure(
        lambda t: tf.reshape(t, [1]) if t.shape.rank == 0 else t, step(data))

  model._maybe_symbolic_build = build_from_first_replica  # pylint: disable=protected-access
  model.train_step = with_replica_axis(model.train_step)
  model.test_step = with_replica_axis(model.test_step)


class ReplicaProgramsStep:
  """Keras' train step with each replica's forward and backward as one XLA program.

  What it computes is Keras' `train_step` (loss with `add_loss` terms and sample weights,
  loss scaling under mixed precision, the loss tracker, `compute_metrics`); only the
  program boundary differs: the optimizer's all-reduce and update and the metrics run
  outside the compiled piece.
  """

  def __init__(self, model):
    self._model = model
    self._forward_backward = tf.function(self._forward_backward_eager, jit_compile=True)

  def _forward_backward_eager(self, x, y, sample_weight):
    model = self._model
    with tf.GradientTape() as tape:
      # pylint: disable=protected-access
      y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
      loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                 training=True)
      scaled = model.optimizer.scale_loss(loss)
    return loss, y_pred, tape.gradient(scaled, model.trainable_weights)

  def __call__(self, data):
    model = self._model
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    loss, y_pred, grads = self._forward_backward(x, y, sample_weight)
    batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
    model._loss_tracker.update_state(  # pylint: disable=protected-access
        keras_loss.unscale_loss_for_distribution(loss), sample_weight=batch_size)
    model.optimizer.apply_gradients(zip(grads, model.trainable_weights))
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
