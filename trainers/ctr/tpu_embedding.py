"""The DLRM's embedding tables on Cloud TPU, through TensorFlow's TPU embedding mid-level API.

Why a separate path: on TPU, large tables cannot be ordinary variables mirrored into every
core's memory. `tf.tpu.experimental.embedding.TPUEmbedding` keeps them in TPU HBM, sharded
across the cores, does the lookups itself (ids are enqueued from the host, activations are
dequeued in the replica step) and applies the optimizer to the tables itself, from the
gradients w.r.t. the activations. So `adam_xla.Adam` never sees the tables there; the tables'
Adam is the API's `tf.tpu.experimental.embedding.Adam`, configured here to compute our update.

* `feature_config`: one `TableConfig` (and one `FeatureConfig`) per categorical feature, with
  the DLRM initialization. Pure and CPU-testable.
* `tpu_optimizer` / `tpu_optimizer_like`: the TPU Adam that computes adam_xla's update (see
  `tpu_optimizer` for what matches exactly and what remains different), or a clear ValueError
  for settings the TPU API cannot express.
* `TPUEmbeddingStep`: the train step of the TF guide's documented pattern. Not run on TPU
  hardware.

This targets `TPUEmbedding` (TPU v2 to v4 embedding engine). The SparseCore API
(`TPUEmbeddingV2`, tpu_embedding_v3.py) passes no lazy/non-lazy flag to its Adam kernel and
rejects weight decay, so `sparse_mode="dense"` would not hold there.
"""

import math
import numbers
import types

import keras
import tensorflow as tf

import adam_xla
from trainers.ctr import models
from trainers.ctr.criteo_format import NUM_DENSE

_TPU_STRATEGIES = (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)

# ---- Tables ---------------------------------------------------------------------------------


class DLRMUniform:
  """Uniform in +-sqrt(1 / rows) of the whole table, as `models.EmbeddingTables` initializes.

  The API calls the initializer once per host shard. It passes `shard_info` (the shard's shape
  and row offset) to initializers that accept it, which this one does: a seeded draw then
  folds the offset into the seed, so that shards of equal shape do not get equal rows.
  """

  def __init__(self, rows, seed=None):
    self.rows, self.seed = int(rows), seed
    self.limit = math.sqrt(1.0 / self.rows)

  def __call__(self, shape, dtype=tf.float32, shard_info=None):
    offset = 0
    if shard_info is not None:
      shape, offset = shard_info.shape, shard_info.offset[0]
    if self.seed is None:
      return tf.random.uniform(shape, -self.limit, self.limit, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed=[self.seed, offset], minval=-self.limit,
                                       maxval=self.limit, dtype=dtype)

  def __repr__(self):
    return f"DLRMUniform(rows={self.rows}, seed={self.seed})"


