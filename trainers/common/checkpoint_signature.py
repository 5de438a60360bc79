"""What a run's checkpoints hold, written beside them, so another run's are refused by name.

TensorFlow's restore matches objects by their place in the object graph: a checkpoint of a
different model can restore some variables, fail on a shape, or leave others at their
initial values, and its error names graph paths, not layers. So the first checkpoint of a
run records every model variable's shape and dtype, in the model's order (as the object graph
matches them; Keras's automatic layer names can differ between runs of the same model, so
names are only shown), and the optimizer settings that decide its state's layout (amsgrad
adds a slot). A resumed run compares its own description with that record before restoring
anything and refuses a mismatch, listing the variables.
"""

import json
import os

import tensorflow as tf

FILENAME = "signature.json"


def describe(model, optimizer):
  """The signature of a run: {"variables": [[name, shape, dtype], ...], "optimizer": {...}}."""
  variables = [[getattr(v, "path", None) or v.name,
                list(v.shape),
                tf.as_dtype(v.dtype).name] for v in model.variables]
  return {
      "variables": variables, "optimizer": {
          "class": type(optimizer).__name__, "amsgrad": bool(getattr(optimizer, "amsgrad", False))
      }
  }


def write(checkpoint_dir, signature):
  """Writes the signature atomically (a temporary file renamed into place)."""
  tf.io.gfile.makedirs(checkpoint_dir)
  path = os.path.join(checkpoint_dir, FILENAME)
  temporary = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(temporary, "w") as f:
    json.dump(signature, f, indent=1, sort_keys=True)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def check(checkpoint_dir, signature):
  """Raises ValueError listing the differences if the checkpoints were written by another run.

  Checkpoints with no recorded signature are let through (TensorFlow's own restore checks
  still apply).
  """
  path = os.path.join(checkpoint_dir, FILENAME)
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    recorded = json.load(f)
  problems = _differences(recorded, signature)
  if problems:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    raise ValueError(
        f"the checkpoints in {checkpoint_dir} were written by a different model or optimizer "
        f"configuration; nothing was restored. Differences (checkpoint vs this run):\n  " +
        "\n  ".join(shown) + "\nUse the flags of the run that wrote them, or another "
        "--model_dir.")


def _differences(recorded, current):
  problems = []
  old, new = recorded.get("variables", []), current["variables"]
  for index, (was, now) in enumerate(zip(old, new)):
    if was[1:] != now[1:]:
      problems.append(f"variable {index} ({now[0]}): shape/dtype {was[1]} {was[2]} vs "
                      f"{now[1]} {now[2]}")
  if len(old) != len(new):
    problems.append(f"{len(old)} variables vs {len(new)}")
    problems += [f"only in the checkpoint: {name} {shape}" for name, shape, _ in old[len(new):]]
    problems += [f"only in this run: {name} {shape}" for name, shape, _ in new[len(old):]]
  for key, value in current["optimizer"].items():
    if recorded.get("optimizer", {}).get(key) != value:
      problems.append(f"optimizer {key}: {recorded.get('optimizer', {}).get(key)!r} vs "
                      f"{value!r}")
  return problems
