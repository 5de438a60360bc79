"""The outer training loop shared by the trainers: checkpoints, TensorBoard, evaluation,
progress lines, resume and what happens when something goes wrong. The compiled step only
computes; everything with side effects on disk or screen happens here, between calls.

Failure behaviour (docs/failures.md lists it for users):
* SIGTERM (preemption) or SIGINT: the call in flight finishes, a checkpoint is written, the
  stop is logged and `Interrupted` is raised; the trainers exit with `INTERRUPTED_EXIT_CODE`.
  Under several workers, every worker stops after the same call (`Workers.any_of`).
* Non-finite gradients (the step runs with `skip_nonfinite`, so a bad update is never
  applied, and reports it in its outputs, see `_NonFiniteWatch`): "stop" raises
  `NonFiniteError` naming the step and the variables; "skip" goes on, counts the skipped
  steps in the metrics and TensorBoard, and stops after `max_consecutive_nonfinite` bad steps
  in a row. A step that does not report them stops at the first non-finite metric.
* A checkpoint written by another model or optimizer configuration is refused before
  anything is restored (`checkpoint_signature`).
* Any other error: logged with the step and the last complete checkpoint, which stays
  readable (checkpoints are written to new files and published by an atomic rename of the
  `checkpoint` index file).
* Bad data: the input pipelines stop with a `tf.debugging.Assert` whose items are a header
  starting "<Source> data: " and "<file>:<record>: <problem>" (`data_problem`). The log line
  quotes them rather than TensorFlow's first line ("Graph execution error:"), and
  `exit_status_of` ends the program with them as its last line, without a traceback.
"""

import dataclasses
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from trainers.common import checkpoint_signature

# Exit status of a trainer stopped by SIGTERM/SIGINT after writing its checkpoint: EX_TEMPFAIL
# of sysexits.h, "try again later", which is what a preempted job should do.
INTERRUPTED_EXIT_CODE = 75

# A failed tf.debugging.Assert prints its items as "assertion failed: [item] [item] ...".
_ASSERTION = "assertion failed: "
# The first item of the input pipelines' bad-data assertions: "ImageNet data: ...", "Criteo
# data: ...".
_DATA_HEADER = re.compile(r"[A-Z][A-Za-z]* data: ")


class Interrupted(Exception):
  """Training stopped on a signal after writing a checkpoint; rerun to resume."""


class NonFiniteError(FloatingPointError):
  """Gradients were not finite (see the message for the step and the variables)."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Validated by the trainer's config; see the trainers' flags for the meaning."""

  model_dir: str
  train_steps: int
  steps_per_loop: int
  eval_every: int  # 0: evaluate only at the end
  log_every: int
  keep_checkpoints: int
  global_batch_size: int
  on_nonfinite: str = "stop"  # config.NONFINITE_POLICIES
  max_consecutive_nonfinite: int = 10


def loop_config(config, total_steps):
  """The loop's settings from a trainer config's shared run fields (see `common.config`)."""
  return LoopConfig(
      model_dir=config.model_dir, train_steps=total_steps, steps_per_loop=config.steps_per_loop,
      eval_every=config.eval_every, log_every=config.log_every or total_steps,
      keep_checkpoints=config.keep_checkpoints, global_batch_size=config.global_batch_size,
      on_nonfinite=config.on_nonfinite, max_consecutive_nonfinite=config.max_consecutive_nonfinite)


@dataclasses.dataclass(frozen=True)
class Workers:
  """This process among the processes that run the steps together (default: the only one)."""

  index: int = 0  # 0 owns model_dir: writes the shared checkpoints and TensorBoard
  count: int = 1
  # Maps this worker's "a stop signal arrived" to whether any worker got one; every worker
  # calls it after the same step, so that all stop together.
  any_of: Callable[[bool], bool] = bool

  @property
  def chief(self):
    return self.index == 0