def feature_config(table_sizes, embedding_dim, *, initializer_seed=None):
  """One `FeatureConfig` per categorical feature, each with its own table ("table_<i>").

  Each feature is enqueued as a dense int tensor [batch] (one id per example, weight 1), so
  the table's combiner reduces a single vector: "mean", "sum" and "sqrtn" all return it
  unchanged. "sum" is set because it divides by nothing.
  """
  if isinstance(embedding_dim,
                bool) or not isinstance(embedding_dim, numbers.Integral) or (embedding_dim < 1):
    raise ValueError(f"feature_config: `embedding_dim` must be an integer >= 1; got "
                     f"{embedding_dim!r}.")
  sizes = tuple(table_sizes)
  if not sizes or any(
      isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
    raise ValueError(f"feature_config: `table_sizes` must be a non-empty sequence of integers "
                     f">= 1 (rows per table); got {table_sizes!r}.")
  features = []
  for i, rows in enumerate(sizes):
    seed = None if initializer_seed is None else int(initializer_seed) + i
    table = tf.tpu.experimental.embedding.TableConfig(
        vocabulary_size=int(rows), dim=int(embedding_dim), initializer=DLRMUniform(rows, seed),
        combiner="sum", name=f"table_{i}")
    features.append(tf.tpu.experimental.embedding.FeatureConfig(table=table, name=f"feature_{i}"))
  return tuple(features)


# ---- The tables' Adam ------------------------------------------------------------------------


def tpu_optimizer(learning_rate, *, beta_1, beta_2, epsilon, sparse_mode, clipvalue=None,
                  weight_decay=0.0, amsgrad=False, clipnorm=None, global_clipnorm=None,
                  iterations=None):
  """The `tf.tpu.experimental.embedding.Adam` that applies adam_xla's update to the tables.

  Args:
    learning_rate: a float, a zero-argument callable, a tensor or variable, or (with
      `iterations`) a Keras `LearningRateSchedule`.
    beta_1, beta_2, epsilon: floats (the TPU configuration fixes them; no callables).
      epsilon must be > 0 (the API refuses 0).
    sparse_mode: "dense" (non-lazy: every row's moments decay and every row moves each step,
      adam_xla's dense mode) or "lazy" (only rows looked up in the batch).
    clipvalue: None or a float > 0: each element of a row's gradient is clipped to
      [-clipvalue, clipvalue].
    weight_decay: decoupled weight decay, var -= lr * weight_decay * var as in adam_xla.
    amsgrad, clipnorm, global_clipnorm: must be off; the TPU Adam has no equivalent.
    iterations: adam_xla's step counter (`Adam.iterations`, steps applied before this one).
      With it the learning rate sent to the TPU includes adam_xla's bias correction, so the
      update is ours; without it the TPU Adam runs with no bias correction at all.

  What the settings give, from the comments of tensorflow/core/protobuf/tpu/
  optimization_parameters.proto (AdamParameters, OptimizationParameters) and
  tensorflow/python/tpu/tpu_embedding_v2_utils.py (Adam, _Optimizer), TF 2.21:
    * sum_inside_sqrt=False: var -= lr * m / (sqrt(v) + epsilon), epsilon after the sqrt, as
      ours (True would compute m / sqrt(v + epsilon^2)).
    * lazy_adam = (sparse_mode == "lazy"); use_gradient_accumulation=True: ids repeated in a
      batch (on any core) have their gradients summed and the row is updated once, as ours.
      Non-lazy Adam requires it, and clipvalue needs it.
    * Bias correction: the proto says the TPU Adam "does not implement hyper-parameter update
      ... use the dynamic learning rate feature instead, setting the learning rate to: user
      learning_rate * sqrt(1 - beta2^t) / (1 - beta1^t)". With `iterations` the learning rate
      is that callable (`adam_xla.bias_corrected_learning_rate`, t = iterations + 1, so it
      must be read before adam_xla increments `iterations` in the same step).
    * weight decay: with a float learning rate, weight_decay_factor = lr * weight_decay (not
      multiplied by the sent rate, which is bias-corrected). With a dynamic rate and no
      `iterations`, weight_decay_factor = weight_decay multiplied by the sent rate.

  Differences that remain:
    * Without `iterations`: no bias correction (early steps are sqrt(1 - beta2^t) /
      (1 - beta1^t) times ours, e.g. 0.32x at t=1 with the default betas).
    * Weight decay with a dynamic learning rate and `iterations` cannot be expressed (the
      factor is a constant or times the bias-corrected rate): refused. Whether the TPU decays
      before or after the Adam step (they differ by weight_decay * update), and whether lazy
      Adam decays only looked-up rows as ours does, is not in any public source.
    * Clipping happens inside the embedding engine; the proto says "before using it for
      updates" but not whether before or after accumulation (ours: after summing duplicates).
    * Float rounding differs (TPU kernels, their op order).

  Raises:
    ValueError: for a setting the TPU API cannot express, naming it and the accepted values.
  """
  if sparse_mode not in adam_xla.SPARSE_MODES:
    raise ValueError(f"tpu_optimizer: `sparse_mode` must be one of {adam_xla.SPARSE_MODES}; "
                     f"got {sparse_mode!r}.")
  if amsgrad:
    raise ValueError("tpu_optimizer: `amsgrad` must be False; the TPU embedding Adam has no "
                     "AMSGrad (it keeps only the momenta and velocities slots).")
  for name, value in (("clipnorm", clipnorm), ("global_clipnorm", global_clipnorm)):
    if value is not None:
      raise ValueError(f"tpu_optimizer: `{name}` must be None; the TPU embedding API clips "
                       f"gradient elements only (use `clipvalue`). Got {value!r}.")
  beta_1 = _number("beta_1", beta_1, "a float in [0, 1)", lambda x: 0 <= x < 1)
  beta_2 = _number("beta_2", beta_2, "a float in [0, 1)", lambda x: 0 <= x < 1)
  epsilon = _number("epsilon", epsilon, "a float > 0", lambda x: x > 0)
  weight_decay = _number("weight_decay", weight_decay, "a float >= 0", lambda x: x >= 0)
  if clipvalue is not None:
    clipvalue = _number("clipvalue", clipvalue, "None or a float > 0", lambda x: x > 0)
  constant_rate = isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool)
  if constant_rate:
    _number("learning_rate", learning_rate, "a float >= 0", lambda x: x >= 0)
  rate = _tpu_learning_rate(learning_rate, beta_1, beta_2, iterations)

  decay = {}
  if weight_decay:
    if constant_rate:
      decay = dict(weight_decay_factor=float(learning_rate) * weight_decay,
                   multiply_weight_decay_factor_by_learning_rate=False)
    elif iterations is None:
      decay = dict(weight_decay_factor=weight_decay,
                   multiply_weight_decay_factor_by_learning_rate=True)
    else:
      raise ValueError(
          "tpu_optimizer: `weight_decay` must be 0 when the learning rate is a schedule, "
          "callable or variable and `iterations` is given: the TPU multiplies the decay by "
          "the bias-corrected rate it is sent, not by the rate. Use a float learning rate "
          f"or weight_decay=0. Got weight_decay={weight_decay!r}.")
  return tf.tpu.experimental.embedding.Adam(
      learning_rate=rate,
      beta_1=beta_1,
      beta_2=beta_2,
      epsilon=epsilon,
      lazy_adam=sparse_mode == "lazy",
      sum_inside_sqrt=False,
      use_gradient_accumulation=True,
      clipvalue=clipvalue,
      **decay,
      # TF 2.21 writes this bool into an enum field of the TPU configuration, which protobuf 7
      # refuses ("Expected an int, got a boolean"), failing TPUEmbedding.build on a TPU. 0 is
      # the value False used to be written as (UNSPECIFIED: no low-dimensional packing).
      low_dimensional_packing_status=0)


