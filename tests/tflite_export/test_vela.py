"""The Ethos-U NPU profiles: Vela's estimate through `tflite_export.vela` and `bench`."""

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfcompress import cli
from tfcompress.keras import keras
from tflite_export import benchmark, vela
from tflite_export.convert import convert


@pytest.fixture(scope="module")
def kws_int8(shared_dir):
    path = os.path.join(shared_dir, "data", "mlperf_tiny_kws", "ds_cnn_reference_int8.tflite")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A tiny conv model as float32, int8 (float input/output) and int8_full."""
    root = tmp_path_factory.mktemp("vela")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    calibration = np.random.default_rng(0).uniform(0, 1, (20, 8, 8, 3)).astype(np.float32)
    paths = {}
    for mode in ("float32", "int8", "int8_full"):
        paths[mode] = str(root / f"m_{mode}.tflite")
        with open(paths[mode], "wb") as f:
            f.write(convert(model, mode, representative_data=calibration))
    return paths


def _vela_own_summary(path, accelerator, out_dir):
    """Vela's console script on its own: the summary CSV it writes."""
    vela_bin = os.path.join(os.path.dirname(sys.executable), "vela")
    subprocess.run([vela_bin, path, "--accelerator-config", accelerator, "--output-dir",
                    str(out_dir)], check=True, capture_output=True)
    with open(glob.glob(os.path.join(out_dir, "*_summary_*.csv"))[0], newline="") as f:
        return next(csv.DictReader(f))


def test_bench_json_cycles_match_velas_own_summary(kws_int8, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = cli.main(["bench", kws_int8, "--device", "ethos-u55-128", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    row, = json.loads(out.read_text())["results"]
    theirs = _vela_own_summary(kws_int8, "ethos-u55-128", tmp_path / "vela")
    assert row["kind"] == "npu" and row["error"] is None
    assert abs(row["cycles"] - int(theirs["cycles_total"])) <= 0.01 * int(theirs["cycles_total"])
    # The figure measured with Vela 5.2.0 for issue 20: 89,900 cycles, 0.180 ms at 500 MHz.
    assert row["vela"] == "5.2.0" and row["cycles"] == pytest.approx(89900, rel=0.01)
    assert row["inference_ms"] == pytest.approx(row["cycles"] / 500e3, rel=1e-3)
    assert row["sram_kib"] == pytest.approx(21.67, abs=0.1)
    assert row["flash_kib"] == pytest.approx(30.38, abs=0.1)
    assert (row["npu_ops"], row["cpu_ops"]) == (39, 0)
    # Per-layer cycles add up to the total; the table is in report order.
    assert sum(layer["cycles"] for layer in row["layers"]) == row["cycles"]
    assert {layer["target"] for layer in row["layers"]} == {"NPU"}
    assert "| ds_cnn_reference_int8.tflite | ethos-u55-128 | 89,900 |" in captured.out


def test_bigger_npu_takes_fewer_cycles(kws_int8):
    u55_128 = vela.vela_estimate(kws_int8, "ethos-u55-128")
    u55_256 = vela.vela_estimate(kws_int8, "ethos-u55-256")
    assert u55_256["cycles"] < u55_128["cycles"]
    assert u55_256["macs"] == u55_128["macs"]


def test_float_model_is_not_for_the_npu_and_boundary_ops_fall_to_the_cpu(small_files):
    result = benchmark.benchmark_models(
        [small_files["float32"], small_files["int8"], small_files["int8_full"]],
        devices=["ethos-u55-128"], log=None)
    rows = {os.path.basename(r["model"]): r for r in result["results"]}
    assert result["failures"] == 0
    assert rows["m_float32.tflite"]["not_applicable"] == vela.NOT_FOR_NPU
    assert "cycles" not in rows["m_float32.tflite"]
    # int8 keeps float input and output: Vela leaves QUANTIZE / DEQUANTIZE to the CPU.
    assert rows["m_int8.tflite"]["cpu_ops"] == 2
    assert rows["m_int8.tflite"]["cpu_op_types"] == ["DEQUANTIZE", "QUANTIZE"]
    assert rows["m_int8_full.tflite"]["cpu_ops"] == 0
    assert rows["m_int8_full.tflite"]["cycles"] > 0
    table = benchmark.format_markdown(result)
    assert f"| m_float32.tflite | ethos-u55-128 | {vela.NOT_FOR_NPU} |" in table
    assert "| 2 (DEQUANTIZE, QUANTIZE) |" in table


def test_list_devices_says_what_each_kind_measures(capsys):
    assert cli.main(["bench", "--list-devices"]) == 0
    out = capsys.readouterr().out
    for line in ("host: measured time", "npu: compiler estimate (Vela)",
                 "arm-emulated: emulated correctness and kernel path", "static: static check"):
        assert line in out
    for name in ("ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "arm-cortex-a53",
                 "arm-cortex-a76", "edgetpu"):
        assert f"  {name}: " in out


def test_edgetpu_profile_runs_the_static_check(small_files):
    result = benchmark.benchmark_models([small_files["int8_full"], small_files["float32"]],
                                        devices=["edgetpu"], log=None)
    full, float32 = result["results"]
    assert full["kind"] == "static" and full["compatible"] and full["ops_on_cpu"] == 0
    assert not float32["compatible"] and "FLOAT32" in float32["first_unsupported_op"]["reason"]
