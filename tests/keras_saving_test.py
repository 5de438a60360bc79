"""adam_xla.Adam in Keras' saving and training machinery: files, serialization, callbacks.

Checked, and against what:

* `.keras` files (`model.save`, `keras.models.load_model`): the loaded optimizer is an
  adam_xla.Adam with the original's config, iteration count and slots (exactly), and the two
  train on to the same weights; a learning rate assigned before saving is the loaded one, as
  with `keras.optimizers.Adam` (checked on it in the same test).
* `keras.optimizers.serialize` / `deserialize` / `get`, `get_config` / `from_config`, through
  JSON as in a `.keras` file: an adam_xla.Adam with the same config, for every kind of option;
  `model.compile` accepts the instance and its serialized form.
* `fit` callbacks: LearningRateScheduler (the rates it sets are the ones the steps use: the
  weights equal those of `keras.optimizers.Adam` under the same callback), ReduceLROnPlateau,
  TensorBoard's learning-rate scalar, ModelCheckpoint to `.weights.h5` and `.keras` (the
  optimizer state comes back exactly), EarlyStopping.
* BackupAndRestore: a fit interrupted and resumed ends in the state of an uninterrupted fit.
* `tf.train.Checkpoint`: the optimizer saves its own keys only (iterations and readable slot
  keys), and a checkpoint of a model trained by `fit` restores into an optimizer not yet built
  (TF's deferred restoration), by `build` or by the first step of `fit`.

The models are tiny Dense networks trained on fixed data without shuffling, so two runs that
do the same steps end in the same state. (fit under strategies: keras_fit_trajectory_test.py,
compile_model_test.py and multi_worker_test.py.)
"""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import adam_xla
from tests import pytest_main

_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(64, 3)).astype(np.float32)
_Y = (_X @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * _RNG.normal(size=(64, 1))).astype(np.float32)
_BATCH = 16
_STEPS_PER_EPOCH = len(_X) // _BATCH
# Keras casts Python betas through float32; with betas that float32 holds exactly, Keras' Adam
# and ours agree to rounding.
EXACT = {"beta_1": 0.875, "beta_2": 1 - 2.0**-10}
_SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True)


def _model(seed=0, kernel_initializer="glorot_uniform"):
  """The same network for the same seed; named layers, so its variables' paths (the slots'
  checkpoint keys) are the same in every model built here."""
  keras.utils.set_random_seed(seed)
  dense = lambda units, **kwargs: keras.layers.Dense(units, kernel_initializer=kernel_initializer,
                                                     **kwargs)
  return keras.Sequential(
      [keras.Input((3,)),
       dense(4, activation="tanh", name="hidden"),
       dense(1, name="out")], name="net")


def _compiled(optimizer, seed=0, **model_args):
  model = _model(seed, **model_args)
  model.compile(optimizer=optimizer, loss="mse")
  return model


def _fit(model, epochs, y=_Y, **kwargs):
  return model.fit(_X, y, batch_size=_BATCH, epochs=epochs, shuffle=False, verbose=0, **kwargs)


def _rate(optimizer):
  return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _state(model):
  """The weights, the optimizer's iteration count and every slot of every trainable variable
  (in `slot_names` order), as NumPy."""
  opt = model.optimizer
  return {
      "weights": model.get_weights(), "iterations": int(opt.iterations.numpy()),
      "slots": [(name, opt.slot(var, name).numpy()) for var in model.trainable_variables
                for name in opt.slot_names]
  }


def _assert_same_state(got, want, rtol=0.0):
  """Equal iteration counts; weights and slots equal (exactly by default)."""
  assert got["iterations"] == want["iterations"]
  assert len(got["weights"]) == len(want["weights"]) == 4
  for g, w in zip(got["weights"], want["weights"]):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=0)
  assert [name for name, _ in got["slots"]] == [name for name, _ in want["slots"]]
  for (name, g), (_, w) in zip(got["slots"], want["slots"]):
    assert np.any(w != 0), name  # a slot that training filled, not a fresh one
    np.testing.assert_allclose(g, w, rtol=rtol, atol=0, err_msg=name)


