"""Tests of tflite_export.inspect: numbers read from real converted files, checked
against what Keras, the interpreter or a hand calculation says they must be."""

import json
import os

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import models
from tfcompress.keras import keras, tf
from tflite_export.convert import convert
from tflite_export.inspect import (EDGETPU_OPS, edgetpu_report, format_edgetpu,
                                   format_inspection, inspect_tflite)
from tflite_export.tflite_file import TfliteFileError

layers = keras.layers
MNIST_SHAPE = (28, 28, 1)


def _calibration(shape, n=8):
    return np.random.default_rng(0).random((n,) + tuple(shape), dtype=np.float32)


def _fill_nonzero(model, seed=0):
    """Sets every variable to a positive value: the converter drops an all-zero bias
    (FULLY_CONNECTED then has no bias input), which would break exact parameter counts."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in weights])
    return model


def _conv_dense():
    """8x8x3 -> Conv2D(4, 3x3, valid) -> 6x6x4 -> Flatten (144) -> Dense(5)."""
    inputs = keras.Input((8, 8, 3), name="x")
    h = layers.Conv2D(4, 3, name="conv")(inputs)
    h = layers.Flatten(name="flatten")(h)
    return _fill_nonzero(keras.Model(inputs, layers.Dense(5, name="dense")(h)))


@pytest.fixture(scope="module")
def small_cnn():
    return _fill_nonzero(models.get_model("small_cnn", MNIST_SHAPE, 10, width=4))


@pytest.fixture(scope="module")
def small_cnn_tflite(small_cnn):
    """mode -> flatbuffer of the small CNN, converted once per module on first use."""
    cache = {}

    def get(mode, **kwargs):
        key = (mode,) + tuple(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = convert(small_cnn, mode, representative_data=_calibration(MNIST_SHAPE),
                                 **kwargs)
        return cache[key]

    return get


def _check(report, name):
    return next(c for c in report["checks"] if c["check"] == name)


# ----------------------------------------------------------------------------- dtypes

def test_int8_full_has_int8_io_with_the_interpreters_quantization(small_cnn_tflite):
    data = small_cnn_tflite("int8_full")
    info = inspect_tflite(data)
    interpreter = Interpreter(model_content=data)
    for ours, theirs in ((info["inputs"][0], interpreter.get_input_details()[0]),
                         (info["outputs"][0], interpreter.get_output_details()[0])):
        assert ours["dtype"] == "INT8"
        scale, zero_point = theirs["quantization"]
        assert ours["scale"] == [pytest.approx(scale)] and ours["zero_point"] == [zero_point]
        assert ours["shape"] == list(theirs["shape"])
    assert info["is_full_integer"] is True
    assert "FLOAT32" not in info["tensor_dtypes"]


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic", "int8"])
def test_is_full_integer_is_false_where_anything_is_float(small_cnn_tflite, mode):
    info = inspect_tflite(small_cnn_tflite(mode))
    assert info["is_full_integer"] is False
    assert info["tensor_dtypes"].get("FLOAT32", 0) > 0
    # int8 quantizes every op but keeps float I/O: the flag must not look only at ops.
    if mode == "int8":
        assert info["inputs"][0]["dtype"] == "FLOAT32"
        assert info["weight_dtypes"].keys() == {"INT8", "INT32"}


def test_weight_dtypes_follow_the_mode(small_cnn, small_cnn_tflite):
    kernels = [layer.kernel for layer in small_cnn.layers if hasattr(layer, "kernel")]
    n_weights = 2 * len(kernels)  # every kernel gets a bias (BatchNorm folds into one)
    assert inspect_tflite(small_cnn_tflite("float16"))["weight_dtypes"] == {"FLOAT16": n_weights}
    assert inspect_tflite(small_cnn_tflite("float32"))["weight_dtypes"] == {"FLOAT32": n_weights}
    assert inspect_tflite(small_cnn_tflite("int8_full"))["weight_dtypes"] == {
        "INT8": len(kernels), "INT32": len(kernels)}
    # Dynamic range quantizes only kernels of >= 1024 elements (the converter's default
    # threshold); smaller ones and all biases stay float32.
    big = sum(int(np.prod(k.shape)) >= 1024 for k in kernels)
    assert 0 < big < len(kernels)
    assert inspect_tflite(small_cnn_tflite("dynamic"))["weight_dtypes"] == {
        "INT8": big, "FLOAT32": n_weights - big}


# ----------------------------------------------------------------------------- ops, MACs

def test_float32_ops_parameters_and_macs_match_keras(small_cnn, small_cnn_tflite):
    info = inspect_tflite(small_cnn_tflite("float32"))
    ops = {o["op"]: o["count"] for o in info["ops"]}
    convs = [layer for layer in small_cnn.layers if isinstance(layer, layers.Conv2D)]
    dense = [layer for layer in small_cnn.layers if isinstance(layer, layers.Dense)]
    assert ops["CONV_2D"] == len(convs) == 3
    assert ops["FULLY_CONNECTED"] == len(dense) == 1
    assert "BATCH_NORMALIZATION" not in ops and "MUL" not in ops  # folded into the convs
    # Each BatchNorm of C channels (gamma, beta, mean, variance: 4C) folds into the
    # preceding bias-free conv as one bias of C elements.
    bn_channels = sum(layer.gamma.shape[0] for layer in small_cnn.layers
                      if isinstance(layer, layers.BatchNormalization))
    assert info["parameters"] == small_cnn.count_params() - 3 * bn_channels
    # Quantization changes bytes, never element counts.
    assert inspect_tflite(small_cnn_tflite("int8_full"))["parameters"] == info["parameters"]
    expected_macs = sum(int(np.prod(c.output.shape[1:])) * int(np.prod(c.kernel.shape[:3]))
                        for c in convs)
    expected_macs += sum(int(np.prod(d.kernel.shape)) for d in dense)
    assert info["macs"] == expected_macs
    assert info["weight_bytes"] == 4 * info["parameters"]  # float32 weights, no sharing
    assert info["weight_fraction"] == pytest.approx(info["weight_bytes"] / info["file_bytes"])


def test_macs_and_parameters_by_hand_for_one_conv_and_one_dense():
    model = _conv_dense()
    info = inspect_tflite(convert(model, "float32"))
    by_op = {row["op"]: row["macs"] for row in info["macs_by_op"]}
    assert by_op["CONV_2D"] == 6 * 6 * 3 * 3 * 3 * 4  # H_out*W_out*K*K*Cin*Cout = 3888
    assert by_op["FULLY_CONNECTED"] == 144 * 5
    assert info["macs"] == 3888 + 720
    assert info["parameters"] == model.count_params() == 3 * 3 * 3 * 4 + 4 + 144 * 5 + 5


def test_depthwise_macs_by_hand():
    inputs = keras.Input((10, 10, 6))
    outputs = layers.DepthwiseConv2D(3, strides=2, padding="same")(inputs)  # -> 5x5x6
    info = inspect_tflite(convert(_fill_nonzero(keras.Model(inputs, outputs)), "float32"))
    assert info["macs_by_op"] == [{"index": 0, "op": "DEPTHWISE_CONV_2D",
                                   "output": info["outputs"][0]["name"],
                                   "macs": 5 * 5 * 6 * 3 * 3}]


# ----------------------------------------------------------------------------- zeros and sparsity

def _half_zero_kernel(model, layer_name):
    layer = model.get_layer(layer_name)
    kernel, bias = layer.get_weights()
    flat = kernel.reshape(-1).copy()
    flat[: flat.size // 2] = 0.0
    layer.set_weights([flat.reshape(kernel.shape), bias])
    weights = model.get_weights()
    return sum(int(np.sum(w == 0)) for w in weights) / sum(w.size for w in weights)


def test_zero_fraction_is_exact_in_float_and_int8():
    model = _conv_dense()
    expected = _half_zero_kernel(model, "conv")
    assert expected == pytest.approx(54 / 837)
    assert inspect_tflite(convert(model, "float32"))["zero_fraction"] == pytest.approx(expected)
    # Symmetric int8 kernels keep exact zeros at zero point 0; nonzero weights in
    # [0.5, 1.5] never round to 0 with a per-channel scale of max/127.
    int8 = inspect_tflite(convert(model, "int8_full", representative_data=_calibration((8, 8, 3))))
    assert int8["zero_fraction"] == pytest.approx(expected)


def test_sparse_tensors_count_their_dense_shape():
    inputs = keras.Input((64,))
    # The ReLU keeps the converter from folding "wide"'s bias into "head"'s (it does that
    # for two linear layers in a row).
    h = layers.Dense(32, activation="relu", name="wide")(inputs)
    model = _fill_nonzero(keras.Model(inputs, layers.Dense(4, name="head")(h)))
    expected = _half_zero_kernel(model, "wide")
    dense = inspect_tflite(convert(model, "float32"))
    sparse = inspect_tflite(convert(model, "float32", sparse=True))
    assert dense["sparse_tensors"] == 0 and sparse["sparse_tensors"] == 1
    assert sparse["parameters"] == dense["parameters"] == model.count_params()
    assert sparse["zero_fraction"] == pytest.approx(expected)
    assert dense["zero_fraction"] == pytest.approx(expected)
    assert sparse["weight_bytes"] < dense["weight_bytes"]  # zeros are not stored


# ----------------------------------------------------------------------------- Edge TPU

def test_int8_full_mobilenet_v2_fits_the_edgetpu():
    model = models.get_model("mobilenet_v2", (32, 32, 3), 10, alpha=0.35)
    data = convert(model, "int8_full", representative_data=_calibration((32, 32, 3), n=4))
    report = edgetpu_report(data)
    assert report["compatible"] is True, format_edgetpu(report)
    assert all(c["ok"] and not c["warning"] for c in report["checks"])
    assert report["first_unsupported_op"] is None and report["boundary_ops"] == []
    assert report["ops_on_edgetpu"] == inspect_tflite(data)["operators"]
    assert report["ops_on_cpu"] == 0
    assert "not the Edge TPU compiler" in report["note"]


def test_float32_fails_the_int8_check_and_is_cut_at_the_first_op(small_cnn_tflite):
    data = small_cnn_tflite("float32")
    report = edgetpu_report(data)
    input_name = inspect_tflite(data)["inputs"][0]["name"]
    check = _check(report, "int8")
    assert check["ok"] is False
    assert "FLOAT32" in check["detail"] and input_name in check["detail"]
    assert report["compatible"] is False
    assert report["first_unsupported_op"]["index"] == 0
    assert "FLOAT32" in report["first_unsupported_op"]["reason"]
    assert report["ops_on_edgetpu"] == 0


def test_float_io_conversions_run_on_the_cpu_without_cutting_the_graph(small_cnn_tflite):
    data = small_cnn_tflite("int8")
    report = edgetpu_report(data)
    n_ops = inspect_tflite(data)["operators"]
    assert [(b["index"], b["op"]) for b in report["boundary_ops"]] == [
        (0, "QUANTIZE"), (n_ops - 1, "DEQUANTIZE")]
    assert report["first_unsupported_op"] is None
    assert (report["ops_on_edgetpu"], report["ops_on_cpu"]) == (n_ops - 2, 2)
    assert report["compatible"] is False and _check(report, "int8")["ok"] is False


def test_dynamic_batch_fails_static_shapes():
    model = _conv_dense()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)  # leaves the batch at -1
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = _calibration((1, 8, 8, 3), n=4)
    converter.representative_dataset = lambda: ([s] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    data = converter.convert()
    info = inspect_tflite(data)
    assert info["inputs"][0]["shape_signature"] == [-1, 8, 8, 3]
    assert info["is_full_integer"] is True
    report = edgetpu_report(data)
    check = _check(report, "static_shapes")
    assert check["ok"] is False and info["inputs"][0]["name"] in check["detail"]
    assert _check(report, "int8")["ok"] is True
    assert report["compatible"] is False
    assert "dynamic shape" in report["first_unsupported_op"]["reason"]


def test_unsupported_op_cuts_the_graph_there():
    inputs = keras.Input((8, 8, 3))
    h = layers.Conv2D(4, 3)(inputs)
    h = layers.LeakyReLU(0.1)(h)  # LEAKY_RELU: int8 in TFLite, not on the Edge TPU
    h = layers.Conv2D(4, 3)(h)
    h = layers.Flatten()(h)
    model = _fill_nonzero(keras.Model(inputs, layers.Dense(5)(h)))
    data = convert(model, "int8_full", representative_data=_calibration((8, 8, 3)))
    info = inspect_tflite(data)
    assert info["is_full_integer"] is True
    assert "LEAKY_RELU" not in EDGETPU_OPS
    report = edgetpu_report(data)
    first = report["first_unsupported_op"]
    assert (first["index"], first["op"]) == (1, "LEAKY_RELU")
    # CONV_2D before it maps; LEAKY_RELU and the CONV_2D, RESHAPE, FULLY_CONNECTED after it
    # run on the CPU even though those three are supported.
    assert (report["ops_on_edgetpu"], report["ops_on_cpu"]) == (1, info["operators"] - 1) == (1, 4)
    check = _check(report, "supported_ops")
    assert check["ok"] is False and "LEAKY_RELU" in check["detail"]
    assert report["compatible"] is False


def test_rank_rule_flags_a_batch_of_two(small_cnn_tflite):
    report = edgetpu_report(small_cnn_tflite("int8_full", batch_size=2))
    check = _check(report, "tensor_rank")
    assert check["ok"] is False and "[2, 28, 28, 1]" in check["detail"]
    assert _check(report, "static_shapes")["ok"] is True
    assert _check(report, "int8")["ok"] is True
    assert report["compatible"] is False and report["first_unsupported_op"]["index"] == 0


def test_documented_op_limit_cuts_the_graph():
    inputs = keras.Input((8, 8, 4))
    h = layers.Conv2D(4, 3, dilation_rate=(1, 2), padding="same")(inputs)  # y/x dilation differ
    h = layers.GlobalAveragePooling2D()(h)
    model = _fill_nonzero(keras.Model(inputs, layers.Dense(3)(h)))
    data = convert(model, "int8_full", representative_data=_calibration((8, 8, 4)))
    report = edgetpu_report(data)
    assert _check(report, "supported_ops")["ok"] is True
    check = _check(report, "op_limits")
    assert check["ok"] is False and "dilation" in check["detail"]
    assert report["first_unsupported_op"]["op"] == "CONV_2D"
    assert report["first_unsupported_op"]["index"] == 0 and report["ops_on_edgetpu"] == 0


def test_parameters_over_8_mib_are_a_warning_not_a_failure():
    inputs = keras.Input((1500,))
    model = _fill_nonzero(keras.Model(inputs, layers.Dense(1500)(inputs)))
    report = edgetpu_report(convert(model, "float32"))
    check = _check(report, "parameter_cache")
    assert (check["ok"], check["warning"]) == (True, True)
    assert "host memory" in check["detail"] and "9,006,000" in check["detail"]


# ----------------------------------------------------------------------------- output, errors

def test_reports_are_json_and_the_text_shows_the_numbers(small_cnn_tflite, tmp_path):
    path = tmp_path / "cnn_int8.tflite"
    path.write_bytes(small_cnn_tflite("int8_full"))
    info = inspect_tflite(path)
    report = edgetpu_report(str(path))
    assert json.loads(json.dumps(info)) == info and json.loads(json.dumps(report)) == report
    assert info["file"] == str(path) and info["file_bytes"] == os.path.getsize(path)
    assert 0 < info["gzip_bytes"] < info["file_bytes"]
    text = format_inspection(info)
    assert f"{info['file_bytes']:,} B" in text and "KiB" in text
    assert f"{info['macs']:,}" in text and "CONV_2D" in text
    assert f"zero_point={info['inputs'][0]['zero_point'][0]}" in text
    text = format_edgetpu(edgetpu_report(small_cnn_tflite("float32")))
    assert "not the Edge TPU compiler" in text and "FAIL" in text and "graph cut at op #0" in text


_NOISE = np.random.default_rng(1).bytes(512)


@pytest.mark.parametrize("content", [b"", b"TFL3" * 2, _NOISE, _NOISE[:4] + b"TFL3" + _NOISE[8:]],
                         ids=["empty", "short", "noise", "noise-with-identifier"])
def test_bad_bytes_raise_tfliteerror(content):
    with pytest.raises(TfliteFileError):
        inspect_tflite(content)
    with pytest.raises(TfliteFileError):
        edgetpu_report(content)


def test_truncated_or_missing_file_names_the_file(small_cnn_tflite, tmp_path):
    path = tmp_path / "truncated.tflite"
    path.write_bytes(small_cnn_tflite("float32")[:300])
    for bad in (path, tmp_path / "missing.tflite"):
        with pytest.raises(TfliteFileError, match=os.path.basename(bad)):
            inspect_tflite(bad)
        with pytest.raises(TfliteFileError, match=os.path.basename(bad)):
            edgetpu_report(bad)


# ----------------------------------------------------------------------------- a real file

def test_mlperf_tiny_reference_int8(shared_dir):
    path = os.path.join(shared_dir, "data", "mlperf_tiny_kws", "ds_cnn_reference_int8.tflite")
    info = inspect_tflite(path)
    assert info["file_bytes"] == 53936
    assert info["operators"] == sum(o["count"] for o in info["ops"]) == 13
    assert info["inputs"][0]["dtype"] == info["outputs"][0]["dtype"] == "INT8"
    assert info["inputs"][0]["zero_point"] == [83]  # as the data set's README says
    assert info["is_full_integer"] is True
    # DS-CNN by hand: conv 10x4 on 49x10x1, stride 2 -> 25x5x64; four depthwise 3x3 and
    # four pointwise 64->64 on 25x5; dense 64->12.
    assert info["macs"] == (25 * 5 * 64 * 10 * 4 + 4 * 25 * 5 * 64 * 3 * 3
                            + 4 * 25 * 5 * 64 * 64 + 64 * 12)
    # The reference file keeps a dynamic batch (-1): the Edge TPU compiler would refuse it.
    assert info["inputs"][0]["shape_signature"][0] == -1
    assert _check(edgetpu_report(path), "static_shapes")["ok"] is False
