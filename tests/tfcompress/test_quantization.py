"""Quantization-aware training: schemes, unsupported layers, the custom-layer hook,
conversion to full-integer TFLite, and saving."""

import re
import warnings

import numpy as np
import pytest

import models
import tfcompress
from tfcompress import pruning, quantization, schedules
from tfcompress.errors import TfcompressError
from tfcompress.keras import keras
from tfcompress.quantization import QATConfig, QuantizationError
from tflite_export.convert import ExportError, convert
from tflite_export.evaluate import compare_with_keras
from tflite_export.inspect import inspect_tflite
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)

L = keras.layers


def _fit(model, x, y, lr=1e-3, epochs=1, batch=64):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    return model


def _random(shape, classes, n=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, classes, n)


def _conv_net(bn=False, name="net"):
    """conv (+BN) -> relu -> conv -> dense on 12x12x3: small, every layer QAT-able."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, use_bias=not bn, name="c1")(inputs)
    if bn:
        x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="r1")(x)
    x = L.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = L.Flatten(name="f")(x)
    return keras.Model(inputs, L.Dense(4, activation="softmax", name="d")(x), name=name)


@pytest.fixture(scope="module")
def fmnist_qat(fashion_mnist):
    """A float small_cnn trained briefly on real Fashion-MNIST, and its QAT fine-tune."""
    ds = fashion_mnist
    keras.utils.set_random_seed(0)
    model = models.get_model("small_cnn", ds.input_shape, ds.num_classes, width=8)
    _fit(model, ds.x_train[:4000], ds.y_train[:4000], lr=3e-3, batch=128)
    before = [w.copy() for w in model.get_weights()]
    qat = _fit(quantization.quantize(model), ds.x_train[4000:5000], ds.y_train[4000:5000],
               lr=1e-4, batch=128)
    return model, before, qat


# ----------------------------------------------------------------- full-integer TFLite


def test_qat_int8_full_is_integer_only_and_agrees_with_keras(fmnist_qat, fashion_mnist):
    _, _, qat = fmnist_qat
    data = convert(qat, "int8_full")  # no representative dataset
    info = inspect_tflite(data)
    assert info["is_full_integer"]
    assert [t["dtype"] for t in info["inputs"] + info["outputs"]] == ["INT8", "INT8"]
    assert set(info["tensor_dtypes"]) <= {"INT8", "INT32"}
    # BatchNorm folded into the convs: three CONV_2D, no arithmetic left over.
    ops = {row["op"]: row["count"] for row in info["ops"]}
    assert ops["CONV_2D"] == 3 and not {"MUL", "ADD", "DEQUANTIZE"} & set(ops)
    agreement = compare_with_keras(data, qat, fashion_mnist.x_test[:500])["top1_agreement"]
    print(f"\nQAT Keras vs int8_full TFLite top-1 agreement: {agreement:.3f}")
    assert agreement >= 0.98


def test_qat_conversion_uses_trained_ranges_not_calibration(fmnist_qat, fashion_mnist):
    # The converter recalibrates whenever it is given a representative dataset;
    # convert must not hand it one for a QAT model, so the files are identical.
    _, _, qat = fmnist_qat
    plain = convert(qat, "int8")
    calibrated = convert(qat, "int8", representative_data=fashion_mnist.x_train[:20] * 3.0)
    assert plain == calibrated


def test_quantize_leaves_the_original_alone(fmnist_qat):
    model, before, qat = fmnist_qat
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert {"quant_conv1", "quant_bn1", "quant_classifier"} <= {layer.name for layer in qat.layers}
    assert quantization.is_qat_model(qat) and not quantization.is_qat_model(model)


# ------------------------------------------------------------------------- schemes


@pytest.fixture(scope="module")
def pruned_net():
    """_conv_net with c1, c2 and d pruned to 50% and stripped."""
    model = _conv_net()
    x, y = _random((12, 12, 3), 4)
    wrapped = pruning.prune(model, pruning.PruningConfig(
        0.5, schedule=schedules.get("constant"), include=["c1", "c2", "d"]), steps_per_epoch=2)
    wrapped.compile("adam", "sparse_categorical_crossentropy")
    wrapped.fit(x, y, batch_size=64, verbose=0, callbacks=pruning.pruning_callbacks())
    return pruning.strip_pruning(wrapped)


def _zero_masks(model):
    return {name: model.get_layer(name).kernel.numpy() == 0 for name in ("c1", "c2", "d")}


def _tflite_zeros_kept(data, masks):
    kernels = {k["layer"]: k for k in quantization.tflite_kernels(data)}
    kept = {}
    for name, mask in masks.items():
        kernel = kernels[name]
        assert kernel["dtype"] == "INT8" and not any(kernel["zero_points"])
        kept[name] = bool(np.all(kernel["values"][mask] == 0))
    return kept


def test_prune_preserving_keeps_zeros_in_the_int8_file(pruned_net):
    masks = _zero_masks(pruned_net)
    assert all(0.45 < m.mean() < 0.55 for m in masks.values())
    x, y = _random((12, 12, 3), 4, seed=1)
    results = {}
    for scheme in ("prune_preserving", "default"):
        # A high learning rate moves every trainable weight it can.
        qat = _fit(quantization.quantize(pruned_net, QATConfig(scheme=scheme)), x, y, lr=0.05)
        results[scheme] = _tflite_zeros_kept(convert(qat, "int8_full"), masks)
    # c1 feeds a ReLU layer: stock TFMOT would not mask it (see _LayerReLUQuantize).
    assert results["prune_preserving"] == {"c1": True, "c2": True, "d": True}
    # The check can fail: plain QAT lets the pruned weights grow back.
    assert results["default"] == {"c1": False, "c2": False, "d": False}


def test_prune_preserving_masks_survive_save_and_load(pruned_net, tmp_path):
    masks = _zero_masks(pruned_net)
    x, y = _random((12, 12, 3), 4, seed=2)
    qat = quantization.quantize(pruned_net, QATConfig(scheme="prune_preserving"))
    path = tfcompress.save_model(qat, str(tmp_path / "pqat.keras"))
    loaded = _fit(quantization.load_qat_model(path), x, y, lr=0.05)
    for name, mask in masks.items():
        kernel = next(k for k in quantization.quantized_kernels(loaded) if k["layer"] == name)
        assert np.all(kernel["values"][mask] == 0), name


def test_prune_preserving_needs_zeros():
    with pytest.raises(QuantizationError, match="no Conv2D or Dense kernel .* has any"):
        quantization.quantize(_conv_net(), QATConfig(scheme="prune_preserving"))


def test_wrapped_models_are_refused_with_the_fix():
    model = _conv_net()
    wrapped = pruning.prune(model, pruning.PruningConfig(
        0.5, schedule=schedules.get("constant"), include=["c2"]), steps_per_epoch=1)
    with pytest.raises(QuantizationError, match="strip_pruning it first"):
        quantization.quantize(wrapped)
    with pytest.raises(QuantizationError, match="already quantization-aware"):
        quantization.quantize(quantization.quantize(model))


def test_per_tensor_gives_one_scale_per_kernel():
    # c1 feeds a ReLU layer: TFMOT alone would not quantize its weights at all, and
    # the converter would give it per-channel scales anyway (see _LayerReLUQuantize).
    model = _conv_net()
    scales = {}
    for per_tensor in (False, True):
        qat = quantization.quantize(model, QATConfig(per_tensor=per_tensor))
        assert [k["layer"] for k in quantization.quantized_kernels(qat)] == ["c1", "c2", "d"]
        scales[per_tensor] = {k["layer"]: len(k["scales"])
                              for k in quantization.tflite_kernels(convert(qat, "int8_full"))}
    assert scales[False] == {"c1": 8, "c2": 8, "d": 1}
    assert scales[True] == {"c1": 1, "c2": 1, "d": 1}


def test_per_tensor_conv_batchnorm_stays_float_and_int8_full_says_so():
    model = _conv_net(bn=True)
    with pytest.warns(UserWarning, match=r"'c1' \(Conv2D\) is followed by BatchNormalization"):
        qat = quantization.quantize(model, QATConfig(per_tensor=True))
    with pytest.raises(ExportError, match=r"float tensors .*c1"):
        convert(qat, "int8_full")
    with warnings.catch_warnings():  # per-channel: folded and int8, no warning
        warnings.simplefilter("error")
        assert inspect_tflite(convert(quantization.quantize(model), "int8_full"))[
            "is_full_integer"]


# ------------------------------------------------------------ unsupported layers


def _unsupported_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 3))
    x = L.Normalization(mean=0.5, variance=0.25, name="scale")(inputs)
    x = L.Conv1D(4, 3, name="conv1d")(x)
    x = L.LayerNormalization(name="norm")(x)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    x = x + 3.0  # a TFOpLambda layer, named tf.__operators__.add or add_N
    x = L.Flatten(name="flat")(x)
    return keras.Model(inputs, L.Dense(2, name="head")(x), name="odd")


def test_unsupported_layers_are_all_named_with_the_ways_out():
    model = _unsupported_model()
    with pytest.raises(QuantizationError) as info:
        quantization.quantize(model)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TfcompressError)
    for name, kind in [("scale", "Normalization"), ("conv1d", "Conv1D"),
                       ("norm", "LayerNormalization"), ("double", "Lambda")]:
        assert f"'{name}' ({kind})" in message
    assert re.search(r"'tf\.__operators__\.add(_\d+)?' \(TFOpLambda\)", message)
    assert "'head'" not in message and "'flat'" not in message
    assert re.search(r"exclude_layers=\['scale', 'conv1d', 'norm', 'double', "
                     r"'tf\.__operators__\.add(_\d+)?'\]", message)
    assert "quantize_configs" in message and "register_quantize_config" in message
    assert "is not supported. You can quantize" not in message  # TFMOT's own text


def test_rescaling_inside_quantizes_its_output_and_converts_full_integer():
    """TFMOT has no config for Rescaling; its output is quantized like an activation's."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = L.Rescaling(1 / 255, name="pixels")(inputs)
    x = L.Conv2D(4, 3, activation="relu", name="c1")(x)
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="d")(L.Flatten()(x)))
    qat = quantization.quantize(model)
    assert "quant_pixels" in [layer.name for layer in qat.layers]
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype(np.float32)
    flatbuffer = convert(qat, "int8_full")
    from tflite_export.inspect import inspect_tflite
    assert inspect_tflite(flatbuffer)["is_full_integer"]
    agreement = compare_with_keras(flatbuffer, qat, x)
    assert agreement["max_abs_diff"] < 0.05  # probabilities, int8 steps of 1/256