def tpu_optimizer_like(optimizer):
  """`tpu_optimizer` with the settings of an `adam_xla.Adam`, bias-corrected by its step."""
  config = optimizer.get_config()
  # A callable: `learning_rate` reads the rate at the current step (a schedule's value), so
  # reading it once here would freeze a schedule.
  return tpu_optimizer(
      lambda: optimizer.learning_rate, beta_1=optimizer.beta_1, beta_2=optimizer.beta_2,
      epsilon=optimizer.epsilon, sparse_mode=optimizer.sparse_mode, clipvalue=config["clipvalue"],
      weight_decay=config["weight_decay"], amsgrad=optimizer.amsgrad, clipnorm=config["clipnorm"],
      global_clipnorm=config["global_clipnorm"], iterations=optimizer.iterations)


def _number(name, value, accepted, ok):
  if isinstance(value, bool) or not isinstance(
      value, numbers.Real) or not math.isfinite(value) or not ok(value):
    raise ValueError(f"tpu_optimizer: `{name}` must be {accepted} (the TPU embedding "
                     f"configuration holds fixed numbers); got {value!r}.")
  return float(value)


def _tpu_learning_rate(learning_rate, beta_1, beta_2, iterations):
  """A float or a zero-argument callable, the two forms the TPU API accepts."""
  is_tensor = isinstance(learning_rate, (tf.Tensor, tf.Variable))
  if not (isinstance(learning_rate, numbers.Real) or is_tensor or callable(learning_rate)):
    raise ValueError("tpu_optimizer: `learning_rate` must be a float, a tensor or variable, a "
                     "zero-argument callable or a LearningRateSchedule; got "
                     f"{learning_rate!r}.")
  if iterations is None:
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
      raise ValueError("tpu_optimizer: a LearningRateSchedule `learning_rate` needs "
                       "`iterations` (the step it is called with); pass Adam.iterations.")
    if is_tensor:
      return lambda: learning_rate
    return float(learning_rate) if not callable(learning_rate) else learning_rate
  if not isinstance(iterations, tf.Variable):
    raise ValueError(f"tpu_optimizer: `iterations` must be None or the int step variable "
                     f"(adam_xla Adam.iterations); got {iterations!r}.")

  # adam_xla's own lr_t: lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), t = iterations + 1.
  return lambda: adam_xla.bias_corrected_learning_rate(learning_rate, beta_1, beta_2, iterations)


