"""Custom layers as a user would write them, for the acceptance suite's "custom_layer" model.

Loaded by file path under the module name "user_layers" (see foreign.py), so a
saved model's config names module "user_layers" and class "UserLayers>Swish" etc.;
loading such a model needs this module imported first.

Example:
    spec = importlib.util.spec_from_file_location("user_layers", path)
    ...
    keras.models.load_model("custom_layer.keras")
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tf_keras as keras  # noqa: E402
import tensorflow as tf  # noqa: E402


@keras.saving.register_keras_serializable(package="UserLayers")
class Swish(keras.layers.Layer):
    """x * sigmoid(beta * x) with a learnable scalar beta (an activation layer that owns a weight)."""

    def __init__(self, beta=1.0, **kwargs):
        super().__init__(**kwargs)
        self.beta_init = float(beta)

    def build(self, input_shape):
        self.beta = self.add_weight(name="beta", shape=(),
                                    initializer=keras.initializers.Constant(self.beta_init))
        super().build(input_shape)

    def call(self, x):
        return x * tf.sigmoid(self.beta * x)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta_init}


@keras.saving.register_keras_serializable(package="UserLayers")
class ScaledDense(keras.layers.Layer):
    """Dense without activation whose output is multiplied by a learnable scalar.

    A kernel-owning layer that is not a keras.layers.Dense, so tools cannot
    recognise it by class.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.units),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones")
        super().build(input_shape)

    def call(self, x):
        return self.scale * (tf.matmul(x, self.kernel) + self.bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
