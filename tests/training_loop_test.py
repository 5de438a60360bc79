"""Tests of the shared training loop (trainers/common/training_loop.py): non-finite policies,
stop signals, an unwritable model_dir, refused checkpoints and errors that keep the last
checkpoint."""

import logging
import os
import signal
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import adam_xla
from tests import pytest_main
from tests import trainer_outputs
from trainers.common import checkpoint_signature
from trainers.common import training_loop

BATCH = 8


def _model(width=6, seed=0):
  # A fresh Keras session restarts automatic layer names, as a new process of a resumed run
  # does: adam_xla's slots are checkpointed under their variables' names.
  keras.backend.clear_session()
  keras.utils.set_random_seed(seed)
  return keras.Sequential(
      [keras.Input((3,)),
       keras.layers.Dense(width, activation="tanh"),
       keras.layers.Dense(1)], name="mlp")


def _loss(labels, predictions):
  return tf.square(tf.reshape(predictions, [-1]) - labels)


def _data(nan_batches=()):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH * 40, 3)).astype(np.float32)
  y = x.sum(axis=1).astype(np.float32)
  for b in nan_batches:
    x[b * BATCH:(b + 1) * BATCH, 0] = np.nan
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True)


class _Run:
  """A model, an optimizer, a step and the loop's arguments for a small regression."""

  def __init__(self, model_dir, nan_batches=(), width=6, train_steps=20, on_nonfinite="stop",
               max_consecutive_nonfinite=3, amsgrad=False, before_each_call=None, data=None):
    self.model = _model(width)
    self.optimizer = adam_xla.Adam(0.05, amsgrad=amsgrad)
    self.step = adam_xla.make_train_step(self.model, _loss, self.optimizer, steps_per_loop=2,
                                         skip_nonfinite=True)
    self.iterator = iter(_data(nan_batches) if data is None else data)
    self.calls = 0
    self.before_each_call = before_each_call
    self.config = training_loop.LoopConfig(
        model_dir=str(model_dir), train_steps=train_steps, steps_per_loop=2, eval_every=4,
        log_every=2, keep_checkpoints=2, global_batch_size=BATCH, on_nonfinite=on_nonfinite,
        max_consecutive_nonfinite=max_consecutive_nonfinite)
    self.checkpointed = dict(model=self.model, optimizer=self.optimizer, train_step=self.step,
                             data=self.iterator)

  def train_step(self):
    self.calls += 1
    if self.before_each_call:
      self.before_each_call(self)
    return self.step(self.iterator)

  def __call__(self, per_worker=None, workers=training_loop.Workers()):
    return training_loop.run(
        self.config, train_step=self.train_step, evaluate=lambda:
        {"weight_sum": float(sum(tf.reduce_sum(v) for v in self.model.trainable_variables))},
        checkpointed=self.checkpointed, per_worker=per_worker, learning_rate=lambda s: 0.05,
        signature=checkpoint_signature.describe(self.model, self.optimizer), workers=workers)


def _latest_step(model_dir):
  path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  return int(path.rsplit("-", 1)[1]) if path else None


def test_stop_policy_names_step_and_variables_and_keeps_the_last_checkpoint(tmp_path):
  run = _Run(tmp_path, nan_batches=[9])  # batch 9 is the second step of the fifth call
  with pytest.raises(training_loop.NonFiniteError) as error:
    run()
  message = str(error.value)
  assert "1 step(s) up to step 10 had non-finite gradients of" in message
  names = [v.path for v in run.model.trainable_variables]  # as the step names them
  assert f"{names}" in message  # the NaN input reaches every gradient
  assert "--on_nonfinite=stop" in message and "ckpt-8" in message
  assert _latest_step(str(tmp_path)) == 8
  assert all(np.isfinite(v.numpy()).all() for v in run.model.trainable_variables)
  assert int(run.optimizer.iterations.numpy()) == 9  # the bad step was not applied


def _positions(first_value):
  """A worker's own state: an iterator over 1000 numbers from `first_value` on."""
  return iter(tf.data.Dataset.range(first_value, first_value + 1000))


