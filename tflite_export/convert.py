"""Keras model -> TFLite flatbuffer.

`from_keras_model` leaves the batch dimension dynamic (-1), which the Edge TPU
compiler and many mobile runtimes reject; we trace the model with a fixed batch
size instead and convert that concrete function.

Example:
    tflite_bytes = convert(model, "float32")
    write_tflite(tflite_bytes, "model.tflite")
"""

import os

from tfcompress.keras import tf, ensure_tf_keras_model
from tfcompress.saving import load_model, write_bytes_atomic

MODES = ("float32",)


def _fixed_batch_function(model, batch_size):
    specs = [tf.TensorSpec((batch_size,) + tuple(t.shape[1:]), t.dtype, name=t.name.split(":")[0])
             for t in model.inputs]

    @tf.function(input_signature=specs)
    def serve(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    return serve.get_concrete_function()


def convert(model_or_path, mode="float32", batch_size=1):
    """Converts a tf_keras model (or a saved model file) to TFLite bytes.

    Args:
        model_or_path: a tf_keras Model or a path `tfcompress.load_model` reads.
        mode: one of MODES.
        batch_size: the fixed batch dimension of the inputs.

    Returns:
        The flatbuffer as bytes.
    """
    if mode not in MODES:
        raise ValueError(f"unknown TFLite mode {mode!r}; choose one of {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(model_or_path, (str, os.PathLike)):
        model = load_model(model_or_path)
    else:
        model = ensure_tf_keras_model(model_or_path)
    fn = _fixed_batch_function(model, batch_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    return converter.convert()


def write_tflite(tflite_bytes, path):
    """Writes a flatbuffer atomically (temp file + rename)."""
    return write_bytes_atomic(path, tflite_bytes)
