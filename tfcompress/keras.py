"""The one place that chooses Keras for tfcompress.

TFMOT 0.8.1 only works with Keras 2 models (`prune_low_magnitude` and
`quantize_model` raise on a Keras 3 model, `cluster_weights` silently returns
None), so every model here is a tf_keras model. `TF_USE_LEGACY_KERAS=1` must be
set before TensorFlow is first imported for `tf.keras` to be tf_keras too.

Example:
    from tfcompress.keras import keras, tf
    model = keras.Sequential([keras.layers.Dense(10)])
"""

import os

# Only if unset: a user who deliberately set it keeps their choice.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO lines (oneDNN, CPU features) drown the progress output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

# Random layers (Dropout...) draw from a tf.random.Generator instead of legacy
# stateful ops, so tfcompress.resume can reseed them per epoch: a resumed run
# then draws the same masks as an uninterrupted one. Layers built from here on.
keras.backend.experimental.enable_tf_random_generator()

__all__ = ["keras", "tf", "ensure_tf_keras_model", "is_keras3_model", "keras3_package"]


def keras3_package():
    """The Keras 3 package (`import keras`), imported on first use: `keras` here is tf_keras.
    Only the Keras 3 import and export (keras3_import, keras3_export, equivalence) use it."""
    import importlib
    return importlib.import_module("keras")


def is_keras3_model(obj):
    """True when `obj` is a model or layer from the Keras 3 package (`keras`)."""
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        if module == "keras" or module.startswith("keras."):
            return True
    return False


def ensure_tf_keras_model(model):
    """Returns `model` if it is a tf_keras model; raises a clear TypeError if not.

    Example:
        ensure_tf_keras_model(keras.Sequential([keras.layers.Dense(2)]))

    Raises:
        TypeError: for a Keras 3 model or anything that is not a tf_keras Model.
    """
    if isinstance(model, keras.Model):
        return model
    if is_keras3_model(model):
        raise TypeError(
            f"this is a Keras 3 model ({type(model).__name__}); tfcompress needs "
            "a tf_keras (Keras 2) model because TensorFlow Model Optimization "
            "(pruning, quantization-aware training, clustering) only works with "
            "Keras 2 models — import it first: model = tfcompress.load_model(model) "
            "rebuilds it in tf_keras and checks it computes the same (or load its "
            "saved file with tfcompress.load_model)"
        )
    raise TypeError(
        f"expected a tf_keras Model, got {type(model).__module__}."
        f"{type(model).__name__}; build the model with tf_keras or load it "
        "with tfcompress.load_model"
    )
