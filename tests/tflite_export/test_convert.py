import os

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import models
from tfcompress.keras import keras, tf
from tflite_export import convert as convert_lib
from tflite_export.convert import ExportError, convert, write_tflite


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    m = models.get_model("small_cnn", (12, 12, 1), 4, width=4)
    x = np.random.default_rng(0).uniform(0, 1, (64, 12, 12, 1)).astype(np.float32)
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, np.arange(64) % 4, epochs=1, verbose=0)  # non-trivial BN statistics
    return m


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(1).uniform(0, 1, (32, 12, 12, 1)).astype(np.float32)


def _interpreter(data):
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    return it


def _weight_dtypes(it):
    """Stored dtypes of the CONV_2D / FULLY_CONNECTED kernels (their second input).

    float16 kernels are stored as float16 and widened by a DEQUANTIZE op at load
    time, so a kernel made by DEQUANTIZE counts as that op's input dtype.
    """
    details = it.get_tensor_details()
    ops = it._get_ops_details()
    producer = {out: op for op in ops for out in op["outputs"]}
    dtypes = set()
    for op in ops:
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            kernel = op["inputs"][1]
            if kernel in producer and producer[kernel]["op_name"] == "DEQUANTIZE":
                kernel = producer[kernel]["inputs"][0]
            dtypes.add(details[kernel]["dtype"])
    return dtypes


def test_float32_fixes_batch_and_matches_keras(model, calib):
    it = _interpreter(convert(model, "float32"))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["shape"].tolist() == [1, 12, 12, 1]
    assert inp["shape_signature"].tolist() == [1, 12, 12, 1]  # static, not -1
    it.set_tensor(inp["index"], calib[:1])
    it.invoke()
    assert np.max(np.abs(it.get_tensor(out["index"]) - model(calib[:1]).numpy())) < 1e-5


def test_batch_size_is_honoured(model):
    it = _interpreter(convert(model, "float32", batch_size=4))
    assert it.get_input_details()[0]["shape"].tolist() == [4, 12, 12, 1]


@pytest.mark.parametrize("mode, io_dtype, kernel_dtype", [
    ("float16", np.float32, np.float16),
    ("dynamic", np.float32, np.int8),
    ("int8", np.float32, np.int8),
    ("int8_full", np.int8, np.int8),
    ("int16x8", np.float32, np.int8),
])
def test_mode_dtypes(model, calib, mode, io_dtype, kernel_dtype):
    it = _interpreter(convert(model, mode, representative_data=calib))
    assert it.get_input_details()[0]["dtype"] == io_dtype
    assert it.get_output_details()[0]["dtype"] == io_dtype
    if mode == "dynamic":
        # Dynamic-range quantization leaves kernels under 1,024 elements in float32
        # (the converter's default minimum); the larger ones are int8.
        assert kernel_dtype in _weight_dtypes(it)
    else:
        assert _weight_dtypes(it) == {kernel_dtype}
    if mode == "int8_full":
        details = it.get_tensor_details()
        assert {d["dtype"] for d in details} <= {np.int8, np.int32}
        scale, zero_point = it.get_input_details()[0]["quantization"]
        assert scale > 0


def test_representative_data_forms_agree(model, calib):
    from_array = convert(model, "int8_full", representative_data=calib)
    as_list = [calib[i] for i in range(len(calib))]
    from_generator = convert(model, "int8_full", representative_data=lambda: iter(as_list))
    labels = np.zeros(len(calib))
    from_dataset = convert(model, "int8_full", representative_data=tf.data.Dataset.from_tensor_slices(
        (calib, labels)))
    scales = [_interpreter(b).get_input_details()[0]["quantization"]
              for b in (from_array, from_generator, from_dataset)]
    assert scales[0] == scales[1] == scales[2]


def test_calibration_is_required(model):
    for mode in ("int8", "int8_full", "int16x8"):
        with pytest.raises(ExportError, match=f"mode {mode} needs representative_data"):
            convert(model, mode)


def test_calibration_shape_mismatch_is_clear(model):
    with pytest.raises(ExportError, match=r"sample has shape \(28, 28, 1\) but the model input "
                                          r"is \(12, 12, 1\)"):
        convert(model, "int8", representative_data=np.zeros((4, 28, 28, 1), np.float32))


def test_empty_and_nan_calibration(model):
    with pytest.raises(ExportError, match="representative_data is empty"):
        convert(model, "int8", representative_data=np.zeros((0, 12, 12, 1), np.float32))
    with pytest.raises(ExportError, match="NaN or Inf"):
        convert(model, "int8", representative_data=np.full((2, 12, 12, 1), np.nan, np.float32))


def test_sparse_float32_and_refused_when_quantized(model):
    pruned = keras.models.clone_model(model)
    weights = model.get_weights()
    weights = [np.where(np.abs(w) < np.quantile(np.abs(w), 0.8), 0, w) if w.ndim == 4 else w
               for w in weights]
    pruned.set_weights(weights)
    dense, sparse = convert(pruned, "float32"), convert(pruned, "float32", sparse=True)
    assert sparse != dense
    it = _interpreter(sparse)
    x = np.ones((1, 12, 12, 1), np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    assert np.max(np.abs(got - pruned(x).numpy())) < 1e-5
    for mode in ("dynamic", "int8_full"):
        with pytest.raises(ExportError, match="only for float32.*XNNPACK"):
            convert(pruned, mode, sparse=True)


def test_bad_arguments(model):
    with pytest.raises(ExportError, match="unknown TFLite mode 'int4'; choose one of float32"):
        convert(model, "int4")
    with pytest.raises(ExportError, match="batch_size must be an integer >= 1"):
        convert(model, "float32", batch_size=0)
    with pytest.raises(TypeError, match="Keras 3 model"):
        import keras as keras3
        convert(keras3.Sequential([keras3.Input((2,)), keras3.layers.Dense(1)]))


def test_converts_from_a_saved_file(model, tmp_path):
    import tfcompress
    path = tfcompress.save_model(model, tmp_path / "m.keras")
    assert convert(str(path), "float32") == convert(model, "float32")


def test_write_tflite_is_atomic(model, tmp_path, monkeypatch):
    data = convert(model, "float32")
    path = tmp_path / "m.tflite"
    write_tflite(data, path)
    assert path.read_bytes() == data

    # A failure mid-write leaves neither a partial file nor a temp file behind.
    def fail_after_half(fd, *args):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", fail_after_half)
    with pytest.raises(OSError, match="disk full"):
        write_tflite(data, tmp_path / "new.tflite")
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]
    monkeypatch.undo()
    with pytest.raises(ExportError, match="not a TFLite flatbuffer"):
        write_tflite(b"garbage", tmp_path / "g.tflite")
    assert not (tmp_path / "g.tflite").exists()


def test_converter_failure_is_an_export_error(model):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: tf.strings.as_string(t))(inputs)
    odd = keras.Model(inputs, outputs)
    with pytest.raises(ExportError, match="int8_full conversion of .* failed"):
        convert_lib.convert(odd, "int8_full", representative_data=np.zeros((2, 4), np.float32))