def _slot_names(amsgrad):
  return ["m", "v", "vhat"] if amsgrad else ["m", "v"]


# ---- 1. .keras files ------------------------------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_keras_file_restores_the_optimizer_and_training_goes_on_alike(tmp_path, amsgrad):
  model = _compiled(adam_xla.Adam(2.0**-5, amsgrad=amsgrad))
  _fit(model, 2)
  model.optimizer.learning_rate = 0.005  # lowered before saving (0.005 in float32)
  model.save(tmp_path / "m.keras")
  loaded = keras.models.load_model(tmp_path / "m.keras")
  opt = loaded.optimizer
  assert type(opt) is adam_xla.Adam and opt is not model.optimizer
  assert opt.get_config() == model.optimizer.get_config()
  assert opt.get_config()["amsgrad"] is amsgrad
  assert _rate(opt) == opt.get_config()["learning_rate"] == float(np.float32(0.005))
  assert list(opt.slot_names) == _slot_names(amsgrad)
  assert len(opt.variables) == 2 + 4 * len(_slot_names(amsgrad))
  original = _state(model)
  assert original["iterations"] == 2 * _STEPS_PER_EPOCH
  _assert_same_state(_state(loaded), original)
  _fit(model, 2)
  _fit(loaded, 2)
  trained = _state(model)
  assert trained["iterations"] == 4 * _STEPS_PER_EPOCH
  assert not np.array_equal(trained["weights"][0], original["weights"][0])
  _assert_same_state(_state(loaded), trained, rtol=1e-6)


def test_keras_file_keeps_an_assigned_learning_rate_as_keras_adam_does(tmp_path):
  rates = {}
  for name, make in (("keras", keras.optimizers.Adam), ("ours", adam_xla.Adam)):
    model = _compiled(make(0.01))
    model.optimizer.build(model.trainable_variables)
    model.optimizer.learning_rate = 0.005
    model.save(tmp_path / f"{name}.keras")
    rates[name] = _rate(keras.models.load_model(tmp_path / f"{name}.keras").optimizer)
  assert rates["ours"] == rates["keras"] == float(np.float32(0.005))


# ---- 2. Serialization -----------------------------------------------------------------------

_OPTIONS = {
    "float_rate": dict(learning_rate=0.02, beta_1=0.8, epsilon=1e-5),
    "schedule": dict(learning_rate=_SCHEDULE, beta_2=0.99),
    "lazy": dict(sparse_mode="lazy", amsgrad=True),
    "clipvalue_and_clipnorm": dict(clipvalue=0.5, clipnorm=2.0),
    "global_clipnorm": dict(global_clipnorm=1.5, name="clipped"),
    "weight_decay": dict(learning_rate=0.003, weight_decay=0.004, jit_compile=False),
}


def _as_config_entry(value):
  if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
    return keras.optimizers.schedules.serialize(value)
  return value


@pytest.mark.parametrize("options", _OPTIONS.values(), ids=_OPTIONS.keys())
def test_serialization_round_trips_give_an_equal_adam_xla_adam(options):
  opt = adam_xla.Adam(**options)
  config = opt.get_config()
  for key, value in options.items():  # what was given is in the config
    assert config[key] == _as_config_entry(value), key
  serialized = keras.optimizers.serialize(opt)
  assert serialized["registered_name"] == "adam_xla>Adam"
  from_json = json.loads(json.dumps(serialized))  # as a .keras file stores it
  clones = {
      "deserialize": keras.optimizers.deserialize(from_json),
      "get": keras.optimizers.get(from_json), "from_config": adam_xla.Adam.from_config(config),
      "from_json_config": adam_xla.Adam.from_config(json.loads(json.dumps(config)))
  }
  for how, clone in clones.items():
    assert type(clone) is adam_xla.Adam, how
    assert clone is not opt and clone.get_config() == config, how
    assert _rate(clone) == _rate(opt), how  # a schedule is a schedule again, at step 0
  if options.get("learning_rate") is _SCHEDULE:  # the clone's schedule is the same function
    clone = clones["deserialize"]
    clone.iterations.assign(10)  # staircase: halved after 10 steps
    assert _rate(clone) == pytest.approx(0.05, rel=1e-7)