def test_mobile_blocks_quantize_and_convert_full_integer():
    """MobileNet preprocessing Rescaling(1/127.5, -1), hard-swish, a squeeze-and-excite
    Multiply gate: TFMOT 0.8.1 refuses all three; tfcompress's built-in configs take them,
    and the Rescaling is split so its MUL and ADD each have a learned range."""
    from tfcompress.activations import hard_sigmoid, hard_swish
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Rescaling(1 / 127.5, -1.0, name="preprocess")(inputs)
    x = L.Conv2D(8, 3, padding="same", name="c1")(x)
    x = L.Activation(hard_swish, name="hswish")(x)
    gate = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    gate = L.Conv2D(8, 1, name="excite")(gate)
    # MobileNetV3's hard sigmoid: relu6(x + 3) / 6 as three layers.
    gate = L.ReLU(6.0)(L.Rescaling(1.0, 3.0, name="plus3")(gate))
    gate = L.Rescaling(1 / 6, name="sixth")(gate)
    x = L.Multiply(name="se")([x, gate])
    model = keras.Model(inputs, L.Dense(3, name="d")(L.GlobalAveragePooling2D()(x)))
    qat = quantization.quantize(model)
    names = [layer.name for layer in qat.layers]
    assert {"quant_preprocess", "quant_preprocess_offset", "quant_hswish", "quant_plus3",
            "quant_sixth", "quant_se"} <= set(names)
    x = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(qat(x), model(x), atol=0.5)  # fake quantization only
    flatbuffer = convert(qat, "int8_full")
    info = inspect_tflite(flatbuffer)
    assert info["is_full_integer"]
    assert compare_with_keras(flatbuffer, qat, x)["max_abs_diff"] < 0.1
    # An Activation(hard_sigmoid) would be ADD, RELU6 and MUL with no ranges between: named.
    sig = keras.Model(inputs, L.Activation(hard_sigmoid, name="hsig")(L.Flatten()(inputs)))
    with pytest.raises(QuantizationError, match=r"'hsig' \(Activation\): its activation "
                                                r"'hard_sigmoid' is not one TFMOT quantizes"):
        quantization.quantize(sig)


