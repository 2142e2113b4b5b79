"""Fixtures for reliability tests: tiny models, files that fit them, and broken files.

Everything is small (an 8x8x1 input, 3 classes) so that a test spends its time
on the code under test, not on TensorFlow.

    tiny_model(name)     builds a fresh tf_keras model: Conv2D 'conv' -> Flatten -> Dense 'dense'
    nan_model            such a model with one NaN in the conv kernel
    poison(model, value, layer)   puts NaN/Inf into a kernel
    good_files           {"keras", "h5", "tflite", "npz", "rgb_npz", "nan_keras", ...}: paths
    corrupt_files        {"truncated_tflite", "random_keras", "empty_idx_gz", ...}: paths
    run_main / cli_error in-process CLI runners that capture stdout/stderr
    one_error_line(code, err, *fragments)   the CLI failure contract, asserted

(Test modules cannot import this file under --import-mode=importlib, hence the
helper functions are also handed out as fixtures.)
"""

import gzip

import numpy as np
import pytest

from tfcompress.keras import keras

INPUT_SHAPE = (8, 8, 1)
NUM_CLASSES = 3


def build_tiny_model(name="tiny"):
    """Conv2D 'conv' (4 filters) -> Flatten -> Dense 'dense' (3, softmax); 8x8x1 in."""
    return keras.Sequential([
        keras.Input(INPUT_SHAPE),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(NUM_CLASSES, activation="softmax", name="dense"),
    ], name=name)


def poison(model, value=np.nan, layer="conv"):
    """Sets one kernel value of `layer` to `value` (NaN or Inf); returns the model."""
    target = model.get_layer(layer)
    kernel, *rest = target.get_weights()
    kernel.flat[0] = value
    target.set_weights([kernel, *rest])
    return model


@pytest.fixture
def tiny_model():
    """A factory: tiny_model(name="tiny") builds a fresh, untrained model."""
    keras.utils.set_random_seed(0)
    return build_tiny_model


@pytest.fixture(name="poison")
def poison_fixture():
    return poison


@pytest.fixture(name="write_idx")
def write_idx_fixture():
    return write_idx


@pytest.fixture(name="one_error_line")
def one_error_line_fixture():
    return check_one_error_line


@pytest.fixture
def nan_model():
    keras.utils.set_random_seed(0)
    return poison(build_tiny_model("nan_model"))


def write_idx(path, array, compress):
    """Writes a uint8 IDX file (gzipped when `compress`)."""
    raw = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    raw += np.asarray(array, np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)
    return str(path)


@pytest.fixture(scope="session")
def good_files(tmp_path_factory):
    """Valid files around the tiny model: .keras, .h5, .tflite, npz data it fits, and more."""
    from tfcompress.saving import save_model
    from tflite_export.convert import convert, write_tflite
    root = tmp_path_factory.mktemp("good")
    keras.utils.set_random_seed(0)
    model = build_tiny_model()
    rng = np.random.default_rng(0)
    paths = {"keras": str(root / "tiny.keras"), "h5": str(root / "tiny.h5"),
             "tflite": str(root / "tiny.tflite"), "npz": str(root / "data.npz"),
             "rgb_npz": str(root / "rgb.npz"), "many_classes_npz": str(root / "seven.npz"),
             "nan_keras": str(root / "nan.keras"), "dir": str(root)}
    save_model(model, paths["keras"])
    save_model(model, paths["h5"])
    write_tflite(convert(model, "float32"), paths["tflite"])
    save_model(poison(build_tiny_model("nan_model")), paths["nan_keras"])
    np.savez(paths["npz"], x=rng.random((20,) + INPUT_SHAPE, np.float32),
             y=np.arange(20) % NUM_CLASSES)
    # 12x12x3 images, and 7 classes: neither fits the tiny model.
    np.savez(paths["rgb_npz"], x=rng.random((20, 12, 12, 3), np.float32),
             y=np.arange(20) % NUM_CLASSES)
    np.savez(paths["many_classes_npz"], x=rng.random((20,) + INPUT_SHAPE, np.float32),
             y=np.arange(20) % 7)
    return paths


@pytest.fixture(scope="session")
def corrupt_files(tmp_path_factory, good_files):
    """Broken files by name: truncated_/random_/empty_ + tflite, keras, h5, npz, idx, idx_gz."""
    root = tmp_path_factory.mktemp("corrupt")
    rng = np.random.default_rng(1)
    sources = {"tflite": good_files["tflite"], "keras": good_files["keras"],
               "h5": good_files["h5"], "npz": good_files["npz"]}
    idx = write_idx(root / "full-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), False)
    idx_gz = write_idx(root / "full-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)), True)
    sources.update(idx=idx, idx_gz=idx_gz)
    paths = {}
    for kind, source in sources.items():
        with open(source, "rb") as f:
            data = f.read()
        suffix = {"idx": "-idx3-ubyte", "idx_gz": "-idx3-ubyte.gz"}.get(kind, "." + kind)
        for damage, content in (("truncated", data[:len(data) // 2]),
                                ("random", rng.integers(0, 256, 2048, np.uint8).tobytes()),
                                ("empty", b"")):
            path = root / f"{damage}{suffix}"
            path.write_bytes(content)
            paths[f"{damage}_{kind}"] = str(path)
    # Valid magic, garbage after it: gets past a header check.
    with open(good_files["tflite"], "rb") as f:
        tflite = f.read()
    garbled = root / "garbled.tflite"
    garbled.write_bytes(tflite[:8] + rng.integers(0, 256, len(tflite) - 8, np.uint8).tobytes())
    paths["garbled_tflite"] = str(garbled)
    return paths


def _error_lines(err):
    return [line for line in err.splitlines() if line.startswith("error: ")]


def check_one_error_line(code, err, *fragments):
    """Asserts a failed command: exit code != 0, one `error:` line, no traceback.

    Returns the error line; every fragment must appear in it.
    """
    assert code not in (0, None), f"expected a failure, got exit code {code}; stderr: {err}"
    assert "Traceback" not in err, err
    lines = _error_lines(err)
    assert len(lines) == 1, f"expected one 'error:' line, got: {err!r}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def run_main(capsys):
    """run_main(main, argv) -> (exit code, stdout, stderr); SystemExit becomes its code."""
    def run(main, argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def cli_error(run_main):
    """cli_error(*argv, fragments=(...)) runs `tfcompress ARGV` in-process and checks
    it failed with one `error:` line holding every fragment; returns that line.

    `tfcompress train` reads global absl flags: they are reset to defaults first.
    """
    from absl import flags

    from tfcompress import cli

    def run(*argv, fragments=()):
        if flags.FLAGS.is_parsed():
            flags.FLAGS.unparse_flags()
        code, _, err = run_main(cli.main, argv)
        return check_one_error_line(code, err, *fragments)
    return run
