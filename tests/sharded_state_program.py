"""One worker of tests/sharded_state_multi_worker_test.py.

Under the MultiWorkerMirroredStrategy of TF_CONFIG, restores a checkpoint written by one
process (deferred: before the optimizer is built), trains STEPS steps of
`adam_xla.make_train_step` with `Adam(shard_state=...)`, saves a checkpoint (the chief to
--checkpoint_dir, the others to a directory of their own, as every worker must save), and
writes the restored slots, the final weights and slots (read by every worker: a collective)
to the .npz file --output.

With --initial it instead trains 3 steps on one device (no strategy) and writes the checkpoint
the workers restore, and its slots.

Usage: python sharded_state_program.py --shard_state={0,1} --restore=CKPT
         --checkpoint_dir=DIR --output=OUT.npz
       python sharded_state_program.py --initial --checkpoint_dir=DIR --output=OUT.npz
"""

import argparse
import os
import sys

import numpy as np

FEATURES, HIDDEN, CLASSES = 8, 33, 3  # 419 parameters: an odd number, so shards are padded
GLOBAL_BATCH = 16
STEPS = 20


def model_and_optimizer(keras, adam_xla, shard_state):
  """The seeded model and its Adam (weight decay, global clip norm): the same in every
  process."""
  keras.utils.set_random_seed(1)
  model = keras.Sequential([
      keras.Input((FEATURES,)),
      keras.layers.Dense(HIDDEN, "relu"),
      keras.layers.Dense(CLASSES)
  ])
  return model, adam_xla.Adam(0.01, weight_decay=0.01, global_clipnorm=1.0, shard_state=shard_state)


def dataset(tf):
  rng = np.random.default_rng(0)
  x = rng.normal(size=[GLOBAL_BATCH * 4, FEATURES]).astype(np.float32)
  y = rng.integers(0, CLASSES, size=[GLOBAL_BATCH * 4]).astype(np.int64)
  data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  options.deterministic = True
  return data.repeat().with_options(options)


def slot_values(model, optimizer):
  variables = model.trainable_variables
  return {
      f"{name}_{i}": optimizer.slot(v, name).numpy() for i, v in enumerate(variables)
      for name in optimizer.slot_names
  }


def _write_initial(tf, keras, adam_xla, args):
  """3 steps on one device: a checkpoint with non-zero slots for the workers to restore."""
  model, optimizer = model_and_optimizer(keras, adam_xla, False)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
  step = adam_xla.make_train_step(model, loss_fn, optimizer)
  iterator = iter(step.distribute(dataset(tf)))
  for _ in range(3):
    step(iterator)
  path = tf.train.Checkpoint(model=model,
                             optimizer=optimizer).write(os.path.join(args.checkpoint_dir, "ckpt"))
  with open(args.output, "wb") as f:
    np.savez(f, **{f"slot_{k}": v for k, v in slot_values(model, optimizer).items()})
  print(f"sharded_state_program: wrote {path}", flush=True)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--initial", action="store_true")
  parser.add_argument("--shard_state", type=int, choices=(0, 1), default=0)
  parser.add_argument("--restore")
  parser.add_argument("--checkpoint_dir", required=True)
  parser.add_argument("--output", required=True)
  args = parser.parse_args(argv)
  # pylint: disable=g-import-not-at-top
  import keras
  import tensorflow as tf

  import adam_xla

  if args.initial:
    _write_initial(tf, keras, adam_xla, args)
    return
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  with strategy.scope():
    model, optimizer = model_and_optimizer(keras, adam_xla, bool(args.shard_state))
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  status = checkpoint.restore(args.restore)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
  step = adam_xla.make_train_step(model, loss_fn, optimizer, strategy=strategy)  # builds
  del status  # the restored slots are compared by the test
  restored = slot_values(model, optimizer)
  iterator = iter(step.distribute(dataset(tf)))
  for _ in range(STEPS):
    step(iterator)
  resolver = strategy.cluster_resolver
  directory = args.checkpoint_dir if resolver.task_id == 0 else os.path.join(
      args.checkpoint_dir, f"worker_{resolver.task_id}")
  path = checkpoint.write(os.path.join(directory, "ckpt"))
  arrays = {f"restored_{k}": v for k, v in restored.items()}
  arrays.update({f"slot_{k}": v for k, v in slot_values(model, optimizer).items()})
  arrays.update({f"weight_{i}": v.numpy() for i, v in enumerate(model.trainable_variables)})
  arrays["state_bytes"] = np.array(optimizer.state_bytes_per_replica())
  arrays["iterations"] = np.array(int(optimizer.iterations.numpy()))
  with open(args.output, "wb") as f:
    np.savez(f, **arrays)
  print(f"sharded_state_program: wrote {args.output} and {path}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