def test_compile_accepts_the_instance_and_its_serialized_form():
  opt = adam_xla.Adam(0.02, amsgrad=True)
  model = _model()
  model.compile(optimizer=opt, loss="mse")
  assert model.optimizer is opt
  other = _model()
  other.compile(optimizer=keras.optimizers.serialize(opt), loss="mse")
  assert type(other.optimizer) is adam_xla.Adam
  assert other.optimizer.get_config() == opt.get_config()


def test_registered_name_is_an_optimizer_identifier():
  opt = keras.optimizers.get("adam_xla>Adam")
  assert type(opt) is adam_xla.Adam
  assert opt.get_config() == adam_xla.Adam().get_config()
  model = _model()
  model.compile(optimizer="adam_xla>Adam", loss="mse")
  assert type(model.optimizer) is adam_xla.Adam


# ---- 3. Callbacks ---------------------------------------------------------------------------


def _rate_after_each_epoch(model, rates):
  return keras.callbacks.LambdaCallback(
      on_epoch_end=lambda epoch, logs: rates.append(_rate(model.optimizer)))


def test_learning_rate_scheduler_sets_the_rate_the_steps_use_as_with_keras_adam():
  schedule = lambda epoch, rate: 2.0**-4 / 2**epoch
  expected_rates = [2.0**-4, 2.0**-5, 2.0**-6]
  weights = {}
  for name, make in (("keras", keras.optimizers.Adam), ("ours", adam_xla.Adam)):
    model = _compiled(make(1.0, **EXACT))  # 1.0 is never used: the scheduler sets the rate
    rates = []
    history = _fit(
        model, 3, callbacks=[
            keras.callbacks.LearningRateScheduler(schedule),
            _rate_after_each_epoch(model, rates)
        ])
    assert rates == expected_rates, name
    assert history.history["learning_rate"] == expected_rates, name
    weights[name] = model.get_weights()
  for ours, theirs in zip(weights["ours"], weights["keras"]):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_reduce_lr_on_plateau_halves_the_rate_while_the_loss_stays_flat():
  """Zero weights and zero targets: the loss is 0 and every gradient is 0, so the loss does
  not improve after the first epoch and each later epoch halves the rate (patience 1)."""
  model = _compiled(adam_xla.Adam(2.0**-3), kernel_initializer="zeros")
  rates = []
  history = _fit(
      model, 4, y=np.zeros_like(_Y), callbacks=[
          keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=1),
          _rate_after_each_epoch(model, rates)
      ])
  assert history.history["loss"] == [0.0] * 4
  assert rates == [2.0**-3, 2.0**-4, 2.0**-5, 2.0**-6]
  assert history.history["learning_rate"] == [2.0**-3, 2.0**-3, 2.0**-4, 2.0**-5]  # before
  assert int(model.optimizer.iterations.numpy()) == 4 * _STEPS_PER_EPOCH


def _scalars(event_dir):
  """{tag: [(step, value)]} of the scalar summaries in the event files of `event_dir`."""
  scalars = {}
  for path in sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.HasField("simple_value"):  # TF1-style scalar
          number = value.simple_value
        elif value.metadata.plugin_data.plugin_name == "scalars":  # tf.summary.scalar
          number = float(tf.make_ndarray(value.tensor))
        else:  # text (the model's config), histograms, ...
          continue
        scalars.setdefault(value.tag, []).append((event.step, number))
  return scalars


