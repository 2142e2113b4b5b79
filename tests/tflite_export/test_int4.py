"""int4 export modes through AI Edge Quantizer: what the files hold, how they score,
and that calibration ranges cover the calibration data."""

import numpy as np
import pytest

from tfcompress import quantization
from tfcompress.keras import keras
from tflite_export import int4
from tflite_export.convert import ExportError, MODES, convert
from tflite_export.evaluate import evaluate_tflite
from tflite_export.inspect import inspect_tflite
from tflite_export.tflite_file import parse_tflite, tensor_type_name, op_name

L = keras.layers


@pytest.fixture(scope="module")
def trained():
    """A conv / depthwise / dense classifier trained on a learnable 4-class problem."""
    rng = np.random.default_rng(0)
    templates = rng.random((4, 12, 12, 1)).astype(np.float32)

    def split(n):
        y = rng.integers(0, 4, n)
        x = np.clip(templates[y] + 0.35 * rng.standard_normal((n, 12, 12, 1)), 0, 1)
        return x.astype(np.float32), y

    x, y = split(1200)
    x_test, y_test = split(300)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    h = L.Conv2D(16, 3, activation="relu", name="conv")(inputs)
    h = L.DepthwiseConv2D(3, activation="relu", name="dw")(h)
    h = L.Conv2D(32, 1, activation="relu", name="pw")(h)
    h = L.Dense(48, activation="relu", name="hidden")(L.Flatten()(h))  # weights dominate
    model = keras.Model(inputs, L.Dense(4, activation="softmax", name="head")(h))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return model, x, x_test, y_test


def _weight_types(tflite_bytes):
    """{op name: set of the type names of its constant weight inputs (the filter)}."""
    model = parse_tflite(tflite_bytes)
    graph = model.subgraphs[0]
    types = {}
    for op in graph.operators:
        name = op_name(model, op)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "DEQUANTIZE"):
            tensor = graph.tensors[op.inputs[1 if name != "DEQUANTIZE" else 0]]
            types.setdefault(name, set()).add(tensor_type_name(tensor))
    return types


@pytest.mark.parametrize("mode", ["int4_weights", "int4_dynamic", "int4_w4a8", "int4_adaround"])
def test_int4_modes_hold_int4_weights_and_keep_the_accuracy(trained, tmp_path, mode):
    model, x, x_test, y_test = trained
    float_path = tmp_path / "float32.tflite"
    float_path.write_bytes(convert(model, "float32"))
    data = convert(model, mode, representative_data=x[:100])
    path = tmp_path / f"{mode}.tflite"
    path.write_bytes(data)
    types = _weight_types(data)
    if mode in ("int4_weights", "int4_adaround"):  # int4 filters dequantized before each op
        assert types["DEQUANTIZE"] == {"INT4", "INT8"}
    else:
        assert types["CONV_2D"] == {"INT4"} and types["FULLY_CONNECTED"] == {"INT4"}
        assert types["DEPTHWISE_CONV_2D"] == {"INT8"}
    info = inspect_tflite(str(path))
    assert info["is_full_integer"] == (mode == "int4_w4a8")
    int8_bytes = len(convert(model, "int8_full", representative_data=x[:100]))
    assert info["file_bytes"] <= 0.65 * int8_bytes
    float_top1 = evaluate_tflite(str(float_path), x_test, y_test, top_k=(1,),
                                 progress=False)["top1"]
    top1 = evaluate_tflite(str(path), x_test, y_test, top_k=(1,), progress=False)["top1"]
    assert float_top1 > 0.9
    assert top1 >= float_top1 - 0.03


def test_calibration_ranges_cover_every_calibration_value(trained):
    model, x, _, _ = trained
    float_bytes = convert(model, "float32")
    samples = [[s[None]] for s in x[:50]]
    ranges = int4.calibration_ranges(float_bytes, "int4_w4a8", samples)
    graph = parse_tflite(float_bytes).subgraphs[0]
    input_name = graph.tensors[graph.inputs[0]].name.decode()
    assert float(np.min(ranges[input_name]["min"])) <= float(x[:50].min())
    assert float(np.max(ranges[input_name]["max"])) >= float(x[:50].max())
    # AEQ's own update is a moving average: one sample per step narrows the range.
    from ai_edge_quantizer import qtyping  # noqa: F401 - AEQ is installed
    moving = {"min": np.array(0.0), "max": np.array(1.0)}
    assert int4._widen(moving, {"min": np.array(-0.5), "max": np.array(0.5)}) == {
        "min": -0.5, "max": 1.0}


def test_int4_refuses_what_it_cannot_do(trained):
    model, x, _, _ = trained
    with pytest.raises(ExportError, match="int4_w4a8 needs representative_data"):
        convert(model, "int4_w4a8")
    with pytest.raises(ExportError, match="a QAT model learned int8 ranges"):
        convert(quantization.quantize(model), "int4_weights")
    assert all(MODES[m].quantized for m in ("int4_weights", "int4_dynamic", "int4_w4a8"))


