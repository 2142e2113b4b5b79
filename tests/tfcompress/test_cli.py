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
