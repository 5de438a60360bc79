"""Tests of tools/step_profile.py: kernel events sorted into kinds of work."""

import pytest
import tensorflow as tf

from tests import pytest_main
from tools import step_profile

_HLO = """
HloModule step
ENTRY %main (a: f32[8,8,8,3], w: f32[3,3,3,4]) -> f32[3,3,3,4] {
  %transpose_copy_fusion.3 = f32[3,8,8,8]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused.1
  %convolution.7 = f32[3,3,3,4]{3,2,1,0} convolution(%t, %dy), window={size=8x8}, metadata={op_type="Conv2DBackpropFilter" op_name="gradient_tape/model/conv/Conv2DBackpropFilter"}
  %multiply_add_fusion = f32[3,3,3,4]{3,2,1,0} fusion(%w, %g), kind=kLoop, metadata={op_type="AssignSubVariableOp" op_name="Adam/update_variables/AssignSub"}
  ROOT %dot.2 = f32[8,4]{1,0} dot(%x, %y), metadata={op_type="MatMul" op_name="model/dense/MatMul"}
}
"""


def test_hlo_kernels_reads_names_and_metadata():
  kernels = step_profile.hlo_kernels(_HLO)
  assert kernels["convolution.7"] == ("Conv2DBackpropFilter",
                                      "gradient_tape/model/conv/Conv2DBackpropFilter")
  assert kernels["transpose_copy_fusion.3"] == ("", "")
  assert kernels["dot.2"][0] == "MatMul"


@pytest.mark.parametrize("op_type, op_name, category", [
    ("_MklNativeFusedConv2D", "model/conv/Conv2D", "conv forward"),
    ("Conv2DBackpropInput", "gradient_tape/conv", "conv input gradient"),
    ("_MklNativeConv2DBackpropFilterWithBias", "gradient_tape/conv", "conv filter gradient"),
    ("_MklMatMul", "model/dense/MatMul", "matmul"),
    ("BatchMatMulV2", "attention/einsum", "matmul"),
    ("Mul", "StatefulPartitionedCall/adam/Mul", "optimizer update"),
    ("ResourceApplyAdam", "train/apply", "optimizer update"),
    ("Relu", "model/relu", "other"),
])
def test_categorize(op_type, op_name, category):
  assert step_profile.categorize(op_type, op_name) == category


def test_classify_event():
  hlo = step_profile.hlo_kernels(_HLO)
  assert step_profile.classify_event("transpose_copy_fusion.3", hlo)[0] == "layout copies"
  assert step_profile.classify_event("convolution.7", hlo)[0] == "conv filter gradient"
  assert step_profile.classify_event("multiply_add_fusion", hlo)[0] == "optimizer update"
  assert step_profile.classify_event("model/conv/Conv2D:_MklNativeConv2D", {}) == (
      "conv forward", "TF _MklNativeConv2D")
  # Runtime events and ops that only wrap other kernels are not kernels.
  for name in ("ExecutorState::Process", "end: convolution.7", "a/b:StatefulPartitionedCall",
               "x:_XlaRun", "EagerLocalExecute: __inference_f_1", "loop"):
    assert step_profile.classify_event(name, hlo) is None, name


def test_profile_of_a_real_step_finds_its_convolution_gradients():
  """A conv step as TensorFlow ops: its time lands in the conv categories and sums up."""
  w = tf.Variable(tf.random.normal([3, 3, 8, 8]))
  x = tf.random.normal([16, 32, 32, 8])

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      y = tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME")) ** 2)
    w.assign_sub(1e-6 * tape.gradient(y, w))
    return y

  step()
  result = step_profile.profile(lambda: step().numpy(), calls=3)
  categories = result["categories"]
  assert set(categories) == set(step_profile.CATEGORIES)
  assert categories["conv forward"] > 0 and categories["conv filter gradient"] > 0
  assert sum(categories.values()) == pytest.approx(sum(ms for _, _, ms in result["kernels"]))
  assert 0 < sum(categories.values()) <= result["wall_ms"] * 2  # two threads at most
  assert result["kernels"] == sorted(result["kernels"], key=lambda k: -k[2])


if __name__ == "__main__":
  pytest_main.main(__file__)
