"""AdaRound (learned rounding) on Keras weights, and the int4 file that stores its integers."""

import numpy as np
import pytest

from tfcompress.keras import keras
from tfcompress.quantization.adaround import adaround, grid
from tflite_export.convert import convert
from tflite_export.tflite_file import parse_tflite, tensor_type_name

L = keras.layers


@pytest.fixture(scope="module")
def rounded():
    """A small conv + dense classifier trained briefly, then AdaRounded."""
    rng = np.random.default_rng(0)
    x = rng.random((256, 10, 10, 2)).astype(np.float32)
    y = (x[:, :5].mean(axis=(1, 2, 3)) > x[:, 5:].mean(axis=(1, 2, 3))).astype(np.int64)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 2))
    h = L.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = L.Dense(16, activation="relu", name="hidden")(L.Flatten()(h))
    model = keras.Model(inputs, L.Dense(2, name="head")(h))
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    result, plan = adaround(model, x[:128], bits=4, iterations=200)
    return model, result, plan, x


def _int4_values(tensor, model):
    """The signed 4-bit integers of an INT4 tensor (two per byte, low nibble first)."""
    raw = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=np.uint8)
    low, high = (raw & 0x0F).astype(np.int8), (raw >> 4).astype(np.int8)
    values = np.stack([low, high], axis=1).reshape(-1)
    values[values > 7] -= 16
    return values[:int(np.prod(tensor.shape))].reshape(tuple(tensor.shape))


def test_learned_integers_are_what_the_int4_file_stores(rounded):
    _, result, _, _ = rounded
    flat = parse_tflite(convert(result, "int4_weights"))
    stored = {t.name.decode(): _int4_values(t, flat) for t in flat.subgraphs[0].tensors
              if tensor_type_name(t) == "INT4"}
    assert len(stored) == 3
    for name in ("conv", "hidden", "head"):
        kernel = result.get_layer(name).kernel.numpy()
        scale, _, _ = grid(kernel, 4)
        ours = np.rint(kernel / scale).astype(np.int8)
        # TFLite keeps output channels first: conv [out, h, w, in], dense [out, in].
        ours = np.moveaxis(ours, -1, 0)
        file_values = next(v for k, v in stored.items() if f"/{name}/" in k)
        np.testing.assert_array_equal(file_values, ours)


def test_rounding_moves_each_weight_less_than_one_step(rounded):
    model, result, plan, _ = rounded
    for name in ("conv", "hidden", "head"):
        original = model.get_layer(name).kernel.numpy()
        scale, _, qmax = grid(original, 4)
        q = result.get_layer(name).kernel.numpy() / scale
        np.testing.assert_allclose(q, np.rint(q), atol=1e-4)  # on the grid
        assert np.all(np.abs(q - original / scale) < 1.0 + 1e-5)
        assert np.all(np.abs(q) <= qmax + 1e-4)
    assert [row["layer"] for row in plan] == ["conv", "hidden", "head"]
    # The optimisation lowers each layer's output error below round-to-nearest's.
    assert all(row["mse_learned"] <= row["mse_nearest"] for row in plan)


def test_bias_correction_removes_the_mean_output_error(rounded):
    model, result, _, x = rounded
    probe = keras.Model(model.inputs, model.get_layer("conv").output)
    ours = keras.Model(result.inputs, result.get_layer("conv").output)
    # Before ReLU the mean error is zero by construction; after it, it stays small.
    shift = np.mean(probe.predict(x[:128], verbose=0) - ours.predict(x[:128], verbose=0))
    assert abs(shift) < 0.05 * float(np.mean(np.abs(probe.predict(x[:128], verbose=0))))
    assert not np.allclose(model.get_layer("conv").bias.numpy(),
                           result.get_layer("conv").bias.numpy())
