"""Keras 3 files and models in: `tfcompress.load_model` rebuilds them in tf_keras, verified.

The files are written by Keras 3 itself in a child process (conftest); each comes
with Keras 3's own outputs on a fixed batch, which the imported model must match.
"""

import numpy as np
import pytest

import tfcompress
from tfcompress import activations, keras3_import
from tfcompress.errors import ModelLoadError
from tfcompress.keras import keras


def _inputs(npz):
    xs = [npz[k] for k in sorted(npz.files) if k.startswith("x")]
    return xs if len(xs) > 1 else xs[0]


def _assert_matches_keras3(model, npz_path):
    """The model's outputs equal Keras 3's to 1e-4 of their own largest magnitude."""
    npz = np.load(npz_path)
    expected = npz["y"]
    got = np.asarray(model(_inputs(npz), training=False))
    assert got.shape == expected.shape
    scale = float(np.max(np.abs(expected)))
    assert scale > 0, "a model whose outputs are all zero proves nothing"
    assert float(np.max(np.abs(got - expected))) <= 1e-4 * scale


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
                                  "resnet50", "nested", "two_input", "shared", "mixed",
                                  "all_ops"])
def test_keras3_file_imports_and_matches(keras3_dir, name):
    model = tfcompress.load_model(keras3_dir / f"{name}.keras")
    assert isinstance(model, keras.Model)
    assert type(model).__module__.startswith("tf_keras")
    _assert_matches_keras3(model, keras3_dir / f"{name}.npz")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_sequential_keras_and_h5_files(keras3_dir, suffix):
    model = tfcompress.load_model(keras3_dir / f"plain{suffix}")
    assert isinstance(model, keras.Sequential)
    # Keras 3's hard_sigmoid is relu6(x + 3) / 6, not tf_keras's 0.2x + 0.5.
    assert model.get_layer("d2").activation is activations.hard_sigmoid
    _assert_matches_keras3(model, keras3_dir / "plain.npz")


def test_imported_model_keeps_what_training_needs(keras3_dir):
    nested = tfcompress.load_model(keras3_dir / "nested.keras")
    backbone = nested.get_layer("backbone")
    assert isinstance(backbone, keras.Model)
    assert backbone.get_layer("b_bn").trainable is False  # frozen BN stays frozen
    mixed = tfcompress.load_model(keras3_dir / "mixed.keras")
    assert mixed.get_layer("bn_frozen").trainable is False
    # Dropout still drops in training (Keras 3 nodes carry training=False; not kept).
    x = np.load(keras3_dir / "mixed.npz")["x"]
    assert not np.allclose(mixed(x, training=True), mixed(x, training=False))
    # `x * 0.5 + 1.0` came in as Keras layers TFMOT can quantize, not TF-op layers.
    kinds = {type(layer).__name__ for layer in mixed.layers}
    assert "TFOpLambda" not in kinds and "Rescaling" in kinds


def test_imported_model_saves_and_reloads(keras3_dir, tmp_path):
    model = tfcompress.load_model(keras3_dir / "mixed.keras")
    path = tfcompress.save_model(model, tmp_path / "mixed_tf_keras.keras")
    again = tfcompress.load_model(path)
    _assert_matches_keras3(again, keras3_dir / "mixed.npz")


def test_in_memory_keras3_model():
    import keras as keras3
    keras3.utils.set_random_seed(3)
    inputs = keras3.Input((5,))
    model3 = keras3.Model(inputs, keras3.layers.Dense(4, activation="hard_silu")(inputs * 2.0))
    model = tfcompress.load_model(model3)
    x = np.random.default_rng(0).standard_normal((3, 5)).astype("float32")
    np.testing.assert_allclose(model(x), model3(x), rtol=1e-5, atol=1e-6)


def test_a_wrong_translation_is_caught_and_named(keras3_dir, monkeypatch):
    # Were hard_silu passed across as swish, the probe batch would show it at that layer.
    monkeypatch.setitem(activations.KERAS3_ACTIVATIONS, "hard_silu", "swish")
    with pytest.raises(ModelLoadError, match=r"differs from the Keras 3 model by .* first at "
                                             r"'hswish'"):
        tfcompress.load_model(keras3_dir / "mixed.keras")


def test_lambda_in_a_keras3_file_is_refused_unrun(keras3_dir):
    with pytest.raises(ModelLoadError, match="'double' is a Lambda layer"):
        tfcompress.load_model(keras3_dir / "with_lambda.keras")


@pytest.mark.parametrize("name, fragments", [
    ("unsupported_op", ["'cumsum' is the Keras 3 op Cumsum", "replace it with a Keras layer"]),
    ("rms_norm", ["layer 'rms' (LayerNormalization) sets rms_scaling=True",
                  "no equivalent"]),
    ("subclassed", ["subclassed Keras 3 model", "keras3_import.load_weights(twin, PATH)"]),
])
def test_what_cannot_be_imported_says_so(keras3_dir, name, fragments):
    with pytest.raises(ModelLoadError) as err:
        tfcompress.load_model(keras3_dir / f"{name}.keras")
    for fragment in fragments:
        assert fragment in str(err.value)


def test_subclassed_way_out_loads_weights_into_a_twin(keras3_dir):
    class TwoDense(keras.Model):  # the user's class, with `import tf_keras as keras`
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d1 = keras.layers.Dense(8, activation="relu", name="d1")
            self.d2 = keras.layers.Dense(3, name="d2")

        def call(self, x):
            return self.d2(self.d1(x))

    def twin():
        model = TwoDense()
        model(np.zeros((1, 10), np.float32))
        return model

    npz = np.load(keras3_dir / "subclassed.npz")
    for source in ("subclassed.keras", "subclassed.weights.h5"):
        model = keras3_import.load_weights(twin(), keras3_dir / source)
        np.testing.assert_allclose(model(npz["x"]), npz["y"], rtol=1e-5, atol=1e-6)
    wrong = keras.Sequential([keras.Input((10,)), keras.layers.Dense(5)])
    with pytest.raises(ModelLoadError, match="cannot load its Keras 3 weights into the tf_keras "
                                             "model: the file has weights for d1, and the "
                                             "tf_keras model has no attribute 'd1'"):
        keras3_import.load_weights(wrong, keras3_dir / "subclassed.keras")


def test_untested_keras3_version_warns_then_imports(keras3_dir, monkeypatch):
    monkeypatch.setattr(keras3_import, "TESTED_VERSIONS", ("3.99",))
    with pytest.warns(UserWarning, match=r"saved by Keras 3\.\d+.*tested with Keras 3\.99"):
        model = tfcompress.load_model(keras3_dir / "two_input.keras")
    _assert_matches_keras3(model, keras3_dir / "two_input.npz")


def test_cli_exports_a_keras3_file(keras3_dir, tmp_path):
    from tfcompress import cli
    out = tmp_path / "tflite"
    assert cli.main(["export", str(keras3_dir / "mixed.keras"), "--mode", "float32",
                     "--out", str(out)]) in (0, None)
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(out / "mixed_float32.tflite"))
    interpreter.allocate_tensors()
    npz = np.load(keras3_dir / "mixed.npz")
    for x, expected in zip(npz["x"], npz["y"]):  # the file takes one image at a time
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None])
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
        np.testing.assert_allclose(got, expected, atol=1e-4 * float(np.max(np.abs(npz["y"]))))