class _Checkpoints:
  """A run's checkpoints: what every worker holds alike, and what is each worker's own.

  The shared state is saved by every worker (the save is collective) but kept only in the
  chief's files; the others write theirs to a private temporary directory (deleted at the
  end of the run), and all restore from the chief's. Each worker's own state (its input
  position) goes into the shared checkpoint when there is one worker, and into
  checkpoints/worker-<index>/ when there are several, written before the shared checkpoint
  of the same step, which is what a resumed run looks for.
  """

  def __init__(self, config, workers, shared, own):
    self.steps_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_done")
    self._directory = os.path.join(config.model_dir, "checkpoints")
    self._workers = workers
    if workers.count > 1:
      shared, own = dict(shared), dict(own)
    else:
      shared, own = {**shared, **own}, {}
    self._checkpoint = tf.train.Checkpoint(**shared, steps_done=self.steps_done)
    self._scratch = None if workers.chief else tempfile.mkdtemp(prefix="adam_xla-worker-")
    self._manager = tf.train.CheckpointManager(
        self._checkpoint, self._scratch or self._directory,
        max_to_keep=config.keep_checkpoints if workers.chief else 1)
    self._restored = None  # the shared checkpoint `restore` found
    self._own = None
    if own:
      self._own = tf.train.CheckpointManager(
          tf.train.Checkpoint(**own), os.path.join(self._directory, f"worker-{workers.index}"),
          max_to_keep=config.keep_checkpoints)

  @property
  def latest(self):
    """The last complete shared checkpoint, the one a resumed run restores, or None.

    On every worker this is a path in model_dir's checkpoints/: a non-chief's own copy of the
    same step is in its temporary directory, which is gone after the run, so messages that
    tell the user where to resume from must not name it.
    """
    saved = self._manager.latest_checkpoint
    if saved is None:
      return self._restored
    if self._scratch:
      return os.path.join(self._directory, os.path.basename(saved))
    return saved

  def restore(self, signature):
    """Restores the latest checkpoint of model_dir, if any; returns the steps done."""
    latest = tf.train.latest_checkpoint(self._directory)
    self._restored = latest
    if not latest:
      if signature is not None and self._workers.chief:
        checkpoint_signature.write(self._directory, signature)
      return 0
    if signature is not None:
      checkpoint_signature.check(self._directory, signature)
    self._checkpoint.restore(latest).assert_existing_objects_matched()
    step = int(self.steps_done.numpy())
    if self._own is not None:
      self._restore_own(step)
    logging.info("resuming from %s at step %d", latest, step)
    return step

  def _restore_own(self, step):
    path = os.path.join(self._own.directory, f"ckpt-{step}")
    if not tf.io.gfile.exists(f"{path}.index"):
      logging.warning(
          "no state of worker %d saved at step %d (%s is missing: was the run "
          "started with another number of workers?); its input starts from the "
          "beginning", self._workers.index, step, path)
      return
    self._own.checkpoint.restore(path).assert_existing_objects_matched()

  def save(self, step):
    if self._own is not None:
      self._own.save(checkpoint_number=step)
    self._manager.save(checkpoint_number=step)

  def close(self):
    """Deletes a non-chief worker's private copy of the shared checkpoints."""
    if self._scratch:
      shutil.rmtree(self._scratch, ignore_errors=True)


class Progress:
  """Progress lines with examples/sec and ETA, measured over the steps since the last line."""

  def __init__(self, total_steps, global_batch_size, start_step):
    self._total, self._batch = total_steps, global_batch_size
    self._last_step, self._last_time = start_step, time.perf_counter()

  def line(self, step, metrics, learning_rate):
    now = time.perf_counter()
    steps = step - self._last_step
    rate = steps * self._batch / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    remaining = (self._total - step) * self._batch / rate if rate else float("inf")
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    text = (f"step {step}/{self._total} ({100.0 * step / self._total:.0f}%)  {shown}  "
            f"lr {learning_rate:.3g}  {rate:.1f} examples/s  ETA {_duration(remaining)}")
    return text, rate


def _duration(seconds):
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _write_scalars(writer, step, scalars):
  with writer.as_default(step=step):
    for name, value in scalars.items():
      if math.isfinite(value):
        tf.summary.scalar(name, value)
  writer.flush()


class _StopSignals:
  """Records SIGTERM/SIGINT instead of dying, so the loop can checkpoint first.

  A second signal of the same kind restores the default action, so a user pressing Ctrl-C
  twice still stops at once. Handlers can only be installed from the main thread; elsewhere
  signals keep their default action.
  """

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for number in (signal.SIGTERM, signal.SIGINT):
        self._previous[number] = signal.signal(number, self._handle)
    return self

  def _handle(self, number, frame):
    del frame
    if self.received == number:
      signal.signal(number, signal.SIG_DFL)
      signal.raise_signal(number)
    self.received = number
    logging.warning("received %s: finishing the steps in flight, then writing a checkpoint",
                    signal.Signals(number).name)

  def __exit__(self, *unused):
    for number, handler in self._previous.items():
      signal.signal(number, handler)


def _check_writable(model_dir):
  """Fails early, naming --model_dir, if checkpoints and logs cannot be written there."""
  probe = os.path.join(model_dir, f".writable-{os.getpid()}")
  try:
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as error:
    raise OSError(f"--model_dir={model_dir!r} is not writable: {error}") from None


