"""ResNet classifiers as Keras functional models, all declared from one builder.

`resnet` follows He et al. 2016 ("Deep Residual Learning") in the v1.5 form used by
torchvision and the MLPerf reference: in a bottleneck block the stride sits on the 3x3
convolution, not the first 1x1. Convolutions have no bias (batch norm follows each one), so
resnet50 has torchvision's 25,557,032 trainable parameters for 1000 classes; Keras'
`count_params` adds batch norm's moving mean and variance (non-trainable) to that.

Every model takes float images of shape (image_size, image_size, 3), channels last, and
returns float32 logits of shape (batch, num_classes), also under a mixed precision policy,
so that the loss and its softmax run in float32.
"""

import functools

import keras

# Batch norm settings of the reference ResNet (torchvision: momentum 0.1 on the new value,
# which is Keras' 0.9 on the old one).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
STEMS = ("imagenet", "small")


def _conv(filters, kernel_size, strides, name):
  return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                             kernel_initializer="he_normal", name=name)


def _bn(name, zero_gamma=False):
  return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                         gamma_initializer="zeros" if zero_gamma else "ones",
                                         name=name)


def _shortcut(x, filters, strides, name):
  """Identity when the shape is kept; a 1x1 projection (with batch norm) when it changes."""
  if strides == 1 and x.shape[-1] == filters:
    return x
  x = _conv(filters, 1, strides, f"{name}_proj_conv")(x)
  return _bn(f"{name}_proj_bn")(x)


def _basic_block(x, filters, strides, name):
  """Two 3x3 convolutions (ResNet-18/34)."""
  shortcut = _shortcut(x, filters, strides, name)
  y = _conv(filters, 3, strides, f"{name}_conv1")(x)
  y = _bn(f"{name}_bn1")(y)
  y = keras.layers.ReLU(name=f"{name}_relu1")(y)
  y = _conv(filters, 3, 1, f"{name}_conv2")(y)
  # Zero-initialized gamma: each residual branch starts as zero, so every block starts as
  # the identity, which makes early training (and large-batch training) more stable
  # (Goyal et al. 2017, section 5.1).
  y = _bn(f"{name}_bn2", zero_gamma=True)(y)
  y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
  return keras.layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters, strides, name):
  """1x1 down to filters / 4, 3x3 (strided), 1x1 up to filters (ResNet-50 and deeper)."""
  inner = filters // 4
  shortcut = _shortcut(x, filters, strides, name)
  y = _conv(inner, 1, 1, f"{name}_conv1")(x)
  y = _bn(f"{name}_bn1")(y)
  y = keras.layers.ReLU(name=f"{name}_relu1")(y)
  y = _conv(inner, 3, strides, f"{name}_conv2")(y)
  y = _bn(f"{name}_bn2")(y)
  y = keras.layers.ReLU(name=f"{name}_relu2")(y)
  y = _conv(filters, 1, 1, f"{name}_conv3")(y)
  # Zero-initialized gamma, as in the basic block: every block starts as the identity.
  y = _bn(f"{name}_bn3", zero_gamma=True)(y)
  y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
  return keras.layers.ReLU(name=f"{name}_out")(y)


def resnet(block_counts, widths, *, bottleneck, num_classes, image_size, stem="imagenet",
           name="resnet"):
  """A ResNet with len(block_counts) stages; stage i has block_counts[i] blocks.

  widths[i] is the number of output channels of stage i (a bottleneck block's inner width
  is widths[i] / 4). Every stage after the first halves the spatial size in its first block.
  The "imagenet" stem is a 7x7/2 convolution and a 3x3/2 max pool (a 4x reduction, for
  224 px images); the "small" stem is one 3x3/1 convolution (CIFAR-style, for 32-64 px).
  The stem has widths[0] / 4 channels with bottleneck blocks (64 for resnet50) and
  widths[0] without (64 for resnet18).
  """
  if len(block_counts) != len(widths) or not block_counts:
    raise ValueError(f"block_counts and widths must be non-empty and of the same length, "
                     f"got {block_counts} and {widths}")
  if stem not in STEMS:
    raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
  if bottleneck and any(w % 4 for w in widths):
    raise ValueError(f"widths must be multiples of 4 with bottleneck blocks, got {widths}")
  block = _bottleneck_block if bottleneck else _basic_block
  stem_filters = widths[0] // 4 if bottleneck else widths[0]

  inputs = keras.Input((image_size, image_size, 3), name="images")
  if stem == "imagenet":
    x = _conv(stem_filters, 7, 2, "stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
  else:
    x = _conv(stem_filters, 3, 1, "stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)

  for stage, (count, width) in enumerate(zip(block_counts, widths)):
    for index in range(count):
      strides = 2 if stage > 0 and index == 0 else 1
      x = block(x, width, strides, f"stage{stage + 1}_block{index + 1}")

  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  # float32 under any policy: the logits feed a softmax, which should not run in 16 bits.
  logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
  return keras.Model(inputs, logits, name=name)


MODELS = {
    "resnet50": functools.partial(resnet, [3, 4, 6, 3], [256, 512, 1024, 2048], bottleneck=True,
                                  stem="imagenet", name="resnet50"),
    "resnet18": functools.partial(resnet, [2, 2, 2, 2], [64, 128, 256, 512], bottleneck=False,
                                  stem="imagenet", name="resnet18"),
    # A CPU-sized ResNet-8 (CIFAR-style) for 32-64 px images: about 78k parameters.
    "resnet_small": functools.partial(resnet, [1, 1, 1], [16, 32, 64], bottleneck=False,
                                      stem="small", name="resnet_small"),
}


def build_model(name, num_classes, image_size):
  """The model MODELS[name] for num_classes classes and square images of image_size px."""
  if name not in MODELS:
    raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {name!r}")
  return MODELS[name](num_classes=num_classes, image_size=image_size)
