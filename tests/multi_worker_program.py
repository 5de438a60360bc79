"""One process of tests/multi_worker_test.py: 20 steps of `adam_xla.make_train_step`, then
the trainers' worker helpers (trainers/common/strategies.py) under the same strategy, then 20
steps of Keras `fit` with an `adam_xla.Adam`, once after `model.compile` and once after
`adam_xla.compile_model`.

With --mode=multi_worker it reads TF_CONFIG from the environment and trains under a
MultiWorkerMirroredStrategy (one replica per process, on its one CPU); with --mode=single it
trains on one device with no strategy, the reference. Both see the same global batches, start
from the same seeded weights, and write the initial and final weights (and the losses) to the
.npz file given by --output, with what the helpers answered (number of workers, chief, and
whether any worker raised a flag that only worker 1 raises).

Usage: python multi_worker_program.py --mode={single,multi_worker} --output=weights.npz
"""

import argparse
import json
import os
import sys

import numpy as np

FEATURES, HIDDEN, CLASSES = 8, 16, 3
GLOBAL_BATCH = 16
EXAMPLES = GLOBAL_BATCH * 5
STEPS = 20
LEARNING_RATE = 0.01
DATA_SEED, MODEL_SEED = 0, 1


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("single", "multi_worker"), required=True)
  parser.add_argument("--output", required=True, help="the .npz file to write")
  return parser.parse_args(argv)


def _data():
  """A fixed classification problem: EXAMPLES rows, labels mostly the arg-max of 3 features."""
  rng = np.random.default_rng(DATA_SEED)
  x = rng.normal(size=[EXAMPLES, FEATURES]).astype(np.float32)
  y = np.argmax(x[:, :CLASSES] + 0.3 * rng.normal(size=[EXAMPLES, CLASSES]), axis=1)
  return x, y.astype(np.int64)


def _dataset(tf):
  """Global batches in a fixed order; each worker takes its slice of every global batch."""
  x, y = _data()
  dataset = (tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH,
                                                              drop_remainder=True).repeat())
  options = tf.data.Options()
  # The global batch is split into per-replica batches first; DATA then gives worker w the
  # w-th of them, so the workers together see exactly each global batch.
  options.experimental_distribute.auto_shard_policy = (tf.data.experimental.AutoShardPolicy.DATA)
  options.deterministic = True
  return dataset.with_options(options)


def _model(keras):
  keras.utils.set_random_seed(MODEL_SEED)  # identical initial weights in every process
  return keras.Sequential([
      keras.Input((FEATURES,)),
      keras.layers.Dense(HIDDEN, activation="relu"),
      keras.layers.Dense(CLASSES)
  ])


def _weights(model):
  return [np.array(v.numpy()) for v in model.trainable_variables]


def train(mode):
  """Trains STEPS steps; returns initial and final weights, losses, info and the strategy."""
  # pylint: disable=g-import-not-at-top
  import keras
  import tensorflow as tf

  import adam_xla

  if mode == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise SystemExit("multi_worker_program: --mode=multi_worker needs TF_CONFIG.")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if strategy.num_replicas_in_sync != len(
        json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]):
      raise SystemExit(f"multi_worker_program: expected one replica per worker; got "
                       f"{strategy.num_replicas_in_sync} replicas.")
  else:
    strategy = None
  scope_strategy = strategy or tf.distribute.get_strategy()
  with scope_strategy.scope():
    model = _model(keras)
    optimizer = adam_xla.Adam(learning_rate=LEARNING_RATE)
  initial = _weights(model)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
  step = adam_xla.make_train_step(model, loss_fn, optimizer, strategy=strategy)
  iterator = iter(step.distribute(_dataset(tf)))
  losses = [float(step(iterator)["loss"].numpy()) for _ in range(STEPS)]
  info = {
      "mode": mode,
      "plan": step.plan,
      "num_replicas": scope_strategy.num_replicas_in_sync,
      "iterations": [
          int(v.numpy()) for v in scope_strategy.experimental_local_results(optimizer.iterations)
      ],
      # This process's replica devices (the strategy's), and its CPUs.
      "replica_devices": list(strategy.extended.worker_devices) if strategy else [],
      "physical_cpus": len(tf.config.list_physical_devices("CPU")),
      "variable_types": sorted({
          type(getattr(v, "value", v)).__name__ for v in model.trainable_variables
      }),
  }
  return initial, _weights(model), losses, info, strategy