def test_excluded_layers_stay_float_and_convert_in_int8_mode():
    model = _unsupported_model()
    qat = quantization.quantize(model, QATConfig(
        exclude_layers=["scale", "double"],
        exclude_types=["Conv1D", L.LayerNormalization, "TFOpLambda"]))
    assert [layer.name for layer in qat.layers if layer.name.startswith("quant_")] == \
        ["quant_flat", "quant_head"]
    x = np.random.default_rng(0).random((4, 16, 3), dtype=np.float32)
    assert compare_with_keras(convert(qat, "int8"), qat, x)["max_abs_diff"] < 0.5
    with pytest.raises(ExportError, match="float tensors"):
        convert(qat, "int8_full")


def test_batchnorm_not_after_a_conv_is_named():
    inputs = keras.Input((8, 8, 2))
    x = L.MaxPooling2D(name="pool")(inputs)
    x = L.BatchNormalization(name="lonely_bn")(x)
    model = keras.Model(inputs, L.Dense(2, name="d")(L.Flatten()(x)))
    with pytest.raises(QuantizationError, match=r"'lonely_bn' \(BatchNormalization\): a "
                                                r"BatchNormalization that TFMOT quantizes only"):
        quantization.quantize(model)
    # Excluding the conv before a BN leaves that BN unsupported too.
    with pytest.raises(QuantizationError, match=r"'bn' \(BatchNormalization\)"):
        quantization.quantize(_conv_net(bn=True), QATConfig(exclude_layers=["c1"]))