# Outputs of a step made with skip_nonfinite=True that are not metrics: popped before the
# metrics are logged (see `_NonFiniteWatch`).
_IN_A_ROW, _BAD_VARIABLES = "consecutive_nonfinite", "nonfinite_variables"


class _NonFiniteWatch:
  """Applies the on_nonfinite policy to what the step reports about non-finite gradients.

  A step made with skip_nonfinite=True returns "nonfinite_steps" (bad steps in the call, a
  metric), "consecutive_nonfinite" (bad steps in a row up to the call's last step) and
  "nonfinite_variables" (names of the variables whose gradients were bad). A step without
  "nonfinite_steps" applies whatever it computed, so any non-finite metric stops the run.
  """

  def __init__(self, config):
    self._config = config

  def metrics(self, outputs):
    """The step's outputs as float metrics, and (in a row, variable names) or None."""
    outputs = dict(outputs)
    report = None
    if "nonfinite_steps" in outputs:
      names = [tf.compat.as_str(n) for n in np.asarray(outputs.pop(_BAD_VARIABLES))]
      report = int(outputs.pop(_IN_A_ROW)), names
    return {k: float(v) for k, v in outputs.items()}, report

  def check(self, step, metrics, report, last_checkpoint):
    if report is None:
      if not all(math.isfinite(v) for v in metrics.values()):
        raise NonFiniteError(f"non-finite training metrics at step {step}: {metrics}; the "
                             f"last good checkpoint is {last_checkpoint}.")
      return
    bad = metrics["nonfinite_steps"]
    if not bad:
      return
    in_a_row, names = report
    where = (f"{bad:.0f} step(s) up to step {step} had non-finite gradients of {names}; their "
             f"updates were not applied. The last good checkpoint is {last_checkpoint}.")
    if self._config.on_nonfinite == "stop":
      raise NonFiniteError(f"{where} Stopping (--on_nonfinite=stop); lower the learning rate "
                           "or clip gradients, or use --on_nonfinite=skip to step over them.")
    logging.warning("%s Skipped (--on_nonfinite=skip); %d in a row.", where, in_a_row)
    if in_a_row >= self._config.max_consecutive_nonfinite:
      raise NonFiniteError(f"{in_a_row} steps in a row had non-finite gradients (limit "
                           f"--max_consecutive_nonfinite={self._config.max_consecutive_nonfinite}"
                           f"); stopping at step {step}. {where}")


def run(config: LoopConfig, *, train_step: Callable[[], Dict[str, tf.Tensor]],
        evaluate: Callable[[], Dict[str, float]], checkpointed: Mapping[str, Any],
        per_worker: Mapping[str, Any] = None, learning_rate: Callable[[int], float],
        signature: Optional[dict] = None, workers: Workers = Workers()):
  """Trains to `config.train_steps`, resuming from the last checkpoint in model_dir.

  Args:
    config: the loop's settings.
    train_step: runs `steps_per_loop` steps and returns their outputs: metrics, and with
      skip_nonfinite the non-finite report `_NonFiniteWatch` reads (the on_nonfinite policy
      needs it; without it any non-finite metric stops the run).
    evaluate: returns evaluation metrics (floats).
    checkpointed: what all workers hold alike (model, optimizer, train step), by checkpoint
      key; the loop saves them with its step count, "steps_done".
    per_worker: what is each worker's own (its input position), by checkpoint key; see
      `_Checkpoints` for where it is saved.
    learning_rate: the rate at a step, for the progress lines and TensorBoard.
    signature: `checkpoint_signature.describe(...)` of this run; a checkpoint written with
      another one is refused before anything is restored.
    workers: this process among the workers. Only the chief writes TensorBoard events and
      keeps the shared checkpoints (see `_Checkpoints`).

  Returns:
    The last evaluation's metrics.

  Raises:
    Interrupted: on SIGTERM/SIGINT, after writing a checkpoint.
    NonFiniteError: per the on_nonfinite policy.
  """
  if workers.chief:
    _check_writable(config.model_dir)
  checkpoints = _Checkpoints(config, workers, checkpointed, per_worker or {})
  try:
    return _restore_and_train(config, checkpoints, signature, train_step, evaluate, learning_rate,
                              workers)
  finally:
    checkpoints.close()


