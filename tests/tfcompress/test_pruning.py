import dataclasses
import json

import numpy as np
import pytest

import models
import tfcompress
from tfcompress import pruning, schedules
from tfcompress.keras import keras, tf
from tfcompress.pruning import PruningConfig, PruningError
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)

# Small on purpose: 3 batches of 32 an epoch, so a fit is a few seconds on 2 cores.
STEPS_PER_EPOCH = 3
BATCH = 32


def _data(input_shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((STEPS_PER_EPOCH * BATCH,) + tuple(input_shape), dtype=np.float32)
    return x, rng.integers(0, classes, len(x))


def _fit(model, data, epochs, callbacks=None, initial_epoch=0, compile=True):
    if compile:
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(*data, batch_size=BATCH, epochs=epochs, initial_epoch=initial_epoch,
              shuffle=False, verbose=0, callbacks=callbacks)
    return model


def _small_cnn():
    keras.utils.set_random_seed(0)
    return models.get_model("small_cnn", (28, 28, 1), 10, width=4)


def _dense_model(name="mlp"):
    """16 -> d1 (32) -> d2 (32) -> d3 (4): with the defaults only d2 is pruned."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    x = keras.layers.Dense(32, activation="relu", name="d1")(inputs)
    x = keras.layers.Dense(32, activation="relu", name="d2")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="d3")(x), name=name)


def _sparsity(model, layer):
    return float(np.mean(model.get_layer(layer).kernel.numpy() == 0))


def _rows(report):
    return {row["layer"]: row for row in report["layers"]}


def _wrapped(model):
    return sorted(layer.layer.name for layer in model.layers
                  if isinstance(layer, pruning.PruneLowMagnitude))


def _polynomial_to(sparsity, end_epoch=2):
    # frequency=1: the mask follows the ramp every step of this short run.
    return schedules.PolynomialDecay(sparsity, begin_epoch=0, end_epoch=end_epoch, frequency=1)


# --------------------------------------------------------- polynomial schedule end to end


@pytest.fixture(scope="module")
def polynomial_run():
    """small_cnn pruned to 0.8 over 2 epochs (conv3 to 0.5), trained 3 epochs."""
    baseline = _small_cnn()
    before = [w.copy() for w in baseline.get_weights()]
    config = PruningConfig(schedule=_polynomial_to(0.8), per_layer={"conv3": 0.5})
    pruned = pruning.prune(baseline, config, steps_per_epoch=STEPS_PER_EPOCH)
    _fit(pruned, _data((28, 28, 1), 10), epochs=3, callbacks=pruning.pruning_callbacks())
    return baseline, before, pruned, pruning.strip_pruning(pruned)


def test_polynomial_pruning_reaches_each_target_and_leaves_excluded_layers_dense(
        polynomial_run):
    baseline, _, pruned, stripped = polynomial_run
    # The default skips the stem convolution and the classifier.
    assert _wrapped(pruned) == ["conv2", "conv3"]
    assert abs(_sparsity(stripped, "conv2") - 0.8) <= 0.01
    assert abs(_sparsity(stripped, "conv3") - 0.5) <= 0.01       # per-layer override
    assert _sparsity(stripped, "conv1") == 0.0
    assert _sparsity(stripped, "classifier") == 0.0

    report = json.loads(json.dumps(pruning.sparsity_report(stripped)))
    rows = _rows(report)
    assert list(rows) == ["conv1", "conv2", "conv3", "classifier"]
    for name in rows:
        kernel = stripped.get_layer(name).kernel.numpy()
        assert rows[name]["weights"] == kernel.size
        assert rows[name]["nonzeros"] == np.count_nonzero(kernel)
        assert rows[name]["sparsity"] == pytest.approx(_sparsity(stripped, name))
        assert rows[name]["wrapped"] is False and rows[name]["structure_ok"] is None
    total = report["total"]
    assert total["weights"] == sum(r["weights"] for r in rows.values())
    assert total["sparsity"] == pytest.approx(1 - total["nonzeros"] / total["weights"])

    # On the wrapped model the report reads weight * mask: the same numbers.
    wrapped_rows = _rows(pruning.sparsity_report(pruned))
    assert {n: r["nonzeros"] for n, r in wrapped_rows.items()} == \
        {n: r["nonzeros"] for n, r in rows.items()}
    assert wrapped_rows["conv2"]["wrapped"] and not wrapped_rows["conv1"]["wrapped"]

    table = pruning.format_sparsity_report(report)
    conv2_line = next(line for line in table.splitlines() if line.startswith("conv2"))
    assert "Conv2D" in conv2_line and f"{rows['conv2']['nonzeros']:,}" in conv2_line
    assert f"{100 * rows['conv2']['sparsity']:.1f}%" in conv2_line
    assert table.splitlines()[-1].startswith("total")


def test_strip_keeps_layer_names_weight_shapes_and_outputs(polynomial_run):
    baseline, before, pruned, stripped = polynomial_run
    assert not pruning.is_pruned_model(stripped)
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in baseline.layers]
    assert [type(layer) for layer in stripped.layers] == [type(layer) for layer in baseline.layers]
    assert [w.shape for w in stripped.weights] == [w.shape for w in baseline.weights]
    assert [w.name for w in stripped.weights] == [w.name for w in baseline.weights]
    x = _data((28, 28, 1), 10, seed=1)[0][:8]
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-5)
    # prune() copied the weights: training the pruned model left the baseline alone.
    for now, then in zip(baseline.get_weights(), before):
        np.testing.assert_array_equal(now, then)
    # The stripped model shares no variables with the pruned one.
    pruned_ids = {id(w) for w in pruned.weights}
    assert not any(id(w) in pruned_ids for w in stripped.weights)


# ------------------------------------------------------------------ forgotten callback


def test_fit_without_the_callback_prunes_on_schedule():
    data = _data((16,), 4)
    # TFMOT alone fails at the first batch when UpdatePruningStep is missing...
    raw = tfmot.sparsity.keras.prune_low_magnitude(_dense_model())
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
        _fit(raw, data, epochs=1)
    # ...tfcompress starts the step counters itself, so plain fit prunes.
    pruned = pruning.prune(_dense_model(), PruningConfig(schedule=_polynomial_to(0.75)),
                           steps_per_epoch=STEPS_PER_EPOCH)
    _fit(pruned, data, epochs=3)  # no callbacks
    wrapper = pruned.get_layer("prune_low_magnitude_d2")
    assert int(wrapper.pruning_step.numpy()) == 3 * STEPS_PER_EPOCH
    mask = wrapper.pruning_vars[0][1].numpy()
    assert abs(np.mean(mask == 0) - 0.75) <= 0.01
    # Without the epoch-end re-mask the last optimizer step left small values
    # in the pruned places; strip_pruning applies the mask, TFMOT's does not.
    assert np.mean(tfmot.sparsity.keras.strip_pruning(pruned).get_layer("d2").kernel.numpy()
                   == 0) < 0.5
    stripped = pruning.strip_pruning(pruned)
    assert abs(_sparsity(stripped, "d2") - 0.75) <= 0.01
    np.testing.assert_array_equal(stripped.get_layer("d2").kernel.numpy() == 0, mask == 0)


def _zero_smallest(model, layer, fraction):
    kernel = model.get_layer(layer).kernel
    values = kernel.numpy()
    values[np.abs(values) <= np.quantile(np.abs(values), fraction)] = 0
    kernel.assign(values)
    return values == 0


def test_an_already_sparse_layer_continues_from_its_sparsity():
    """A second pruning step (85% then 93% in the demo) must not let pruned weights grow back."""
    data = _data((16,), 4)
    schedule = schedules.PolynomialDecay(0.8, begin_epoch=0, end_epoch=2)  # frequency capped: 6
    # TFMOT's own wrapper starts with an all-ones mask: the zeros grow back at once.
    raw_model = _dense_model()
    _zero_smallest(raw_model, "d2", 0.6)
    raw = tfmot.sparsity.keras.prune_low_magnitude(
        raw_model, pruning_schedule=schedule.to_tfmot(STEPS_PER_EPOCH))
    _fit(raw, data, epochs=1, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    assert np.mean(raw.get_layer("prune_low_magnitude_d2").layer.kernel.numpy() == 0) < 0.3

    model = _dense_model()
    zeros = _zero_smallest(model, "d2", 0.6)
    pruned = pruning.prune(model, PruningConfig(schedule=schedule), steps_per_epoch=STEPS_PER_EPOCH)
    wrapper = pruned.get_layer("prune_low_magnitude_d2")
    assert wrapper.pruning_schedule.initial_sparsity == pytest.approx(0.6, abs=0.01)
    _fit(pruned, data, epochs=1)  # 3 steps, before the schedule's first mask update (step 6)
    assert np.all(wrapper.pruning_vars[0][1].numpy()[zeros] == 0)
    assert np.all(pruning.strip_pruning(pruned).get_layer("d2").kernel.numpy()[zeros] == 0)
    _fit(pruned, data, epochs=3, initial_epoch=1, compile=False)
    stripped = pruning.strip_pruning(pruned)
    assert _sparsity(stripped, "d2") == pytest.approx(0.8, abs=0.01)
    assert np.all(stripped.get_layer("d2").kernel.numpy()[zeros] == 0)
    # A dense layer still ramps from 0.
    assert pruning.prune(_dense_model(), PruningConfig(schedule=schedule),
                         steps_per_epoch=STEPS_PER_EPOCH).get_layer(
        "prune_low_magnitude_d2").pruning_schedule.initial_sparsity == 0


# ---------------------------------------------------------------------------- 2:4


def _tflite_layout(kernel):
    """Keras kernel -> TFLite layout: Conv2D HWIO -> OHWI, Dense [in, out] -> [out, in]."""
    return kernel.transpose(3, 0, 1, 2) if kernel.ndim == 4 else kernel.T


def _zeros_per_group_of_4(kernel_tflite):
    """Zeros in each run of 4 consecutive weights along the innermost (input) axis."""
    assert kernel_tflite.shape[-1] % 4 == 0  # whole groups only in this model
    return np.sum(kernel_tflite.reshape(-1, 4) == 0, axis=1)


def _tflite_kernels(tflite_bytes):
    """{layer name: constant kernel} of the CONV_2D / FULLY_CONNECTED ops."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=tflite_bytes)
    interpreter.allocate_tensors()
    kernels = {}
    for detail in interpreter.get_tensor_details():
        parts = detail["name"].split("/")
        if ";" not in detail["name"] and parts[-1] in ("Conv2D", "MatMul"):
            kernels[parts[-2]] = interpreter.get_tensor(detail["index"])
    return kernels


def test_2_4_structure_holds_in_keras_and_in_the_tflite_file():
    from tflite_export.convert import convert
    config = PruningConfig(structure="2:4", include=["conv2", "conv3", "classifier"])
    assert config.sparsity == 0.5
    pruned = pruning.prune(_small_cnn(), config)
    _fit(pruned, _data((28, 28, 1), 10), epochs=1, callbacks=pruning.pruning_callbacks())
    stripped = pruning.strip_pruning(pruned)

    keras_kernels = {name: stripped.get_layer(name).kernel.numpy()
                     for name in ("conv2", "conv3", "classifier")}
    for name, kernel in keras_kernels.items():
        zeros = _zeros_per_group_of_4(_tflite_layout(kernel))
        assert zeros.min() >= 2, name
        assert np.mean(kernel == 0) == 0.5, name  # input axes are multiples of 4
    rows = _rows(pruning.sparsity_report(stripped, structure="2:4"))
    assert all(rows[name]["structure_ok"] for name in keras_kernels)
    dense_rows = _rows(pruning.sparsity_report(_small_cnn(), structure="2:4"))
    assert dense_rows["conv2"]["structure_ok"] is False
    # conv1 has 1 input channel: each group is 1 weight and 3 places of
    # padding, which count as zeros (as in TFMOT), so any conv1 passes.
    assert dense_rows["conv1"]["structure_ok"] is True
    assert all(r["structure"] == "2:4" and r["structure_ok"]
               for r in pruning.sparsity_report(pruned)["layers"] if r["wrapped"])

    tflite_kernels = _tflite_kernels(convert(stripped, "float32"))
    for name, kernel in keras_kernels.items():
        tflite = tflite_kernels[name]
        assert tflite.shape == _tflite_layout(kernel).shape, name
        # BatchNorm is folded into the conv kernels (scaled per output
        # channel), so compare where the zeros are, not the values.
        np.testing.assert_array_equal(tflite == 0, _tflite_layout(kernel) == 0)
        assert _zeros_per_group_of_4(tflite).min() >= 2, name


def test_block_structure_prunes_whole_blocks():
    config = PruningConfig(0.5, schedule=_polynomial_to(0.5, end_epoch=1), structure=(1, 4),
                           include=["Dense"])
    # d3's kernel (32, 4) is one block wide: TFMOT would fail at the first step.
    with pytest.raises(PruningError, match=r"'d3' \(Dense\).*\(32, 4\).*two 1x4 blocks"):
        pruning.prune(_dense_model(), config, steps_per_epoch=STEPS_PER_EPOCH)
    config = dataclasses.replace(config, exclude=["d3"])
    pruned = pruning.prune(_dense_model(), config, steps_per_epoch=STEPS_PER_EPOCH)
    assert _wrapped(pruned) == ["d1", "d2"]
    _fit(pruned, _data((16,), 4), epochs=1, callbacks=pruning.pruning_callbacks())
    stripped = pruning.strip_pruning(pruned)
    for name in ("d1", "d2"):
        kernel = stripped.get_layer(name).kernel.numpy()
        blocks = (kernel == 0).reshape(kernel.shape[0], -1, 4)  # 1 input x 4 outputs
        assert np.all(blocks.all(axis=2) == blocks.any(axis=2)), name
        assert abs(np.mean(kernel == 0) - 0.5) <= 0.01, name
    rows = _rows(pruning.sparsity_report(stripped, structure="1x4"))
    assert rows["d1"]["structure_ok"] and rows["d2"]["structure_ok"]


def test_structure_checks_on_hand_made_kernels():
    # Dense [in, out] = [8, 2]: groups run down the input axis (columns here).
    kernel = np.ones((8, 2), np.float32)
    kernel[[0, 1, 4, 6], 0] = 0
    kernel[[2, 3, 5, 7], 1] = 0
    assert pruning.satisfies_m_by_n(kernel, (2, 4)) is True
    kernel[1, 0] = 1  # first group of column 0 now has 1 zero
    assert pruning.satisfies_m_by_n(kernel, (2, 4)) is False
    # Conv2D [kh, kw, in, out]: the same along `in`; a last group of 2 with
    # 0 zeros passes, its 2 missing places count as zeros (TFMOT pads).
    conv = np.ones((1, 1, 6, 1), np.float32)
    conv[0, 0, [0, 1], 0] = 0
    assert pruning.satisfies_m_by_n(conv, (2, 4)) is True
    assert pruning.satisfies_m_by_n(np.ones((3, 3, 3)), (2, 4)) is None  # Conv1D-like
    # Blocks of 1 x 4 on [in, out] = [2, 6]: the edge block is 1 x 2.
    blocks = np.ones((2, 6), np.float32)
    blocks[0, 0:4] = 0
    blocks[1, 4:6] = 0
    assert pruning.satisfies_blocks(blocks, (1, 4)) is True
    blocks[1, 0] = 0
    assert pruning.satisfies_blocks(blocks, (1, 4)) is False


# ---------------------------------------------------------------------- save / load


def test_pruned_model_saves_loads_and_continues_training(tmp_path):
    data = _data((16,), 4)
    config = PruningConfig(schedule=_polynomial_to(0.8, end_epoch=3))
    pruned = pruning.prune(_dense_model(), config, steps_per_epoch=STEPS_PER_EPOCH)
    _fit(pruned, data, epochs=1, callbacks=pruning.pruning_callbacks())
    path = tfcompress.save_model(pruned, tmp_path / "pruned.keras")

    loaded = pruning.load_pruned_model(path)
    before, after = pruned.get_layer("prune_low_magnitude_d2"), \
        loaded.get_layer("prune_low_magnitude_d2")
    assert int(after.pruning_step.numpy()) == STEPS_PER_EPOCH
    assert 0 < np.mean(after.pruning_vars[0][1].numpy() == 0) < 0.8  # mid-schedule
    for a, b in zip(before.weights, after.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(loaded.optimizer.iterations.numpy()) == STEPS_PER_EPOCH
    # TFMOT's own scope reads the same file.
    with tfmot.sparsity.keras.prune_scope():
        assert pruning.is_pruned_model(keras.models.load_model(path))

    _fit(loaded, data, epochs=4, initial_epoch=1, compile=False,
         callbacks=pruning.pruning_callbacks())
    assert int(after.pruning_step.numpy()) == 4 * STEPS_PER_EPOCH
    stripped = pruning.strip_pruning(loaded)
    assert abs(_sparsity(stripped, "d2") - 0.8) <= 0.01

    # The stripped model is plain Keras: no custom objects needed.
    plain = tfcompress.load_model(tfcompress.save_model(stripped, tmp_path / "final.keras"))
    assert not pruning.is_pruned_model(plain)
    np.testing.assert_array_equal(plain.get_layer("d2").kernel.numpy(),
                                  stripped.get_layer("d2").kernel.numpy())


def test_2_4_setting_survives_save_and_load(tmp_path):
    # TFMOT 0.8.1's get_config drops sparsity_m_by_n; the reloaded wrapper
    # would prune unstructured.
    pruned = pruning.prune(_dense_model(), PruningConfig(structure="2:4"))
    path = tfcompress.save_model(pruned, tmp_path / "pruned.h5")
    layer = pruning.load_pruned_model(path).get_layer("prune_low_magnitude_d2")
    assert layer.sparsity_m_by_n == (2, 4)
    assert int(layer.pruning_step.numpy()) == 0  # counters started: fit works without callback


# ------------------------------------------------------------------- layer selection


def test_layers_are_chosen_by_name_regex_type_and_exclusion():
    model = _small_cnn()
    steps = dict(steps_per_epoch=STEPS_PER_EPOCH, total_epochs=2)
    assert _wrapped(pruning.prune(model, PruningConfig(), **steps)) == ["conv2", "conv3"]
    assert _wrapped(pruning.prune(model, PruningConfig(skip_first_and_last=False), **steps)) == \
        ["classifier", "conv1", "conv2", "conv3"]
    # include is exactly what is pruned: the type pattern brings conv1 back.
    assert _wrapped(pruning.prune(model, PruningConfig(include=[keras.layers.Conv2D]),
                                  **steps)) == ["conv1", "conv2", "conv3"]
    assert _wrapped(pruning.prune(model, PruningConfig(include="Conv2D", exclude="conv1"),
                                  **steps)) == ["conv2", "conv3"]
    assert _wrapped(pruning.prune(model, PruningConfig(include=["conv[23]", "classifier"]),
                                  **steps)) == ["classifier", "conv2", "conv3"]
    pruned = pruning.prune(model, PruningConfig(0.7, include=["conv.*"],
                                                per_layer={"conv1": 0.3, "Conv2D": 0.6}),
                           **steps)
    finals = {layer.layer.name: layer.pruning_schedule.final_sparsity
              for layer in pruned.layers if isinstance(layer, pruning.PruneLowMagnitude)}
    assert finals == {"conv1": 0.3, "conv2": 0.6, "conv3": 0.6}  # first matching key wins


@pytest.mark.parametrize("name, input_shape, options", [
    ("resnet8", (32, 32, 3), {}),
    ("ds_cnn", (49, 10, 1), {}),                      # depthwise convs: nothing to prune
    ("mobilenet_v2", (28, 28, 1), {"alpha": 0.35}),   # Resizing, DepthwiseConv2D, ZeroPadding
])
def test_zoo_models_prune_with_the_defaults(name, input_shape, options):
    model = models.get_model(name, input_shape, 10, **options)
    kernels = [layer.name for layer in model.layers
               if type(layer) in (keras.layers.Conv2D, keras.layers.Dense)]
    pruned = pruning.prune(model, PruningConfig(schedule="constant"))
    # Every Conv2D and Dense but the stem and the classifier, and nothing else.
    assert _wrapped(pruned) == sorted(kernels[1:-1])
    assert kernels[-1] == "predictions" if name == "mobilenet_v2" else "classifier"
    assert [layer.name for layer in pruning.strip_pruning(pruned).layers] == \
        [layer.name for layer in model.layers]


def test_nested_models_are_pruned_inside():
    inner_inputs = keras.Input((32,))
    x = keras.layers.Dense(32, name="inner_a")(inner_inputs)
    block = keras.Model(inner_inputs, keras.layers.Dense(32, name="inner_b")(x), name="block")
    inputs = keras.Input((16,))
    x = block(keras.layers.Dense(32, name="d1")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, name="d3")(x))
    pruned = pruning.prune(model, PruningConfig(schedule="constant"))
    assert _wrapped(pruned.get_layer("block")) == ["inner_a", "inner_b"]
    assert [row["layer"] for row in pruning.sparsity_report(pruned)["layers"]] == \
        ["d1", "inner_a", "inner_b", "d3"]
    stripped = pruning.strip_pruning(pruned)
    assert [layer.name for layer in stripped.get_layer("block").layers] == \
        [layer.name for layer in block.layers]
    assert [w.shape for w in stripped.weights] == [w.shape for w in model.weights]


def _xnnpack_model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid", name="stem")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 1, name="expand")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def test_xnnpack_policy_prunes_only_1x1_convolutions():
    config = PruningConfig(schedule="constant", policy="xnnpack", skip_first_and_last=False)
    assert _wrapped(pruning.prune(_xnnpack_model(), config)) == ["expand"]
    with pytest.raises(PruningError, match="xnnpack.*ZeroPadding2D"):
        pruning.prune(_small_cnn(), config)


# ------------------------------------------------------------------------- errors


class Scale(keras.layers.Layer):
    """A custom layer with a weight TFMOT knows nothing about."""

    def build(self, input_shape):
        self.scale = self.add_weight("scale", shape=input_shape[-1:], initializer="ones")

    def call(self, inputs):
        return inputs * self.scale


class PrunableScale(Scale, tfmot.sparsity.keras.PrunableLayer):
    def get_prunable_weights(self):
        return [self.scale]


def _with(layer):
    inputs = keras.Input((16,))
    x = keras.layers.Dense(32, name="d1")(inputs)
    x = keras.layers.Dense(32, name="d2")(x)
    x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="d3")(x))


