import os

import numpy as np
import pytest

from tfcompress.keras import ensure_tf_keras_model, keras, tf


def test_legacy_keras_is_selected_before_tensorflow():
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    # With the variable set before TensorFlow's import, tf.keras *is* tf_keras.
    assert tf.keras.Model is keras.Model
    assert keras.__version__.startswith("2.")


def test_tf_keras_model_passes_through():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert ensure_tf_keras_model(model) is model


def test_keras3_model_is_refused_with_the_way_out():
    import keras as keras3  # the Keras 3 package, installed beside tf_keras
    assert keras3.__version__.startswith("3.")
    model3 = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError) as err:
        ensure_tf_keras_model(model3)
    message = str(err.value)
    assert "this is a Keras 3 model" in message
    assert "tf_keras (Keras 2)" in message
    assert "tfcompress.load_model(model)" in message
    import tfcompress  # ... and that way out works
    assert isinstance(tfcompress.load_model(model3), keras.Model)


def test_non_model_is_refused():
    with pytest.raises(TypeError, match="expected a tf_keras Model, got numpy.ndarray"):
        ensure_tf_keras_model(np.zeros(3))