def test_unsupported_activation_inside_a_layer_is_named():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3, activation="elu", name="elu_dense")(inputs))
    with pytest.raises(QuantizationError, match=r"'elu_dense' \(Dense\): its activation 'elu'"):
        quantization.quantize(model)


# ------------------------------------------------------------------ custom layers


class Scale(L.Layer):
    """y = x * w per channel: a layer TFMOT has never heard of."""

    def build(self, input_shape):
        self.w = self.add_weight("w", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


class ScaleQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes Scale's weight and its output to 8 bits."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.w, tfmot.quantization.keras.quantizers.LastValueQuantizer(
            num_bits=8, symmetric=True, narrow_range=False, per_axis=False))]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.w = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


def _scale_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = Scale(name="scale")(L.Dense(6, name="d1")(inputs))
    return keras.Model(inputs, L.Dense(2, name="d2")(x))


def test_custom_layer_needs_a_config_and_takes_one_by_name_or_class():
    model = _scale_model()
    with pytest.raises(QuantizationError, match=r"'scale' \(Scale\): no QuantizeConfig"):
        quantization.quantize(model)
    by_name = quantization.quantize(
        model, QATConfig(quantize_configs={"scale": ScaleQuantizeConfig()}))
    assert isinstance(by_name.get_layer("quant_scale").quantize_config, ScaleQuantizeConfig)
    quantization.register_quantize_config(Scale, ScaleQuantizeConfig())
    try:
        qat = quantization.quantize(model)
    finally:
        quantization.unregister_quantize_config(Scale)
    assert isinstance(qat.get_layer("quant_scale").quantize_config, ScaleQuantizeConfig)
    x = np.random.default_rng(0).random((64, 6), dtype=np.float32)
    _fit(qat, x, np.zeros(64, int))
    info = inspect_tflite(convert(qat, "int8_full"))
    assert info["is_full_integer"] and any(row["op"] == "MUL" for row in info["ops"])


# --------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, message", [
    ({"scheme": "int4"}, "unknown QAT scheme 'int4'; choose one of default, prune_preserving, "
                         "cluster_preserving, prune_cluster_preserving"),
    ({"per_tensor": "yes"}, "per_tensor must be True or False"),
    ({"exclude_layers": ["("]}, "is not a layer name or regular expression"),
    ({"exclude_types": [int]}, "is not a Keras layer class"),
    ({"quantize_configs": {"d": "8bit"}}, "expected a tfmot.quantization.keras.QuantizeConfig"),
])
def test_bad_config_values_are_refused(kwargs, message):
    with pytest.raises(QuantizationError, match=re.escape(message)):
        QATConfig(**kwargs)


def test_patterns_that_match_nothing_are_refused():
    with pytest.raises(QuantizationError, match="exclude_layers entry 'conv9' matches no layer"):
        quantization.quantize(_conv_net(), QATConfig(exclude_layers=["conv9"]))
    with pytest.raises(QuantizationError, match="quantize_configs key 'nope' matches no layer"):
        quantization.quantize(_conv_net(),
                              QATConfig(quantize_configs={"nope": ScaleQuantizeConfig()}))


# --------------------------------------------------------------------- saving


def test_qat_model_round_trips_through_keras_and_h5_files(tmp_path):
    model = _conv_net(bn=True)
    x, y = _random((12, 12, 3), 4)
    qat = _fit(quantization.quantize(model), x, y)
    want = qat.predict(x, verbose=0)
    for suffix in (".keras", ".h5"):
        path = tfcompress.save_model(qat, str(tmp_path / f"qat{suffix}"))
        loaded = quantization.load_qat_model(path)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
        assert loaded.optimizer is not None  # compiled: fit continues where it stopped


# ------------------------------------------------------------------------ quality


@pytest.mark.slow
def test_qat_int8_is_within_half_a_point_of_float_on_fashion_mnist(tmp_path, fashion_mnist):
    """Issue 5's quality bar, through the interpreter on all 10,000 test images (~10 min)."""
    from benchmarks import bench_qat
    from models.train_lib import TrainConfig, train
    baseline = train(TrainConfig(model="small_cnn", epochs=5, model_dir=str(tmp_path / "float"),
                                 verbose=0), dataset=fashion_mnist)
    report, _, _ = bench_qat.measure(baseline.model, fashion_mnist)
    print(f"\nfloat {report['float_keras_accuracy']:.4f}, "
          f"PTQ int8 {report['ptq_int8_accuracy']:.4f}, QAT int8 {report['qat_int8_accuracy']:.4f}")
    assert report["test_images"] == 10000
    assert report["qat_drop_points"] <= 0.5
