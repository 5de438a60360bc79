"""Reading what a trainer wrote: TensorBoard scalars and the latest checkpoint's weights."""

import glob
import os

import tensorflow as tf


def scalars(event_dir, tag):
  """Sorted (step, value) pairs of one scalar in the event files of `event_dir`."""
  values = []
  for path in sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == tag:
          values.append((event.step, float(tf.make_ndarray(value.tensor))))
  return sorted(values)


def final_weights(model_dir):
  """The model's variables in the latest checkpoint under model_dir/checkpoints, by key."""
  reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
  names = sorted(n for n in reader.get_variable_to_shape_map() if n.startswith("model/"))
  assert names
  return {n: reader.get_tensor(n) for n in names}
