"""QAT on what Keras 3 models contain: keras.applications.MobileNetV3Small, imported."""

import numpy as np

import tfcompress
from tfcompress import quantization
from tfcompress.keras import keras
from tflite_export.convert import convert
from tflite_export.inspect import inspect_tflite


def test_imported_mobilenet_v3_small_trains_quantization_aware_and_converts(keras3_dir):
    model = tfcompress.load_model(keras3_dir / "mobilenet_v3_small.keras")
    qat = quantization.quantize(model)  # hard-swish, `x + 3.0`, SE Multiply, Rescaling
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 96, 96, 3)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    qat.compile(keras.optimizers.Adam(1e-4),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    info = inspect_tflite(convert(qat, "int8_full"))
    assert info["is_full_integer"]
    assert set(info["tensor_dtypes"]) == {"INT8", "INT32"}
    assert "HARD_SWISH" in {op["op"] for op in info["ops"]}
