import os

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import models
from tfcompress.keras import keras
from tflite_export.convert import convert

# Small but real configurations of every zoo model.
CASES = {
    "small_cnn": ((28, 28, 1), 10, dict(width=8)),
    "mobilenet_v2": ((28, 28, 1), 10, dict(alpha=0.35)),
    "ds_cnn": ((49, 10, 1), 12, dict(size="S")),
    "resnet8": ((32, 32, 3), 10, dict()),
}


def test_every_zoo_model_has_a_case():
    assert sorted(CASES) == models.list_models()


@pytest.mark.parametrize("name", sorted(CASES))
def test_builds_trains_and_converts_to_matching_tflite(name):
    input_shape, classes, options = CASES[name]
    model = models.get_model(name, input_shape, classes, **options)
    assert model.output_shape == (None, classes)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8,) + input_shape).astype(np.float32)
    y = rng.integers(0, classes, 8)
    model.compile("adam", "sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    interpreter = Interpreter(model_content=convert(model, "float32"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert tuple(inp["shape"]) == (1,) + input_shape  # batch fixed to 1 for mobile
    for i in range(3):
        interpreter.set_tensor(inp["index"], x[i:i + 1])
        interpreter.invoke()
        got = interpreter.get_tensor(out["index"])
        want = model(x[i:i + 1], training=False).numpy()
        assert np.max(np.abs(got - want)) < 1e-4


def test_ds_cnn_s_matches_mlperf_reference(shared_dir):
    from tfcompress import load_model
    ref = load_model(os.path.join(shared_dir, "data/mlperf_tiny_kws/ds_cnn_savedmodel"))
    ours = models.get_model("ds_cnn", (49, 10, 1), 12, size="S")
    assert ours.count_params() == ref.count_params() == 24908
    ours_shapes = [w.shape for w in ours.weights]
    ref_shapes = [w.shape for w in ref.weights]
    assert ours_shapes == ref_shapes


def test_mobilenet_v2_is_flat_and_resizes_small_inputs():
    model = models.get_model("mobilenet_v2", (28, 28, 1), 10, alpha=0.35)
    assert model.get_layer("resize").output_shape == (None, 32, 32, 1)
    assert not any(hasattr(layer, "layers") for layer in model.layers)  # no nested model


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of ds_cnn, mobilenet_v2"):
        models.get_model("vgg", (28, 28, 1), 10)
    with pytest.raises(ValueError, match="model 'small_cnn' has no option alpha; its options are"):
        models.get_model("small_cnn", (28, 28, 1), 10, alpha=0.5)
    with pytest.raises(ValueError, match="ds_cnn size must be one of"):
        models.get_model("ds_cnn", (49, 10, 1), 12, size="XL")


def test_mobilenet_v2_batch_norm_momentum_suits_short_runs(tmp_path):
    # keras.applications' 0.999 left the moving statistics near their initial values after
    # 2 epochs, and the trained model scored chance in inference mode.
    import importlib
    mobilenet_v2 = importlib.import_module("models.mobilenet_v2")
    model = models.get_model("mobilenet_v2", (28, 28, 1), 10, alpha=0.35)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) > 30
    assert {layer.momentum for layer in norms} == {mobilenet_v2.BATCH_NORM_MOMENTUM}
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert {layer.momentum for layer in loaded.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.99}