@pytest.mark.parametrize("count", [1, 2])
def test_each_workers_own_state_is_saved_and_restored_at_the_same_step(tmp_path, count):
  """With one worker the own state is in the shared checkpoint, with several in
  checkpoints/worker-<index>; either way a resumed worker continues from its own."""
  workers = training_loop.Workers(index=0, count=count)
  positions = _positions(0)
  run = _Run(tmp_path, train_steps=8, before_each_call=lambda _: next(positions))
  run(per_worker={"position": positions}, workers=workers)
  shared = tf.train.load_checkpoint(str(tmp_path / "checkpoints")).get_variable_to_shape_map()
  own_dir = tmp_path / "checkpoints" / "worker-0"
  if count == 1:
    assert any(n.startswith("position/") for n in shared) and not own_dir.exists()
  else:
    assert not any(n.startswith("position/") for n in shared)
    assert sorted(p.name for p in own_dir.glob("ckpt-*.index")) == ["ckpt-4.index", "ckpt-8.index"]
  resumed = _positions(0)
  taken = []
  run = _Run(tmp_path, train_steps=12, before_each_call=lambda _: taken.append(int(next(resumed))))
  run(per_worker={"position": resumed}, workers=workers)
  assert taken == [4, 5]  # 4 calls took 0..3 before the checkpoint of step 8


def test_a_worker_without_its_own_state_starts_its_input_from_the_beginning(tmp_path, caplog):
  run = _Run(tmp_path, train_steps=4)
  run(per_worker={"position": _positions(0)}, workers=training_loop.Workers(index=0, count=2))
  resumed = _positions(100)
  taken = []
  run = _Run(tmp_path, train_steps=6, before_each_call=lambda _: taken.append(int(next(resumed))))
  with caplog.at_level(logging.WARNING):
    run(per_worker={"position": resumed}, workers=training_loop.Workers(index=1, count=2))
  assert taken == [100]
  assert "no state of worker 1 saved at step 4" in caplog.text
  assert "checkpoints/worker-1/ckpt-4 is missing" in caplog.text


def test_skip_policy_counts_and_goes_on(tmp_path):
  run = _Run(tmp_path, nan_batches=[3, 12], on_nonfinite="skip")
  metrics = run()
  assert np.isfinite(metrics["weight_sum"])
  assert int(run.optimizer.iterations.numpy()) == 18  # 20 steps, 2 skipped
  skipped = trainer_outputs.scalars(os.path.join(tmp_path, "train"), "nonfinite_steps")
  assert [s for s, v in skipped if v] == [4, 14]
  assert _latest_step(str(tmp_path)) == 20


def test_skip_policy_stops_after_too_many_in_a_row(tmp_path):
  run = _Run(tmp_path, nan_batches=range(6, 40), on_nonfinite="skip")
  with pytest.raises(
      training_loop.NonFiniteError,
      match=r"4 steps in a row .* \(limit --max_consecutive_nonfinite=3\); "
      "stopping at step 10"):
    run()  # batches 6..9 are steps 7..10: two calls of two bad steps
  assert _latest_step(str(tmp_path)) == 8


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_checkpoints_after_the_call_in_flight(tmp_path, signal_number):

  def send_on_third_call(run):
    if run.calls == 3:
      os.kill(os.getpid(), signal_number)

  previous = signal.getsignal(signal_number)
  run = _Run(tmp_path, before_each_call=send_on_third_call)
  with pytest.raises(training_loop.Interrupted, match="stopped by SIG.* at step 6"):
    run()
  assert signal.getsignal(signal_number) == previous  # the loop's handler is gone
  assert _latest_step(str(tmp_path)) == 6
  resumed = _Run(tmp_path)
  resumed()
  assert resumed.calls == 7 and _latest_step(str(tmp_path)) == 20