def test_custom_layers_need_prunable_layer_or_exclusion():
    constant = dict(schedule="constant")
    with pytest.raises(PruningError, match=r"'scale' \(Scale\).*PrunableLayer.*"
                                           r"exclude=\['scale'\]"):
        pruning.prune(_with(Scale(name="scale")), PruningConfig(**constant))
    excluded = PruningConfig(exclude=["scale"], **constant)
    assert _wrapped(pruning.prune(_with(Scale(name="scale")), excluded)) == ["d2"]
    included = PruningConfig(include=["d2", "scale"], **constant)
    assert _wrapped(pruning.prune(_with(PrunableScale(name="scale")), included)) == \
        ["d2", "scale"]


def test_subclassed_model_is_refused_with_what_to_do():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, inputs):
            return self.dense(inputs)

    net = Net()
    net(np.zeros((1, 16), np.float32))
    with pytest.raises(PruningError, match="Net is a subclassed model.*functional"):
        pruning.prune(net, PruningConfig(schedule="constant"))


@pytest.mark.parametrize("config, message", [
    (dict(include=["bn2"]), r"'bn2' \(BatchNormalization\) has no weights TFMOT can prune"),
    (dict(include=["conv9"]), "include entry 'conv9' matches no layer.*conv1, bn1"),
    (dict(include=["bn.*"]), "include entry 'bn.\\*' matches no layer with weights"),
    (dict(exclude=["dense"]), "exclude entry 'dense' matches no layer"),
    (dict(per_layer={"conv1": 0.3}), "per_layer entry 'conv1'.*skip_first_and_last"),
    (dict(structure=(1, 4)), r"'conv2' \(Conv2D\) has \[4\]-D kernels.*include=\['Dense'\]"),
    (dict(include=["dropout"]), r"'dropout' \(Dropout\) has no weights"),
])
def test_selection_errors_name_the_layer_and_the_fix(config, message):
    config = PruningConfig(**dict(dict(schedule="constant"), **config))
    with pytest.raises(PruningError, match=message):
        pruning.prune(_small_cnn(), config)


