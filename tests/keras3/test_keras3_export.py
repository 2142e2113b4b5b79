"""Keras 3 models out: tfcompress writes a float or pruned model as a Keras 3 file that a
Keras 3 process (no tf_keras) loads and runs to the same outputs."""

import numpy as np
import pytest

import tfcompress
from tfcompress import cli, keras3_export, quantization
from tfcompress.keras import keras
from tfcompress.keras3_export import Keras3ExportError


@pytest.mark.parametrize("name", ["mixed", "nested", pytest.param(
    "mobilenet_v3_small", marks=pytest.mark.slow)])  # 17 s: `make test-all`
def test_cli_writes_a_keras3_file_keras3_runs_the_same(keras3_dir, keras3_builder, tmp_path,
                                                       name):
    model = tfcompress.load_model(keras3_dir / f"{name}.keras")  # imported, then out again
    assert cli.main(["export", str(keras3_dir / f"{name}.keras"), "--keras3",
                     "--out", str(tmp_path)]) in (0, None)
    written = tmp_path / f"{name}_keras3.keras"
    keras3_builder(tmp_path, "predict", str(written), str(keras3_dir / f"{name}.npz"))
    npz = np.load(keras3_dir / f"{name}.npz")
    xs = [npz[k] for k in sorted(npz.files) if k.startswith("x")]
    expected = np.asarray(model(xs if len(xs) > 1 else xs[0], training=False))
    got = np.load(tmp_path / "predicted.npy")
    assert float(np.max(np.abs(got - expected))) <= 1e-4 * float(np.max(np.abs(expected)))


@pytest.mark.parametrize("name", ["small_cnn", "resnet8", "mobilenet_v2"])
def test_zoo_models_go_out_with_their_weights(tmp_path, name):
    import keras as keras3
    import models
    shape = (28, 28, 1) if name == "small_cnn" else (32, 32, 3)
    model = models.get_model(name, shape, 10)
    path = keras3_export.save_keras3(model, tmp_path / "zoo.keras")
    model3 = keras3.saving.load_model(path)
    x = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    np.testing.assert_allclose(model3(x), model(x), rtol=1e-4, atol=1e-6)


def test_what_cannot_go_out_says_so(tmp_path):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, name="d")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    with pytest.raises(Keras3ExportError, match="a QAT model has TFMOT wrappers"):
        keras3_export.save_keras3(quantization.quantize(model), tmp_path / "qat.keras")
    old_sigmoid = keras.Model(inputs, keras.layers.Activation("hard_sigmoid", name="hs")(x))
    with pytest.raises(Keras3ExportError, match=r"'hs' uses tf_keras's hard_sigmoid \(0.2x"):
        keras3_export.save_keras3(old_sigmoid, tmp_path / "hs.keras")
    with pytest.raises(Keras3ExportError, match="must end in .keras"):
        keras3_export.save_keras3(model, tmp_path / "m.h5")
    assert not list(tmp_path.iterdir())  # nothing half-written