def test_tensorboard_writes_the_learning_rate_of_each_epoch(tmp_path):
  model = _compiled(adam_xla.Adam(1.0))
  _fit(
      model, 2, callbacks=[
          keras.callbacks.LearningRateScheduler(lambda epoch, _: 2.0**-epoch),
          keras.callbacks.TensorBoard(str(tmp_path / "logs"))
      ])
  scalars = _scalars(str(tmp_path / "logs" / "train"))
  rate_tags = [tag for tag in scalars if "learning_rate" in tag]
  assert rate_tags == ["epoch_learning_rate"], sorted(scalars)
  assert scalars["epoch_learning_rate"] == [(0, 1.0), (1, 0.5)]
  assert len(scalars["epoch_loss"]) == 2


def test_model_checkpoint_weights_file_restores_slots_and_iterations(tmp_path):
  path = str(tmp_path / "ckpt.weights.h5")
  model = _compiled(adam_xla.Adam(2.0**-5, amsgrad=True))
  _fit(model, 2, callbacks=[keras.callbacks.ModelCheckpoint(path, save_weights_only=True)])
  # As with keras.optimizers.Adam, an optimizer not yet built has nothing to load into.
  unbuilt = _compiled(adam_xla.Adam(0.5, amsgrad=True), seed=1)
  with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
    unbuilt.load_weights(path)
  assert not unbuilt.optimizer.variables
  fresh = _compiled(adam_xla.Adam(0.5, amsgrad=True), seed=1)
  fresh.optimizer.build(fresh.trainable_variables)
  assert not np.array_equal(fresh.get_weights()[0], model.get_weights()[0])
  fresh.load_weights(path)
  want = _state(model)
  assert want["iterations"] == 2 * _STEPS_PER_EPOCH
  _assert_same_state(_state(fresh), want)
  assert _rate(fresh.optimizer) == 2.0**-5  # the rate is saved by position, as Keras does


def test_model_checkpoint_keras_file_restores_the_optimizer(tmp_path):
  path = str(tmp_path / "ckpt.keras")
  model = _compiled(adam_xla.Adam(2.0**-5))
  _fit(model, 2, callbacks=[keras.callbacks.ModelCheckpoint(path)])
  loaded = keras.models.load_model(path)
  assert type(loaded.optimizer) is adam_xla.Adam
  assert loaded.optimizer.get_config() == model.optimizer.get_config()
  want = _state(model)
  assert want["iterations"] == 2 * _STEPS_PER_EPOCH
  _assert_same_state(_state(loaded), want)


def test_early_stopping_stops_when_the_validation_loss_worsens():
  """The validation targets are the training targets negated: fitting one worsens the other."""
  model = _compiled(adam_xla.Adam(2.0**-3))
  history = _fit(model, 20, validation_data=(_X, -_Y),
                 callbacks=[keras.callbacks.EarlyStopping("val_loss", patience=1)])
  val_loss = history.history["val_loss"]
  assert len(val_loss) == 2 and val_loss[1] > val_loss[0]
  assert history.history["loss"][1] < history.history["loss"][0]
  assert int(model.optimizer.iterations.numpy()) == 2 * _STEPS_PER_EPOCH


# ---- 4. BackupAndRestore --------------------------------------------------------------------


class _Interrupted(Exception):
  pass


