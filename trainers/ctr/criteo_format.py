"""The layout of a Criteo click log line, shared by the reader, the generator, the config and
the model: `label \\t I1 .. I13 \\t C1 .. C26`. Plain numbers, so that the config can check
flags against them before TensorFlow is imported."""

NUM_DENSE = 13  # integer features I1..I13
NUM_SPARSE = 26  # categorical features C1..C26, one embedding table each
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE  # with the label