FIT_COMPILERS = ("compile", "compile_model")


def fit(strategy, compiler):
  """STEPS steps of Keras fit from the same initial weights; final weights and a summary.

  With model.compile and 2+ workers, Keras 3's own fit fails before its first step
  (keras-team/keras#20585); the error is recorded.
  """
  # pylint: disable=g-import-not-at-top
  import keras
  import tensorflow as tf

  import adam_xla

  with (strategy or tf.distribute.get_strategy()).scope():
    model = _model(keras)
    optimizer = adam_xla.Adam(learning_rate=LEARNING_RATE)
    compile_args = dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["accuracy"])
    if compiler == "compile_model":
      plan = adam_xla.compile_model(model, optimizer, **compile_args)
    else:
      plan = None
      model.compile(optimizer=optimizer, **compile_args)
  try:
    history = model.fit(_dataset(tf), steps_per_epoch=STEPS // 2, epochs=2, verbose=0,
                        shuffle=False)
  except Exception as e:  # pylint: disable=broad-except
    if compiler == "compile_model" or strategy is None:
      raise
    return _weights(model), {"plan": plan, "error": f"{type(e).__name__}: {e}"[:300]}
  summary = {
      "plan": plan, "history": history.history, "iterations": int(optimizer.iterations.numpy())
  }
  return _weights(model), summary


def _worker_helpers(strategy):
  """What trainers/common/strategies.py says of this process and its cluster.

  Worker 1 alone raises the flag; `any_worker` must report it on every worker (the same
  all-reduce the trainers use to stop together), and on one device there is no worker 1.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from trainers.common import strategies  # pylint: disable=g-import-not-at-top

  strategy = strategy or tf.distribute.get_strategy()
  resolver = strategy.cluster_resolver
  worker_1 = resolver is not None and resolver.task_type == "worker" and resolver.task_id == 1
  return {
      "num_workers": strategies.num_workers(strategy),
      "worker_index": strategies.worker_index(strategy),
      "any_worker": strategies.any_worker(strategy)(worker_1)
  }


def _barrier(strategy):
  """Returns when every worker got here: no worker exits while another still works."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function  # eagerly, the reduce would start a thread pool (and need /dev/shm)
  def count_replicas():
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)),
                           axis=None)

  total = count_replicas()
  if int(total.numpy()) != strategy.num_replicas_in_sync:
    raise RuntimeError(f"multi_worker_program: barrier counted {total.numpy()} replicas.")


def main(argv=None):
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  initial, final, losses, info, strategy = train(args.mode)
  info.update(_worker_helpers(strategy))
  arrays = {}
  for compiler in FIT_COMPILERS:
    weights, info[compiler] = fit(strategy, compiler)
    arrays.update({f"{compiler}_{i}": w for i, w in enumerate(weights)})
  arrays.update({f"initial_{i}": w for i, w in enumerate(initial)})
  arrays.update({f"final_{i}": w for i, w in enumerate(final)})
  arrays["losses"] = np.array(losses, np.float64)
  arrays["info"] = np.array(json.dumps(info))
  partial = args.output + ".partial"
  with open(partial, "wb") as f:  # np.savez would append ".npz" to a name without it
    np.savez(f, **arrays)
  os.replace(partial, args.output)  # the test never reads a half-written file
  print(f"multi_worker_program: wrote {args.output}: {json.dumps(info)}", flush=True)
  if strategy is not None:
    _barrier(strategy)


if __name__ == "__main__":
  main()