def test_a_stopped_worker_names_the_shared_checkpoint_not_its_temporary_copy(
    tmp_path, monkeypatch, caplog):
  """A non-chief saves its copy of the shared state to a temporary directory deleted at the
  end of the run; its stop message must point at the chief's checkpoint, the one a rerun
  resumes from."""
  scratch_root = tmp_path / "tmp"
  scratch_root.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))

  def send_on_third_call(run):
    if run.calls == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  model_dir = tmp_path / "model"
  run = _Run(model_dir, before_each_call=send_on_third_call)
  with caplog.at_level(logging.WARNING), pytest.raises(training_loop.Interrupted) as error:
    run(workers=training_loop.Workers(index=1, count=2))
  shared = f"{model_dir}/checkpoints/ckpt-6"
  assert str(error.value) == f"stopped by SIGTERM at step 6; resume from {shared}"
  assert f"checkpoint {shared} written by the chief." in caplog.text
  assert "adam_xla-worker-" not in caplog.text
  assert list(scratch_root.iterdir()) == []  # the temporary copy is gone


def test_unwritable_model_dir_is_named_before_any_work(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  run = _Run(blocker / "model")
  with pytest.raises(OSError, match=f"--model_dir='{blocker / 'model'}' is not writable"):
    run()
  assert run.calls == 0


@pytest.mark.parametrize("change,expected", [
    ({"width": 7}, "variable 0 (mlp/dense/kernel): shape/dtype [3, 6] float32 vs [3, 7] "
     "float32"),
    ({"amsgrad": True}, "optimizer amsgrad: False vs True"),
])
def test_checkpoint_of_another_configuration_is_refused_by_name(tmp_path, change, expected):
  _Run(tmp_path, train_steps=4)()
  other = _Run(tmp_path, train_steps=8, **change)
  before = [v.numpy() for v in other.model.trainable_variables]
  with pytest.raises(ValueError, match="written by a different model or optimizer") as error:
    other()
  assert expected in str(error.value)
  for variable, value in zip(other.model.trainable_variables, before):  # nothing restored
    np.testing.assert_array_equal(variable.numpy(), value)


def test_other_errors_are_logged_with_the_last_checkpoint(tmp_path, caplog):

  def fail_on_fourth_call(run):
    if run.calls == 4:
      raise tf.errors.NotFoundError(None, None, "/data/train-00003 vanished")

  run = _Run(tmp_path, before_each_call=fail_on_fourth_call)
  with caplog.at_level(logging.ERROR), pytest.raises(tf.errors.NotFoundError):
    run()
  logged = caplog.text
  assert "training stopped at step 6 by NotFoundError: /data/train-00003 vanished" in logged
  assert "ckpt-4" in logged
  assert _latest_step(str(tmp_path)) == 4
  tf.train.Checkpoint(model=_model()).read(  # the last checkpoint still loads
      tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints"))).expect_partial()


def _bad_data_at(bad_batch):
  """The regression data, failing at `bad_batch` as the input pipelines fail on bad data."""

  def check(position, batch):
    with tf.control_dependencies([
        tf.debugging.Assert(
            position != bad_batch,
            ["Demo data: bad record", "/data/train-00001:3: image/encoded "
             "is empty"])
    ]):
      return tf.nest.map_structure(tf.identity, batch)

  return _data().enumerate().map(check)


def test_bad_data_is_named_in_the_log_and_on_the_last_line(tmp_path, caplog):
  run = _Run(tmp_path, data=_bad_data_at(11))  # the second step of the sixth call
  with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stop:
    training_loop.exit_status_of(run)
  assert stop.value.code == 1
  problem = "Demo data: bad record: /data/train-00001:3: image/encoded is empty"
  assert (f"training stopped at step 10 by InvalidArgumentError: {problem}. The last "
          "complete checkpoint is") in caplog.text
  assert caplog.records[-1].getMessage() == f"stopped by bad data: {problem}"
  assert _latest_step(str(tmp_path)) == 8


def test_other_op_errors_keep_their_traceback(tmp_path):

  def fail(run):
    raise tf.errors.InternalError(None, None, "Graph execution error:\n\nsomething else")

  with pytest.raises(tf.errors.InternalError):
    training_loop.exit_status_of(_Run(tmp_path, before_each_call=fail))


@pytest.mark.parametrize("message, summary", [
    ("Graph execution error:\n\nDetected at node x\nassertion failed: [A data: bad] "
     "[f:1: no]\n\t [[{{node Assert/Assert}}]]", "A data: bad: f:1: no"),
    ("{{function_node f}} Error in map: assertion failed: [ImageNet data: label outside "
     "[0, num_classes=4):] [7]\n\t [[{{node Assert}}]]",
     "ImageNet data: label outside [0, num_classes=4): 7"),
    ("disk full\nmore", "disk full"),
])
def test_error_summary(message, summary):
  error = tf.errors.InvalidArgumentError(None, None, message)
  assert training_loop.error_summary(error) == summary
  assert training_loop.data_problem(error) == (summary if "data:" in summary else None)


# ---- The loop against the train step's outputs, with a stand-in step --------------------


class _FakeStep:
  """Returns the outputs a step with skip_nonfinite reports, bad on the calls in `bad_calls`."""

  def __init__(self, bad_calls=(), nonfinite_outputs=True, loss=1.0):
    self.bad_calls, self.nonfinite_outputs, self.loss = set(bad_calls), nonfinite_outputs, loss
    self.calls = self.in_a_row = 0

  def __call__(self):
    self.calls += 1
    bad = self.calls in self.bad_calls
    self.in_a_row = self.in_a_row + 2 if bad else 0  # both steps of a bad call were bad
    outputs = {"loss": tf.constant(self.loss)}
    if self.nonfinite_outputs:
      outputs.update(
          nonfinite_steps=tf.constant(2.0 if bad else 0.0),
          consecutive_nonfinite=tf.constant(self.in_a_row, tf.int64),
          nonfinite_variables=tf.constant(["mlp/dense/kernel", "mlp/dense/bias"] if bad else [],
                                          tf.string))
    return outputs


def _run_fake(model_dir, step, on_nonfinite="stop"):
  config = training_loop.LoopConfig(model_dir=str(model_dir), train_steps=20, steps_per_loop=2,
                                    eval_every=4, log_every=2, keep_checkpoints=2,
                                    global_batch_size=BATCH, on_nonfinite=on_nonfinite,
                                    max_consecutive_nonfinite=4)
  module = tf.Module()
  module.weight = tf.Variable(1.0)
  return training_loop.run(config, train_step=step, evaluate=lambda: {"top1": 0.5},
                           checkpointed={"model": module}, learning_rate=lambda s: 0.1)


def test_stop_policy_names_the_variables_the_step_reports(tmp_path):
  step = _FakeStep(bad_calls=[3])
  with pytest.raises(training_loop.NonFiniteError) as error:
    _run_fake(tmp_path, step)
  assert ("2 step(s) up to step 6 had non-finite gradients of ['mlp/dense/kernel', "
          "'mlp/dense/bias']; their updates were not applied. The last good checkpoint is "
          f"{tmp_path}/checkpoints/ckpt-4.") in str(error.value)


def test_skip_policy_reads_the_bad_steps_in_a_row_from_the_step(tmp_path):
  step = _FakeStep(bad_calls=[2, 5, 6])  # 2 in a row, then 2 and 4: the limit is 4
  with pytest.raises(training_loop.NonFiniteError, match=r"^4 steps in a row .* stopping at "
                     r"step 12\. 2 step\(s\) up to"):
    _run_fake(tmp_path, step, on_nonfinite="skip")
  logged = {
      tag for tag in ("loss", "nonfinite_steps", "consecutive_nonfinite", "nonfinite_variables")
      if trainer_outputs.scalars(os.path.join(tmp_path, "train"), tag)
  }
  assert logged == {"loss", "nonfinite_steps"}  # the report is not a metric


def test_a_step_without_the_report_stops_at_a_non_finite_metric(tmp_path):
  step = _FakeStep(nonfinite_outputs=False, loss=float("nan"))
  with pytest.raises(training_loop.NonFiniteError,
                     match="non-finite training metrics at step 2: {'loss': nan}"):
    _run_fake(tmp_path, step)


def test_checkpoints_hold_the_given_objects_and_the_step_count_under_their_keys(tmp_path):
  _run_fake(tmp_path, _FakeStep())
  keys = {name for name, _ in tf.train.list_variables(os.path.join(tmp_path, "checkpoints"))}
  assert {"model/weight/.ATTRIBUTES/VARIABLE_VALUE",
          "steps_done/.ATTRIBUTES/VARIABLE_VALUE"} <= keys
  assert _latest_step(str(tmp_path)) == 20


if __name__ == "__main__":
  pytest_main.main(__file__)
