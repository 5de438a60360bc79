"""Tests of trainers/common/checkpoint_signature.py: a run's description round-trips, and every
kind of difference is listed by name."""

import json
import os

import keras
import pytest

import adam_xla
from tests import pytest_main
from trainers.common import checkpoint_signature


def _signature(widths, amsgrad=False):
  keras.backend.clear_session()
  model = keras.Sequential([keras.Input((2,))] + [keras.layers.Dense(w) for w in widths],
                           name="net")
  return checkpoint_signature.describe(model, adam_xla.Adam(amsgrad=amsgrad))


def test_describe_lists_variables_in_order_with_shapes_and_dtypes():
  signature = _signature([3])
  assert signature["variables"] == [["net/dense/kernel", [2, 3], "float32"],
                                    ["net/dense/bias", [3], "float32"]]
  assert signature["optimizer"] == {"class": "Adam", "amsgrad": False}


def test_a_matching_run_passes_and_the_file_is_json(tmp_path):
  checkpoint_signature.write(str(tmp_path), _signature([3, 1]))
  checkpoint_signature.check(str(tmp_path), _signature([3, 1]))
  with open(os.path.join(tmp_path, checkpoint_signature.FILENAME)) as f:
    assert json.load(f) == _signature([3, 1])
  assert os.listdir(tmp_path) == [checkpoint_signature.FILENAME]  # no temporary left


def test_checkpoints_without_a_signature_are_let_through(tmp_path):
  checkpoint_signature.check(str(tmp_path), _signature([3]))


@pytest.mark.parametrize("now,amsgrad,expected", [
    ([4, 1], False, [
        "variable 0 (net/dense/kernel): shape/dtype [2, 3] float32 vs [2, 4] "
        "float32", "variable 2 (net/dense_1/kernel): shape/dtype [3, 1] float32 "
        "vs [4, 1] float32"
    ]),
    ([3], False, [
        "4 variables vs 2", "only in the checkpoint: net/dense_1/kernel [3, 1]",
        "only in the checkpoint: net/dense_1/bias [1]"
    ]),
    ([3, 1, 5], False, ["only in this run: net/dense_2/kernel [1, 5]"]),
    ([3, 1], True, ["optimizer amsgrad: False vs True"]),
])
def test_differences_are_listed(tmp_path, now, amsgrad, expected):
  checkpoint_signature.write(str(tmp_path), _signature([3, 1]))
  with pytest.raises(ValueError, match="nothing was restored") as error:
    checkpoint_signature.check(str(tmp_path), _signature(now, amsgrad))
  for line in expected:
    assert line in str(error.value)


if __name__ == "__main__":
  pytest_main.main(__file__)
