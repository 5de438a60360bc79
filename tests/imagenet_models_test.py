"""Tests for trainers/image_classification/models.py.

The reference parameter counts are torchvision's (resnet50: 25,557,032; resnet18:
11,689,512), which count trainable parameters only; Keras' count_params also counts batch
norm's moving mean and variance, two per channel of every batch norm layer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.image_classification import models

RESNET50_PARAMS = 25_557_032
RESNET18_PARAMS = 11_689_512


def trainable_count(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def moving_stat_count(model):
  """2 per channel of each batch norm layer (its moving mean and variance)."""
  return sum(2 * layer.gamma.shape[0] for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization))


def resnet_small_params(num_classes):
  """resnet_small's trainable parameters, written out layer by layer."""

  def conv(c_in, c_out, k):
    return k * k * c_in * c_out

  def bn(c):
    return 2 * c

  def basic(c_in, c_out):
    proj = conv(c_in, c_out, 1) + bn(c_out) if c_in != c_out else 0
    return conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out) + proj

  stem = conv(3, 16, 3) + bn(16)
  return (stem + basic(16, 16) + basic(16, 32) + basic(32, 64) + 64 * num_classes + num_classes)


@pytest.fixture(scope="module")
def resnet50():
  return models.build_model("resnet50", num_classes=1000, image_size=224)


def test_resnet50_parameter_count(resnet50):
  assert trainable_count(resnet50) == RESNET50_PARAMS
  assert abs(resnet50.count_params() - RESNET50_PARAMS) / RESNET50_PARAMS < 0.01
  assert resnet50.count_params() == RESNET50_PARAMS + moving_stat_count(resnet50)


def test_resnet50_shapes_and_structure(resnet50):
  assert resnet50.name == "resnet50"
  assert resnet50.input_shape == (None, 224, 224, 3)
  assert resnet50.output_shape == (None, 1000)
  # 7x7/2 conv and 3x3/2 pool take 224 to 56; the last stage is 7x7 with 2048 channels.
  assert resnet50.get_layer("stem_pool").output.shape[1:] == (56, 56, 64)
  assert resnet50.get_layer("stage4_block3_out").output.shape[1:] == (7, 7, 2048)
  # 3 + 4 + 6 + 3 blocks, each with 3 convolutions, plus one projection per stage and a stem.
  convs = [layer for layer in resnet50.layers if isinstance(layer, keras.layers.Conv2D)]
  assert len(convs) == 1 + 3 * 16 + 4
  stage2 = resnet50.get_layer("stage2_block1_conv2")
  assert stage2.strides == (2, 2)  # v1.5: the stride is on the 3x3 convolution
  assert resnet50.get_layer("stage2_block1_conv1").strides == (1, 1)
  bn = resnet50.get_layer("stem_bn")
  assert bn.momentum == 0.9 and bn.epsilon == 1e-5


def test_resnet18_parameter_count():
  model = models.build_model("resnet18", num_classes=1000, image_size=224)
  assert trainable_count(model) == RESNET18_PARAMS
  assert abs(model.count_params() - 11.69e6) / 11.69e6 < 0.01
  assert model.output_shape == (None, 1000)
  # The first stage keeps 64 channels at stride 1, so it has no projection.
  names = {layer.name for layer in model.layers}
  assert "stage1_block1_proj_conv" not in names
  assert {"stage2_block1_proj_conv", "stage3_block1_proj_conv", "stage4_block1_proj_conv"} <= names


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnet_small_builds(image_size, num_classes):
  model = models.build_model("resnet_small", num_classes=num_classes, image_size=image_size)
  assert model.input_shape == (None, image_size, image_size, 3)
  assert model.output_shape == (None, num_classes)
  assert trainable_count(model) == resnet_small_params(num_classes)
  # The small stem keeps the resolution; two strided stages divide it by 4.
  assert model.get_layer("stem_conv").output.shape[1:] == (image_size, image_size, 16)
  assert model.get_layer("stage3_block1_out").output.shape[1:] == (image_size // 4, image_size // 4,
                                                                   64)
  logits = model(np.zeros((2, image_size, image_size, 3), np.float32), training=False)
  assert logits.shape == (2, num_classes)


def test_logits_are_float32_under_mixed_bfloat16():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = models.build_model("resnet_small", num_classes=10, image_size=32)
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.get_layer("avg_pool").output.dtype == "bfloat16"
    assert model.output.dtype == "float32"
    logits = model(np.random.rand(2, 32, 32, 3).astype(np.float32), training=False)
    assert logits.dtype == tf.float32
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert keras.mixed_precision.global_policy().name == "float32"


def test_unknown_name():
  with pytest.raises(ValueError, match="resnet18.*resnet50.*resnet_small.*'resnet101'"):
    models.build_model("resnet101", num_classes=10, image_size=32)


def test_bad_builder_arguments():
  with pytest.raises(ValueError, match="stem"):
    models.resnet([1], [16], bottleneck=False, num_classes=10, image_size=32, stem="cifar",
                  name="x")
  with pytest.raises(ValueError, match="same length"):
    models.resnet([1, 1], [16], bottleneck=False, num_classes=10, image_size=32, name="x")


def test_last_batch_norm_gamma_of_each_block_is_zero():
  for name, last_bn, blocks in [("resnet_small", "bn2", 3), ("resnet18", "bn2", 8)]:
    model = models.build_model(name, num_classes=10, image_size=32)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    zero = [bn.name for bn in bns if not np.any(bn.gamma.numpy())]
    assert sorted(zero) == sorted(bn.name for bn in bns if bn.name.endswith(last_bn))
    assert len(zero) == blocks
    for layer in bns:
      if layer.name not in zero:
        np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)


def test_last_batch_norm_gamma_of_bottleneck_block_is_zero(resnet50):
  gammas = {
      layer.name: layer.gamma.numpy() for layer in resnet50.layers
      if isinstance(layer, keras.layers.BatchNormalization)
  }
  zero = sorted(n for n, g in gammas.items() if not np.any(g))
  assert len(zero) == 16 and all(n.endswith("_bn3") for n in zero)
  assert all(np.all(g == 1.0) for n, g in gammas.items() if n not in zero)


def test_forward_backward_gives_finite_gradients():
  keras.utils.set_random_seed(0)
  model = models.build_model("resnet_small", num_classes=10, image_size=32)
  images = tf.random.normal([4, 32, 32, 3], seed=1)
  labels = tf.constant([0, 3, 7, 9])
  with tf.GradientTape() as tape:
    logits = model(images, training=True)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
  grads = tape.gradient(loss, model.trainable_variables)
  assert np.isfinite(loss.numpy())
  assert len(grads) == len(model.trainable_variables) > 0
  for var, grad in zip(model.trainable_variables, grads):
    assert grad is not None, var.path
    assert np.all(np.isfinite(tf.convert_to_tensor(grad).numpy())), var.path
  by_path = {v.path: g for v, g in zip(model.trainable_variables, grads)}
  # The head and the zero-initialized gammas get a signal from the first step on.
  assert np.any(by_path["logits/kernel"].numpy())
  assert np.any(by_path["stage1_block1_bn2/gamma"].numpy())
  assert np.any(by_path["stem_conv/kernel"].numpy())


if __name__ == "__main__":
  pytest_main.main(__file__)