def test_backup_and_restore_resumes_an_interrupted_fit_to_the_same_state(tmp_path):
  epochs, interrupted_after = 4, 2
  # beta_2 = 0.5: v follows the shrinking gradients down, so vhat (their maximum) differs from
  # v and a resumed run that lost vhat would not end the same.
  make = lambda: _compiled(adam_xla.Adam(2.0**-5, beta_2=0.5, amsgrad=True))
  uninterrupted = make()
  _fit(uninterrupted, epochs)
  backup_dir = str(tmp_path / "backup")

  def interrupt(epoch, logs):
    del logs
    if epoch + 1 == interrupted_after:
      raise _Interrupted(f"at the end of epoch {epoch}")

  first = make()
  with pytest.raises(_Interrupted):
    _fit(
        first, epochs, callbacks=[
            keras.callbacks.BackupAndRestore(backup_dir),
            keras.callbacks.LambdaCallback(on_epoch_end=interrupt)
        ])
  assert int(first.optimizer.iterations.numpy()) == interrupted_after * _STEPS_PER_EPOCH
  resumed = make()
  history = _fit(resumed, epochs, callbacks=[keras.callbacks.BackupAndRestore(backup_dir)])
  assert history.epoch == list(range(interrupted_after, epochs))  # only the epochs left ran
  want = _state(uninterrupted)
  assert want["iterations"] == epochs * _STEPS_PER_EPOCH
  slots = dict(want["slots"][:3])  # the first variable's m, v, vhat
  assert np.any(slots["vhat"] > slots["v"])
  _assert_same_state(_state(resumed), want, rtol=1e-6)


# ---- 5. tf.train.Checkpoint -----------------------------------------------------------------


def _expected_optimizer_keys(variable_paths, slot_names):
  keys = ["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]
  keys += [
      f"optimizer/_slots/{path.replace('/', '.S')}.S{slot}/.ATTRIBUTES/VARIABLE_VALUE"
      for path in variable_paths for slot in slot_names
  ]
  return sorted(keys)


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_checkpoint_holds_the_iterations_and_slots_only(tmp_path, amsgrad):
  layer = keras.layers.Dense(2, name="proj")
  layer.build((None, 3))
  opt = adam_xla.Adam(0.01, amsgrad=amsgrad)
  opt.apply_gradients(zip([tf.fill((3, 2), 2.0), tf.fill((2,), 2.0)], layer.trainable_variables))
  path = tf.train.Checkpoint(optimizer=opt).save(str(tmp_path / "ckpt"))
  names = sorted(name for name, _ in tf.train.list_variables(path))
  assert names == sorted(
      ["_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"] +
      _expected_optimizer_keys(["proj/kernel", "proj/bias"], _slot_names(amsgrad)))
  assert tf.train.load_variable(path, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 1
  m = tf.train.load_variable(path, "optimizer/_slots/proj.Skernel.Sm/.ATTRIBUTES/VARIABLE_VALUE")
  np.testing.assert_allclose(m, np.full((3, 2), 0.2), rtol=1e-6)  # (1 - beta_1) * 2


def test_checkpoint_of_a_fit_model_restores_into_an_optimizer_not_yet_built(tmp_path):
  model = _compiled(adam_xla.Adam(2.0**-5))
  _fit(model, 2)
  path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
  optimizer_keys = sorted(
      name for name, _ in tf.train.list_variables(path) if name.startswith("optimizer/"))
  assert optimizer_keys == _expected_optimizer_keys([v.path for v in model.trainable_variables],
                                                    ["m", "v"])
  want = _state(model)

  # Restored before the optimizer is built; `build` creates the slots with their values.
  built = _compiled(adam_xla.Adam(2.0**-5), seed=1)
  status = tf.train.Checkpoint(model=built, optimizer=built.optimizer).restore(path)
  assert not built.optimizer.variables
  built.optimizer.build(built.trainable_variables)
  status.assert_consumed()
  _assert_same_state(_state(built), want)

  # Restored before the optimizer is built; fit's first step builds it: the run goes on as
  # the original's does.
  fitted = _compiled(adam_xla.Adam(2.0**-5), seed=2)
  status = tf.train.Checkpoint(model=fitted, optimizer=fitted.optimizer).restore(path)
  assert not fitted.optimizer.variables
  _fit(fitted, 1)
  status.assert_consumed()
  _fit(model, 1)
  _assert_same_state(_state(fitted), _state(model), rtol=1e-6)
  assert int(fitted.optimizer.iterations.numpy()) == 3 * _STEPS_PER_EPOCH


if __name__ == "__main__":
  pytest_main.main(__file__)