# ---- The train step ------------------------------------------------------------------------


class TPUEmbeddingStep(tf.Module):
  """A DLRM train step with the tables in the TPU embedding API. NOT RUN ON TPU HARDWARE.

  Written against the public TF2 API following the documented pattern of `TPUEmbedding`
  (enqueue on the host, dequeue / apply_gradients in the replica step); it has not been run
  on a TPU. Per step: the batch's ids are enqueued (training=True); each replica dequeues the
  activations, computes logits with `model.interact`, the sigmoid cross-entropy summed over
  its examples and divided by the global batch size, and the gradients w.r.t. the
  activations (sent to `embedding.apply_gradients`, whose Adam is `tpu_optimizer_like(
  optimizer)`) and w.r.t. the bottom and top MLPs (applied with `optimizer`).

  Create the `models.DLRM` without calling it (not `build_dlrm`): a built DLRM has its own
  tables, which on TPU would be mirrored into every core. Checkpoint `step.embedding` (tables
  and their slots) with the model and the optimizer. The optimizer's learning rate is a
  variable or a schedule, so weight_decay > 0 is refused for the tables (see `tpu_optimizer`).

  Args:
    model: an unbuilt `models.DLRM`.
    optimizer: the `adam_xla.Adam` for the MLPs; the tables get the same settings.
    global_batch_size: examples per step over all replicas (a multiple of their number).
    num_dense: dense features per example (builds the bottom MLP).
    steps_per_loop: steps per call; the call returns their mean loss.
    strategy: a `tf.distribute.TPUStrategy` (default: the one in scope).
    initializer_seed: see `feature_config`.
  """

  def __init__(self, model, optimizer, *, global_batch_size, num_dense=NUM_DENSE, steps_per_loop=1,
               strategy=None, initializer_seed=None):
    super().__init__(name="tpu_embedding_step")
    if not isinstance(optimizer, adam_xla.Adam):
      raise TypeError(f"TPUEmbeddingStep: `optimizer` must be an adam_xla.Adam; got "
                      f"{type(optimizer).__name__}.")
    if not isinstance(model, models.DLRM):
      raise TypeError(f"TPUEmbeddingStep: `model` must be a trainers.ctr.models.DLRM; got "
                      f"{type(model).__name__}.")
    if model.embedding.built:
      raise ValueError("TPUEmbeddingStep: the DLRM's own embedding tables are built; on TPU "
                       "they are unused and would be copied to every core. Create the model "
                       "with models.DLRM(...) and do not call it (not build_dlrm).")
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, _TPU_STRATEGIES):
      raise ValueError(f"TPUEmbeddingStep needs a tf.distribute.TPUStrategy (pass it or "
                       f"create the step in its scope); got {type(strategy).__name__}. "
                       "Without a TPU, train the DLRM with its own tables: "
                       "adam_xla.make_train_step.")
    replicas = strategy.num_replicas_in_sync
    if global_batch_size < 1 or global_batch_size % replicas:
      raise ValueError(f"TPUEmbeddingStep: `global_batch_size` ({global_batch_size}) must be "
                       f"a positive multiple of the {replicas} replicas.")
    if isinstance(steps_per_loop, bool) or not isinstance(steps_per_loop, int) or (steps_per_loop
                                                                                   < 1):
      raise ValueError(f"TPUEmbeddingStep: `steps_per_loop` must be an integer >= 1; got "
                       f"{steps_per_loop!r}.")
    self.global_batch_size = int(global_batch_size)
    self.steps_per_loop = steps_per_loop
    table_sizes, dim = model.embedding.table_sizes, model.embedding.embedding_dim
    with strategy.scope():
      # Builds the bottom and top MLPs only; the tables stay unbuilt.
      model.interact(tf.zeros([1, num_dense]), [tf.zeros([1, dim])] * len(table_sizes))
      variables = list(model.trainable_variables)
      optimizer.build(variables)
      self.embedding = tf.tpu.experimental.embedding.TPUEmbedding(
          feature_config(table_sizes, dim, initializer_seed=initializer_seed),
          tpu_optimizer_like(optimizer))
      per_replica = tf.TensorShape([self.global_batch_size // replicas])
      self.embedding.build(per_replica_input_shapes=(per_replica,) * len(table_sizes))
    # Not tracked: the step's checkpoint holds only `embedding`.
    self._parts = types.SimpleNamespace(model=model, optimizer=optimizer, strategy=strategy,
                                        variables=variables)
    self._loop = tf.function(self._run_steps)
    self._predict = tf.function(self._predict_batch)

  @staticmethod
  def split(dataset):
    """(features, labels) batches -> (ids, (dense, labels)) batches, the elements a call takes:
    ids a tuple of one [batch] int tensor per feature. Batches stay on the host, as `enqueue`
    requires (the trainer's `resumable_input` keeps them there)."""

    def split_features(features, labels):
      return tuple(tf.unstack(features["sparse"], axis=1)), (features["dense"], labels)

    return dataset.map(split_features)

  def distribute(self, dataset):
    """(features, labels) batches of the global size -> the distributed input of a call, kept
    on the host (experimental_fetch_to_device=False)."""
    return self._parts.strategy.experimental_distribute_dataset(
        self.split(dataset), options=tf.distribute.InputOptions(experimental_fetch_to_device=False))

  def __call__(self, iterator):
    """Runs `steps_per_loop` steps from an iterator over `distribute(...)`; returns the loss."""
    return {"loss": self._loop(iterator)}

  def predict(self, batch):
    """One batch of `distribute(...)` -> per-replica (probabilities, labels); no training."""
    return self._predict(batch)

  def _predict_batch(self, batch):
    ids, dense_and_labels = batch
    self.embedding.enqueue(ids, training=False)
    return self._parts.strategy.run(self._replica_predictions, args=(dense_and_labels,))

  def _replica_predictions(self, dense_and_labels):
    dense, labels = dense_and_labels
    logits = self._parts.model.interact(dense, list(self.embedding.dequeue()))
    return tf.sigmoid(tf.reshape(logits, [-1])), tf.reshape(tf.cast(labels, tf.float32), [-1])

  def _run_steps(self, iterator):
    strategy, total = self._parts.strategy, tf.constant(0.0)
    for _ in tf.range(self.steps_per_loop):
      ids, dense_and_labels = next(iterator)
      self.embedding.enqueue(ids, training=True)
      loss = strategy.run(self._replica_step, args=(dense_and_labels,))
      total += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
    return total / self.steps_per_loop

  def _replica_step(self, dense_and_labels):
    dense, labels = dense_and_labels
    parts = self._parts
    with tf.GradientTape() as tape:
      activations = self.embedding.dequeue()
      tape.watch(activations)
      logits = parts.model.interact(dense, list(activations))
      loss = tf.reduce_sum(models.sigmoid_cross_entropy(labels, logits)) / float(
          self.global_batch_size)
    grads, activation_grads = tape.gradient(loss, (parts.variables, activations))
    # First: the tables' learning rate reads optimizer.iterations (t = iterations + 1), which
    # apply_gradients below increments; automatic control dependencies keep this order.
    self.embedding.apply_gradients(activation_grads)
    parts.optimizer.apply_gradients(zip(grads, parts.variables))
    return loss