def _restore_and_train(config, checkpoints, signature, train_step, evaluate, learning_rate,
                       workers):
  step = checkpoints.restore(signature)
  if step >= config.train_steps:
    logging.info("already trained %d of %d steps; evaluating only", step, config.train_steps)
    return evaluate()
  try:
    with _StopSignals() as signals:
      return _train(config, step, checkpoints, signals, train_step, evaluate, learning_rate,
                    _NonFiniteWatch(config), workers)
  except (Interrupted, NonFiniteError):
    raise
  except BaseException as error:
    logging.error(
        "training stopped at step %d by %s: %s. The last complete checkpoint is %s; "
        "rerun the same command to resume from it.", int(checkpoints.steps_done.numpy()),
        type(error).__name__, error_summary(error), checkpoints.latest or
        "none (nothing to resume)")
    raise


def _train(config, step, checkpoints, signals, train_step, evaluate, learning_rate, nonfinite,
           workers):
  if workers.chief:
    train_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "eval"))
  else:
    train_writer = eval_writer = tf.summary.create_noop_writer()
  progress = Progress(config.train_steps, config.global_batch_size, step)
  logging.info("compiling the first step ...")
  eval_metrics, saved_step = {}, step
  while step < config.train_steps:
    metrics, report = nonfinite.metrics(train_step())
    step = int(checkpoints.steps_done.assign_add(config.steps_per_loop).numpy())
    nonfinite.check(step, metrics, report, checkpoints.latest)
    last = step >= config.train_steps
    if step % config.log_every == 0 or last:
      rate_now = learning_rate(step)
      text, examples_per_sec = progress.line(step, metrics, rate_now)
      logging.info("%s", text)
      _write_scalars(train_writer, step,
                     {**metrics, "learning_rate": rate_now, "examples_per_sec": examples_per_sec})
    if (config.eval_every and step % config.eval_every == 0) or last:
      eval_metrics = evaluate()
      logging.info("eval at step %d: %s", step,
                   "  ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
      _write_scalars(eval_writer, step, eval_metrics)
      checkpoints.save(step)
      saved_step = step
    if workers.any_of(signals.received is not None):
      if saved_step != step:
        checkpoints.save(step)
      name = signal.Signals(signals.received).name if signals.received else "another worker"
      # The shared checkpoint is saved collectively but written by the chief alone.
      writer = "" if workers.chief else " by the chief"
      logging.warning(
          "stopped by %s at step %d of %d; checkpoint %s written%s. Rerun the same "
          "command to resume.", name, step, config.train_steps, checkpoints.latest, writer)
      raise Interrupted(f"stopped by {name} at step {step}; resume from {checkpoints.latest}")
  return eval_metrics


def _assertion_items(error):
  """The items of the failed tf.debugging.Assert that `error` reports, or None."""
  text = error.message if isinstance(error, tf.errors.OpError) else str(error)
  for line in text.splitlines():
    if _ASSERTION in line:
      items = line.split(_ASSERTION, 1)[1].strip()
      if items.startswith("[") and items.endswith("]"):
        return items[1:-1].split("] [")
  return None


def _joined(items):
  """"a: b: c" from the items, whether or not an item ends with a colon already."""
  return " ".join([item.rstrip(":") + ":" for item in items[:-1]] + items[-1:])


def error_summary(error):
  """One line about `error`: a failed assertion's items (where the problem is named; the
  error's first line may only say "Graph execution error:"), else the first line."""
  items = _assertion_items(error)
  if items:
    return _joined(items)
  text = str(error)
  return text.splitlines()[0] if text else ""


def data_problem(error):
  """"<Source> data: <what>: <file>:<record>: <problem>" if `error` is an input pipeline's
  bad-data assertion, else None."""
  if not isinstance(error, tf.errors.OpError):
    return None
  items = _assertion_items(error)
  if not items or not _DATA_HEADER.match(items[0]):
    return None
  return _joined(items)


def exit_status_of(train_fn):
  """Calls train_fn() for a program's main: its result, or a logged exit with a status.

  Interrupted -> INTERRUPTED_EXIT_CODE (a checkpoint was written; rerun to resume);
  NonFiniteError -> 1 with its message and no traceback (the message says it all); bad data
  (`data_problem`) -> 1 with the file, record and problem as the last line, no traceback.
  """
  try:
    return train_fn()
  except Interrupted as stop:
    logging.warning("%s", stop)
    raise SystemExit(INTERRUPTED_EXIT_CODE) from None
  except NonFiniteError as error:
    logging.error("%s", error)
    raise SystemExit(1) from None
  except tf.errors.OpError as error:
    problem = data_problem(error)
    if problem is None:
      raise
    logging.error("stopped by bad data: %s", problem)
    raise SystemExit(1) from None
