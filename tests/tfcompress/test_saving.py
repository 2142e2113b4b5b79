import os

import numpy as np
import pytest

import tfcompress
from tfcompress.errors import ModelLoadError
from tfcompress.keras import keras


def _model(with_lambda=False):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense")(inputs)
    if with_lambda:
        x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "saved_model_dir"])
def test_round_trip_keeps_predictions(tmp_path, name):
    model = _model()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    path = tfcompress.save_model(model, tmp_path / name)
    loaded = tfcompress.load_model(path)
    assert isinstance(loaded, keras.Model)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    # Atomic save leaves nothing but the model behind.
    assert sorted(os.listdir(tmp_path)) == [name]


@pytest.mark.parametrize("name", ["m.keras", "m.h5"])
def test_lambda_code_is_not_run_unless_allowed(tmp_path, name):
    path = tfcompress.save_model(_model(with_lambda=True), tmp_path / name)
    with pytest.raises(ModelLoadError) as err:
        tfcompress.load_model(path)
    assert str(path) in str(err.value)
    assert "allow_unsafe=True" in str(err.value)
    loaded = tfcompress.load_model(path, allow_unsafe=True)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               2.0 * loaded.get_layer("dense")(x).numpy(), rtol=1e-6)


def test_savedmodel_lambda_is_refused_unless_allowed(tmp_path):
    # A SavedModel carries the Lambda's traced TF graph, which Keras would revive
    # and run on predict: the file's own ops (tf.io.write_file ran that way), so
    # safe mode refuses it too (tests/reliability/test_untrusted.py has the marker).
    path = tfcompress.save_model(_model(with_lambda=True), tmp_path / "sm")
    with pytest.raises(ModelLoadError, match=r"sm: cannot load model: layer 'double' is a "
                                             r"Lambda layer.*allow_unsafe=True"):
        tfcompress.load_model(path)
    unsafe = tfcompress.load_model(path, allow_unsafe=True).get_layer("double")
    assert isinstance(unsafe, keras.layers.Lambda) and callable(unsafe.function)


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match=r"nope\.keras: no such file"):
        tfcompress.load_model(tmp_path / "nope.keras")


@pytest.mark.parametrize("name", ["junk.keras", "junk.h5"])
def test_garbage_file_names_file_and_reason(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(300))
    with pytest.raises(ModelLoadError, match=rf"{name}: cannot load model: .+"):
        tfcompress.load_model(path)


def test_directory_without_saved_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no saved_model.pb"):
        tfcompress.load_model(tmp_path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        tfcompress.load_model(path)


def test_reference_savedmodel_loads(shared_dir):
    model = tfcompress.load_model(os.path.join(shared_dir, "data/mlperf_tiny_kws/ds_cnn_savedmodel"))
    assert model.count_params() == 24908
    assert model.input_shape == (None, 49, 10, 1)


def test_atomic_writes_leave_no_temps_and_the_usual_mode(tmp_path):
    from tfcompress.saving import write_bytes_atomic
    target = tmp_path / "out.json"
    # What a SIGKILL mid-write leaves: a temp file and a temp folder beside the target.
    (tmp_path / ".out.json.abc123").write_bytes(b"half")
    (tmp_path / ".out.json.dir").mkdir()
    (tmp_path / ".other.json.xyz").write_bytes(b"someone else's")
    old = os.umask(0o022)
    try:
        write_bytes_atomic(target, b"{}")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.xyz", "out.json"]
    assert (target.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "saved"])
def test_saved_compile_says_how_a_file_was_compiled(tmp_path, name):
    from tfcompress.saving import save_model, saved_compile
    model = _model()
    save_model(model, tmp_path / ("plain_" + name))
    assert saved_compile(tmp_path / ("plain_" + name)) is None
    model.compile("adam", "categorical_crossentropy",
                  [keras.metrics.TopKCategoricalAccuracy(5), "accuracy"])
    save_model(model, tmp_path / name)
    described = saved_compile(tmp_path / name)
    assert "loss categorical_crossentropy" in described
    assert "top_k_categorical_accuracy" in described and "accuracy" in described


USER_LAYER = '''
import tf_keras as keras


@keras.saving.register_keras_serializable(package="Mine")
class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


class Halver(keras.layers.Layer):  # not registered: found through --custom_objects
    def call(self, x):
        return 0.5 * x
'''


def test_custom_objects_module_makes_its_layers_load_and_the_error_says_how(tmp_path,
                                                                            monkeypatch):
    from tfcompress.saving import import_custom_objects, save_model
    module_file = tmp_path / "user_layers_t.py"
    module_file.write_text(USER_LAYER)
    found = import_custom_objects(str(module_file))
    assert set(found) == {"Doubler", "Halver"}
    inputs = keras.Input((3,))
    model = keras.Model(inputs, found["Halver"]()(found["Doubler"]()(inputs)) + 1.0)
    save_model(model, tmp_path / "custom.keras")
    # A fresh process would not know the classes: forget them, as it would.
    import sys
    monkeypatch.delitem(sys.modules, "user_layers_t")
    saved_custom = dict(keras.saving.get_custom_objects())
    keras.saving.get_custom_objects().clear()
    try:
        from tf_keras.src.saving import object_registration
        registered = object_registration._GLOBAL_CUSTOM_OBJECTS.pop("Mine>Doubler", None)
        with pytest.raises(ModelLoadError, match=r"refers to user_layers_t\.(Doubler|Halver).*"
                                                 r"--custom_objects user_layers_t"):
            tfcompress.load_model(tmp_path / "custom.keras")
        # Following the advice from the model's folder: the module by name.
        monkeypatch.chdir(tmp_path)
        import_custom_objects("user_layers_t")
        loaded = tfcompress.load_model(tmp_path / "custom.keras")
        x = np.ones((2, 3), np.float32)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), x + 1.0, rtol=1e-6)
    finally:
        keras.saving.get_custom_objects().clear()
        keras.saving.get_custom_objects().update(saved_custom)
        if registered is not None:
            object_registration._GLOBAL_CUSTOM_OBJECTS["Mine>Doubler"] = registered
    with pytest.raises(ModelLoadError, match="no module named 'no_such_module_x'"):
        import_custom_objects("no_such_module_x")
    with pytest.raises(ModelLoadError, match="no such file"):
        import_custom_objects(str(tmp_path / "missing.py"))