def test_learned_rounding_beats_nearest_on_the_mlperf_ds_cnn(shared_dir, tmp_path):
    """A model no one here trained: DS-CNN on 800 held-out clips (200 others calibrate)."""
    import os
    import tfcompress
    root = os.path.join(shared_dir, "data", "mlperf_tiny_kws")
    with np.load(os.path.join(root, "kws01_test.npz")) as z:
        x = (z["x_int8"].astype(np.float32) - float(z["input_zero_point"])) * \
            float(z["input_scale"])
        y = z["y"]
    model = tfcompress.load_model(os.path.join(root, "ds_cnn_savedmodel"), compile=False)
    from tflite_export.evaluate import as_runner
    predictions = {}
    for mode in ("float32", "int4_weights", "int4_adaround"):
        path = tmp_path / f"{mode}.tflite"
        path.write_bytes(convert(model, mode, representative_data=x[:200]))
        predictions[mode] = np.argmax(as_runner(str(path)).predict(x[200:], progress=False), 1)
    top1 = {m: float(np.mean(p == y[200:])) for m, p in predictions.items()}
    agree = {m: float(np.mean(p == predictions["float32"])) for m, p in predictions.items()}
    print(f"\nDS-CNN top-1 {top1}, agreement with float {agree}")
    assert top1["int4_adaround"] >= top1["float32"] - 0.015
    assert agree["int4_adaround"] > agree["int4_weights"] + 0.02


def _int4_filters(tflite_bytes):
    """Names of the layers whose conv/dense filter is stored int4 (in a weight-only file,
    through the DEQUANTIZE op that feeds the filter)."""
    flat = parse_tflite(tflite_bytes)
    graph = flat.subgraphs[0]
    producer = {op.outputs[0]: op for op in graph.operators}
    found = set()
    for op in graph.operators:
        if op_name(flat, op) not in ("CONV_2D", "FULLY_CONNECTED"):
            continue
        index = op.inputs[1]
        before = producer.get(index)
        if before is not None and op_name(flat, before) == "DEQUANTIZE":
            index = before.inputs[0]
        tensor = graph.tensors[index]
        if tensor_type_name(tensor) == "INT4":
            found.add(tensor.name.decode().split("/")[-2])
    return found


def test_mixed_precision_follows_its_plan_and_its_budget(trained):
    from tflite_export.mixed_precision import mixed_int4
    model, x, x_test, y_test = trained
    # No room: nothing moves to int4, every layer keeps int8.
    kept, plan = mixed_int4(model, x[:100], x_test, y_test, max_drop=-1e-9, log=None)
    assert _int4_filters(kept) == set() and all(r["bits"] == 8 for r in plan["layers"])
    assert not plan["met"]  # -1e-9 points cannot be met: the plan says so
    # Any drop allowed: every conv/dense layer moves; the file holds what the plan says.
    small, plan = mixed_int4(model, x[:100], x_test, y_test, max_drop=100.0, log=None)
    assert {r["layer"] for r in plan["layers"] if r["bits"] == 4} == {"conv", "pw", "hidden",
                                                                      "head"}
    assert _int4_filters(small) == {"conv", "pw", "hidden", "head"}
    assert len(small) < len(kept) and plan["met"]
    # A byte budget stops moving layers once the file fits.
    target = (len(kept) + len(small)) // 2
    middle, plan = mixed_int4(model, x[:100], x_test, y_test, max_bytes=target, log=None)
    assert len(middle) <= target and plan["met"]
    assert 0 < len(_int4_filters(middle)) < 4


def test_int4_mixed_needs_the_pipeline_and_a_budget(trained, tmp_path):
    from tfcompress.config import RecipeError, recipe_from_dict
    model, x, _, _ = trained
    with pytest.raises(ExportError, match="use it in a recipe with ptq.max_drop"):
        convert(model, "int4_mixed", representative_data=x[:10])
    (tmp_path / "m.keras").write_bytes(b"")  # recipes check that the file exists
    base = {"teacher": {"path": str(tmp_path / "m.keras")},
            "export": {"modes": ["int4_mixed"]}}
    with pytest.raises(RecipeError, match="int4_mixed needs a budget: set ptq.max_drop"):
        recipe_from_dict(base)
    with pytest.raises(RecipeError, match=r"ptq.max_drop must be points in \[0, 100\]"):
        recipe_from_dict({**base, "ptq": {"max_drop": 150}})
    assert recipe_from_dict({**base, "ptq": {"max_drop": 1.0}}).ptq.max_drop == 1.0


def test_pretrained_recipe_on_a_sigmoid_model_skips_int4_mixed_and_says_so(tmp_path):
    """The default `run --model` modes include int4_mixed, whose budget is multi-class
    top-1: a binary (one sigmoid unit) model gets every other variant, and a log line."""
    from tfcompress import config, pipeline
    from tfcompress.saving import save_model
    rng = np.random.default_rng(0)
    x = rng.random((400, 6), dtype=np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x[:300], y=y[:300], x_test=x[300:], y_test=y[300:])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(1, activation="sigmoid")(L.Dense(16, "relu")(inputs)))
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    model.fit(x[:300], y[:300], epochs=20, verbose=0)
    save_model(model, tmp_path / "m.keras")
    recipe = config.load_recipe("pretrained", overrides=[
        f"teacher.path={tmp_path / 'm.keras'}", f"data.dataset=npz:{tmp_path / 'd.npz'}",
        "export.modes=[float32, int4_adaround, int4_mixed]", "benchmark.devices=[]"])
    lines = []
    report = pipeline.run(recipe, str(tmp_path / "out"), log=lines.append, verbose=0)
    assert [row["mode"] for row in report["variants"]] == ["float32", "int4_adaround"]
    assert any("no int4_mixed variant" in line and "one output unit" in line for line in lines)
