"""Writing a generated data set once: a manifest that marks it complete, and atomic placement.

Shared by the trainers' built-in data sets (images, click logs). Each set lives in a directory
named by its parameters; its `manifest.json` records those parameters and its files, and is
written last.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

MANIFEST = "manifest.json"


def read_manifest(path):
  """The manifest in `path`, or None if there is none (or it is unreadable)."""
  try:
    with tf.io.gfile.GFile(os.path.join(path, MANIFEST)) as f:
      return json.load(f)
  except (tf.errors.NotFoundError, ValueError):
    return None


def write_manifest(path, manifest):
  """Write it after every data file: its presence marks the set complete."""
  with tf.io.gfile.GFile(os.path.join(path, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2)


def is_complete(path, params, file_keys):
  """Whether `path` holds a set made with `params` whose files (listed under `file_keys` in
  the manifest) all exist."""
  manifest = read_manifest(path)
  if not manifest or manifest.get("params") != params:
    return False
  return all(
      tf.io.gfile.exists(os.path.join(path, name)) for key in file_keys for name in manifest[key])


def build_once(directory, path, params, file_keys, generate):
  """Runs generate(target_dir) unless `path` is already complete; returns whether it ran.

  `generate` writes the files and then the manifest (with `params` under "params") into the
  directory it is given. Locally that is a temporary directory next to `path`, renamed into
  place, so a crash or a concurrent writer never leaves a half-written set; on remote file
  systems (gs://), where directories cannot be renamed, it writes into `path` itself and the
  manifest, written last, marks completion.
  """
  if is_complete(path, params, file_keys):
    return False
  tf.io.gfile.makedirs(directory)
  if "://" in directory:
    tf.io.gfile.makedirs(path)
    for name in tf.io.gfile.listdir(path):  # leftovers of an interrupted remote write
      tf.io.gfile.remove(os.path.join(path, name))
    generate(path)
    return True
  staging = tempfile.mkdtemp(prefix=".generating-", dir=directory)
  try:
    generate(staging)
    if os.path.isdir(path):  # incomplete or stale: replace it
      shutil.rmtree(path)
    try:
      os.rename(staging, path)
    except OSError:
      if not is_complete(path, params, file_keys):  # not a concurrent writer that finished
        raise
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return True
