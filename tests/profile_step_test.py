"""Tests of tools/profile_step.py: one variant profiled in a child process, and the report."""

import pytest

from tests import pytest_main
from tools import profile_step
from tools import step_profile


def _config(**overrides):
  values = dict(models=("mlp16m",), calls=1, warmup_calls=1, top=3, json_out=None)
  values.update(overrides)
  return profile_step.Config(**values)


def test_fused_step_of_the_mlp_is_matmuls_and_adam():
  """A real child process: the compiled step's kernels are found through XLA's HLO dump, and
  adam_xla's update kernels are told from the model's by the optimizer's name scope."""
  profile = profile_step.run_child(_config(), "mlp16m", "adam_xla step")
  assert "error" not in profile, profile.get("error")
  assert profile["params"] == 16_737_256 and profile["batch_size"] == 64
  categories = profile["categories"]
  assert categories["matmul"] > 0
  assert categories["optimizer update"] > 0
  assert categories["conv forward"] == categories["conv filter gradient"] == 0
  assert profile["wall_ms"] > 0
  assert any(label.startswith("XLA ") for label, _, _ in profile["kernels"])


def test_a_failing_child_is_reported_not_raised():
  profile = profile_step.run_child(_config(), "mlp16m", "no such variant")
  assert profile["model"] == "mlp16m" and "error" in profile


def test_format_profiles_lists_categories_and_top_kernels():
  good = {"model": "m", "variant": "v", "wall_ms": 10.0,
          "categories": {c: 1.0 for c in step_profile.CATEGORIES},
          "kernels": [("XLA dot.1 (MatMul)", "matmul", 5.0), ("TF Relu", "other", 1.0)]}
  bad = {"model": "m", "variant": "w", "error": "Traceback: boom"}
  text = profile_step.format_profiles([good, bad], top=1)
  assert "XLA dot.1 (MatMul)" in text and "TF Relu" not in text  # top=1
  assert "FAILED: Traceback: boom" in text
  assert f"{len(step_profile.CATEGORIES):.1f}" in text  # the "in kernels" sum


if __name__ == "__main__":
  pytest_main.main(__file__)