def test_an_already_pruned_model_is_refused():
    pruned = pruning.prune(_dense_model(), PruningConfig(schedule="constant"))
    with pytest.raises(PruningError, match="already pruned; strip_pruning it first"):
        pruning.prune(pruned, PruningConfig(schedule="constant"))


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_sparsity=1.0), "target_sparsity must be a number in \\[0, 1\\)"),
    (dict(structure="4:2"), "0 < M < N"),
    (dict(structure="2-4"), "not 'M:N'"),
    (dict(structure="2:4", target_sparsity=0.3), "contradicts structure '2:4'"),
    (dict(structure="2:4", schedule="polynomial"), "schedule must be unset"),
    (dict(target_sparsity=0.8, schedule=schedules.ConstantSparsity(0.5)), "contradicts"),
    (dict(per_layer={"conv2": 1.5}), "per_layer\\['conv2'\\]"),
    (dict(include=[3]), "include: 3 is not a layer name"),
    (dict(exclude=["("]), "exclude"),
    (dict(policy="gpu"), "unknown policy 'gpu'"),
    (dict(block_pooling="SUM"), "block_pooling"),
    (dict(schedule="exponential"), "unknown pruning schedule 'exponential'"),
])
def test_config_validates_in_the_constructor(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_config_fills_sparsities_and_keeps_fields_replaceable():
    config = PruningConfig(0.8)
    assert config.schedule is None and config.sparsity == 0.8
    assert config.layer_schedule() == schedules.PolynomialDecay(0.8)
    assert dataclasses.replace(config, target_sparsity=0.9).sparsity == 0.9
    assert PruningConfig().sparsity == 0.5
    assert PruningConfig(schedule=schedules.ConstantSparsity(0.6)).sparsity == 0.6
    assert PruningConfig(structure="1:4").sparsity == 0.25
    assert PruningConfig(structure=" 1 X 8 ").structure == "1x8"
    assert PruningConfig(structure=(1, 1)).structure is None  # a 1x1 block is unstructured
    # The default schedule is stated as a fraction of training: prune says what it needs.
    with pytest.raises(ValueError, match="steps_per_epoch"):
        pruning.prune(_dense_model(), PruningConfig(0.8))
    pruned = pruning.prune(_dense_model(), {"target_sparsity": 0.8}, steps_per_epoch=10,
                           total_epochs=4)
    schedule = pruned.get_layer("prune_low_magnitude_d2").pruning_schedule
    assert (schedule.begin_step, schedule.end_step, schedule.final_sparsity) == (0, 30, 0.8)
