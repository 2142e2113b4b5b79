"""Activations Keras 3 has and tf_keras lacks or defines differently, as tf_keras functions.

Keras 3's `hard_sigmoid` is relu6(x + 3) / 6 (MobileNetV3's); tf_keras's `hard_sigmoid`
is clip(0.2x + 0.5, 0, 1), so passing the name across is a silent error. Keras 3's
`hard_silu` (alias `hard_swish`) is x * hard_sigmoid(x) and does not exist in
tf_keras. Both are registered with Keras under `tfcompress>` names, so a model that
uses them saves and reloads (with `tfcompress.load_model`), and QAT knows them
(`quantization.builtin_configs`).

Example:
    from tfcompress.activations import hard_swish
    layer = keras.layers.Activation(hard_swish)
"""

from tfcompress.keras import keras, tf

PACKAGE = "tfcompress"


@keras.saving.register_keras_serializable(PACKAGE)
def hard_sigmoid(x):
    """Keras 3's hard sigmoid: relu6(x + 3) / 6 (0 below -3, 1 above 3)."""
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@keras.saving.register_keras_serializable(PACKAGE)
def hard_swish(x):
    """Keras 3's hard_silu / hard_swish: x * relu6(x + 3) / 6."""
    return x * hard_sigmoid(x)


# Keras 3 activation name -> the tf_keras function that computes the same thing.
KERAS3_ACTIVATIONS = {"hard_sigmoid": hard_sigmoid, "hard_silu": hard_swish,
                      "hard_swish": hard_swish}
