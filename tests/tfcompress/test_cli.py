"""The `tfcompress` export / inspect / evaluate subcommands, as a user runs them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import models
import tfcompress
from tfcompress import cli
from tfcompress.keras import keras
from tflite_export import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A small trained model and an npz data set it fits."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = (rng.uniform(0, 0.4, (120, 12, 12, 1)) + 0.3 * y[:, None, None, None]).astype(np.float32)
    np.savez(root / "data.npz", x=x[:90], y=y[:90], x_test=x[90:], y_test=y[90:])
    np.savez(root / "wrong.npz", x=np.zeros((10, 8, 8, 3), np.float32), y=np.zeros(10, int))
    keras.utils.set_random_seed(0)
    model = models.get_model("small_cnn", (12, 12, 1), 3, width=4)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:90], y[:90], epochs=15, verbose=0)
    tfcompress.save_model(model, root / "m.keras")
    return root


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_export_inspect_evaluate(workdir, capsys):
    out_dir = workdir / "tflite"
    code, out, err = _run(capsys, "export", workdir / "m.keras", "--mode", "float32", "--mode",
                          "int8_full", "--calibration", f"npz:{workdir}/data.npz", "--out", out_dir)
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ["m_float32.tflite", "m_int8_full.tflite"]
    assert "m_int8_full.tflite" in out and "bytes" in out

    code, out, err = _run(capsys, "inspect", out_dir / "m_int8_full.tflite", "--json", "--edgetpu")
    assert code == 0, err
    info = json.loads(out)
    assert info["is_full_integer"] and info["inputs"][0]["dtype"] == "INT8"
    assert info["edgetpu"]["compatible"] is True

    code, out, err = _run(capsys, "inspect", out_dir / "m_float32.tflite", "--edgetpu")
    assert code == 0 and "CONV_2D" in out and "static check" in out

    code, out, err = _run(capsys, "evaluate", out_dir / "m_float32.tflite", "--data",
                          f"npz:{workdir}/data.npz", "--keras", workdir / "m.keras", "--json")
    assert code == 0, err
    result = json.loads(out)
    keras_model = tfcompress.load_model(workdir / "m.keras")
    with np.load(workdir / "data.npz") as f:
        want = np.mean(keras_model.predict(f["x_test"], verbose=0).argmax(1) == f["y_test"])
    assert result["samples"] == 30 and abs(result["top1"] - want) < 1e-9
    assert result["keras_agreement"]["top1_agreement"] == 1.0

    code, out, err = _run(capsys, "evaluate", out_dir / "m_int8_full.tflite", "--data",
                          f"npz:{workdir}/data.npz", "--keras", workdir / "m.keras",
                          "--layer_errors")
    assert code == 0, err
    assert "agrees with Keras" in out and "conv1+bn1+relu1" in out  # layers named as in Keras


@pytest.mark.parametrize("argv, message", [
    (["export", "{w}/missing.keras", "--out", "{w}/o1"], "missing.keras: no such file"),
    (["export", "{w}/m.keras", "--mode", "int8_full", "--out", "{w}/o2"],
     "mode int8_full needs representative_data"),
    (["export", "{w}/m.keras", "--mode", "float32", "--mode", "int8", "--calibration",
      "npz:{w}/wrong.npz", "--out", "{w}/o3"], "sample has shape (8, 8, 3) but the model input"),
    (["export", "{w}/m.keras", "--mode", "int4", "--out", "{w}/o4"], "unknown TFLite mode 'int4'"),
    (["inspect", "{w}/data.npz"], "not a TFLite flatbuffer"),
    (["inspect", "{w}/nope.tflite"], "nope.tflite: no such file"),
    (["evaluate", "{w}/tflite/m_float32.tflite", "--data", "npz:{w}/wrong.npz"],
     "data of shape (2, 8, 8, 3) does not fit"),
])
def test_bad_input_is_one_line_and_writes_nothing(workdir, capsys, argv, message):
    if argv[0] == "evaluate" and not (workdir / "tflite" / "m_float32.tflite").exists():
        pytest.skip("needs the export test's file")
    code, out, err = _run(capsys, *[a.format(w=workdir) for a in argv])
    assert code != 0
    assert message in _one_error_line(err)
    for d in ("o1", "o2", "o3", "o4"):
        assert not (workdir / d).exists() or not os.listdir(workdir / d)


def test_console_script_truncated_file(workdir, tmp_path):
    # The installed entry point, in a fresh process: one line, no traceback.
    good = (workdir / "tflite" / "m_float32.tflite")
    if not good.exists():
        pytest.skip("needs the export test's file")
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(good.read_bytes()[:3000])
    exe = os.path.join(os.path.dirname(sys.executable), "tfcompress")
    result = subprocess.run([exe, "evaluate", str(cut), "--data", f"npz:{workdir}/data.npz"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cut.tflite: corrupt or truncated TFLite flatbuffer" in errors[0]


NATIVE_NOISE = ("I0000 ", "W0000 ", "E0000 ", "WARNING: All log messages before absl",
                "fully_quantize:", "cuInit", "oneDNN custom operations")


@pytest.mark.parametrize("debug", [False, True])
def test_console_script_keeps_native_log_lines_out(workdir, tmp_path, debug):
    # TensorFlow's absl lines ignore TF_CPP_MIN_LOG_LEVEL; the CLI filters its own stderr.
    exe = os.path.join(os.path.dirname(sys.executable), "tfcompress")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TFCOMPRESS_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    if debug:
        env["TFCOMPRESS_DEBUG"] = "1"
    result = subprocess.run([exe, "export", str(workdir / "m.keras"), "--mode", "int8_full",
                             "--calibration", f"npz:{workdir}/data.npz", "--out",
                             str(tmp_path / "t")], capture_output=True, text=True, timeout=300,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert "m_int8_full.tflite" in result.stdout
    noise = [line for line in result.stderr.splitlines()
             if any(mark in line for mark in NATIVE_NOISE)]
    if debug:  # the lines are there to filter: TFCOMPRESS_DEBUG=1 shows them
        assert noise, result.stderr
    else:
        assert noise == [], noise


# --- tfcompress bench -------------------------------------------------------

@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    """An untrained tiny model as float32 and int8_full, and a truncated copy."""
    from tflite_export.convert import convert
    root = tmp_path_factory.mktemp("bench_cli")
    keras.utils.set_random_seed(0)
    model = models.get_model("small_cnn", (12, 12, 1), 3, width=4)
    calib = np.random.default_rng(0).uniform(0, 1, (20, 12, 12, 1)).astype(np.float32)
    for mode in ("float32", "int8_full"):
        (root / f"b_{mode}.tflite").write_bytes(convert(model, mode, representative_data=calib))
    (root / "cut.tflite").write_bytes((root / "b_float32.tflite").read_bytes()[:2000])
    return root


def test_bench_one_corrupt_file_among_three(bench_files, capsys, tmp_path):
    b = bench_files
    code, out, err = _run(capsys, "bench", b / "b_float32.tflite", b / "cut.tflite",
                          b / "b_int8_full.tflite", "--runs", 5, "--min_seconds", 0, "--warmup", 1,
                          "--json", tmp_path / "bench.json", "--plot", tmp_path / "bench.png")
    assert code == 1, err
    result = json.loads((tmp_path / "bench.json").read_text())
    errors = {os.path.basename(r["model"]): r["error"] for r in result["results"]}
    assert errors["b_float32.tflite"] is None and errors["b_int8_full.tflite"] is None
    assert "cut.tflite: corrupt or truncated" in errors["cut.tflite"]
    assert result["failures"] == 1 and len(result["ratios"]) == 1
    assert "| b_int8_full.tflite | host-1t |" in out and "- cut.tflite on host-1t: " in out
    assert "phone cannot be emulated" in out
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    # One progress line per model, on stderr.
    assert sum(line.startswith("[") for line in err.splitlines()) == 3
    code, out, err = _run(capsys, "bench", b / "b_int8_full.tflite", "--baseline",
                          b / "b_float32.tflite", "--device", "host-1t-reference", "--runs", 5,
                          "--min_seconds", 0)
    assert code == 0, err
    assert "| b_int8_full.tflite | host-1t-reference |" in out and "x |" in out


def test_bench_devices_and_bad_input(bench_files, capsys, tmp_path):
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps({"box-1t": {"threads": 1, "affinity": None,
                                              "delegate": "xnnpack", "description": "my box"}}))
    code, out, err = _run(capsys, "bench", "--list-devices", "--devices-file", devices)
    assert code == 0 and "host-1t-reference" in out and "box-1t" in out and "my box" in out
    code, out, err = _run(capsys, "bench", bench_files / "b_float32.tflite", "--devices-file",
                          devices, "--device", "box-1t", "--runs", 3, "--min_seconds", 0)
    assert code == 0 and "| b_float32.tflite | box-1t |" in out, err
    for argv, message in [
        (["bench"], "needs at least one .tflite file"),
        (["bench", bench_files / "b_float32.tflite", "--device", "phone"],
         "unknown device 'phone'"),
        (["bench", "--list-devices", "--devices-file", tmp_path / "none.json"], "cannot read"),
        (["bench", bench_files / "b_float32.tflite", "--runs", 0], "runs must be an integer"),
    ]:
        code, out, err = _run(capsys, *argv)
        assert code == 1 and message in _one_error_line(err)
    # An unknown name beside a known one: one error line, the known device still measured.
    code, out, err = _run(capsys, "bench", bench_files / "b_float32.tflite", "--device", "phone",
                          "--device", "host-1t", "--runs", 3, "--min_seconds", 0)
    assert code == 1 and "| b_float32.tflite | host-1t |" in out
    assert [line for line in err.splitlines() if "phone" in line] == [
        f"error: unknown device 'phone'; known: {', '.join(benchmark.PROFILES)} (tfcompress "
        "bench --list-devices; add your own host profile in a file: CLI --devices-file)"]
    assert "- unknown device 'phone'" in out
