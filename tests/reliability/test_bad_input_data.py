"""Bad data given to tfcompress.data and `python -m tfcompress.data`: one clear DataError each.

Every case checks the message names the file (or array) and the problem, so a
user can fix it without reading code.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tfcompress import data
from tfcompress.data import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
X = np.random.default_rng(0).random((10, 4, 4, 1)).astype(np.float32)
Y = np.arange(10) % 3

# name -> (arrays saved with np.savez, fragments the message must hold)
BAD_NPZ = {
    "x_empty": (dict(x=X[:0], y=Y[:0]), ["'x' is empty"]),
    "x_test_empty": (dict(x=X, y=Y, x_test=X[:0], y_test=Y[:0]), ["'x_test' is empty"]),
    "one_row_to_split": (dict(x=X[:1], y=Y[:1]), ["cannot split 1 sample", "'x_test'"]),
    "x_strings": (dict(x=np.array([["a", "b"]] * 10), y=Y), ["'x' must be a numeric array",
                                                              "<U1"]),
    "x_complex": (dict(x=X.astype(np.complex64), y=Y), ["'x' must be a numeric", "complex64"]),
    "x_bool": (dict(x=X > 0.5, y=Y), ["'x' must be a numeric", "bool"]),
    "x_one_dimensional": (dict(x=np.arange(10.0), y=Y), ["'x' must be a numeric array (N, ...)"]),
    "x_test_strings": (dict(x=X, y=Y, x_test=np.array([["a"]] * 3), y_test=Y[:3]),
                       ["'x_test' must be a numeric array"]),
    "x_nan": (dict(x=np.where(X > 0.9, np.nan, X), y=Y), ["'x' contains NaN or Inf", "rows"]),
    "x_inf": (dict(x=np.where(X > 0.9, np.inf, X), y=Y), ["'x' contains NaN or Inf"]),
    "x_float64_beyond_float32": (dict(x=np.full((10, 4), 1e300), y=Y), ["NaN or Inf",
                                                                         "float32"]),
    "x_test_nan": (dict(x=X, y=Y, x_test=np.full((3, 4, 4, 1), np.nan, np.float32),
                        y_test=Y[:3]), ["'x_test' contains NaN or Inf"]),
    "y_strings": (dict(x=X, y=np.array(["cat"] * 10)), ["y must hold integer class ids", "<U3",
                                                        "'labels'"]),
    "y_complex": (dict(x=X, y=Y.astype(complex)), ["y must hold integer class ids"]),
    "y_fractional": (dict(x=X, y=Y + 0.5), ["y must hold integer class ids"]),
    "y_nan": (dict(x=X, y=np.full(10, np.nan)), ["y must hold integer class ids"]),
    "y_negative": (dict(x=X, y=Y - 1), ["y has negative class id -1"]),
    "y_test_negative": (dict(x=X, y=Y, x_test=X[:3], y_test=-Y[:3] - 1),
                        ["y_test has negative class id"]),
    "y_huge_class_id": (dict(x=X, y=np.full(10, 2 ** 40)), ["class id 1099511627776 is too large",
                                                             "renumber"]),
    "y_three_dimensional": (dict(x=X, y=Y.reshape(10, 1, 1)), ["integer class ids",
                                                                "(10, 1, 1)"]),
    "rows_mismatch": (dict(x=X, y=Y[:7]), ["'x' has 10 rows but 'y' has 7"]),
    "x_test_shape_mismatch": (dict(x=X, y=Y, x_test=np.zeros((3, 5, 5, 1)), y_test=Y[:3]),
                              ["'x_test' rows have shape (5, 5, 1)", "(4, 4, 1)"]),
    "x_test_without_y_test": (dict(x=X, y=Y, x_test=X[:3]), ["both 'x_test' and 'y_test'"]),
    "y_missing": (dict(x=X), ["needs arrays 'x' and 'y'", "missing ['y']"]),
    "labels_too_few": (dict(x=X, y=Y, labels=np.array(["a"])), ["'labels' names 1 classes",
                                                                 "up to 2"]),
}


@pytest.mark.parametrize("arrays, fragments", BAD_NPZ.values(), ids=BAD_NPZ.keys())
def test_bad_npz_arrays(tmp_path, arrays, fragments):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as info:
        data.load_dataset(f"npz:{path}")
    message = str(info.value)
    assert message.startswith(f"{path}") or "cannot split" in message, message
    for fragment in fragments:
        assert fragment in message


def test_pickled_object_arrays_are_refused_without_suggesting_unpickling(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}] * 10, dtype=object), y=Y)
    with pytest.raises(DataError, match=r"objects\.npz: cannot read npz file: it holds object "
                                        r"\(pickled\) arrays, which are refused"):
        data.load_dataset(f"npz:{path}")


@pytest.mark.parametrize("name, match", [pytest.param(*case, id=case[0]) for case in [
    ("truncated_npz", r"truncated\.npz: cannot read npz file: .*truncated or corrupt"),
    ("random_npz", r"random\.npz: cannot read npz file: it is not a zip archive"),
    ("empty_npz", r"empty\.npz: cannot read npz file: it is not a zip archive \(empty"),
    ]])
def test_corrupt_npz_files(corrupt_files, name, match):
    with pytest.raises(DataError, match=match) as info:
        data.load_dataset(f"npz:{corrupt_files[name]}")
    # The old message for random bytes suggested allow_pickle: never for a broken file.
    assert "allow_pickle" not in str(info.value)


def test_npy_file_given_as_npz(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    with pytest.raises(DataError, match=r"x\.npy: cannot read npz file: it is a \.npy file "
                                        r"\(a single array\); save it with np\.savez"):
        data.load_dataset(f"npz:{path}")


@pytest.mark.parametrize("spec, match", [
    ("npz:{tmp}/missing.npz", r"missing\.npz: no such npz file"),
    ("npz:{tmp}", r": is a folder; give an \.npz file"),
    ("fashion_mnist:{tmp}/nowhere", r"nowhere: Fashion-MNIST files missing: "
                                    r"train-images-idx3-ubyte\[\.gz\]"),
    ("fashion_mnist:{tmp}/a_file", r"a_file: is a file; give the folder that holds the four"),
    ("imagefolder:{tmp}/nowhere", r"nowhere: no such image folder"),
    ("imagefolder:{tmp}/empty_folder", r"No images found"),
    ("csv:{tmp}/x.csv", r"unknown dataset kind 'csv'.*npz:PATH"),
    ("npz:", r"needs a path or name after ':'"),
    ("", r"must be a non-empty string"),
], ids=["missing_npz", "folder_as_npz", "missing_fashion_folder", "file_as_fashion_folder",
        "missing_image_folder", "empty_image_folder", "unknown_kind", "npz_without_path",
        "empty_spec"])
def test_missing_paths_and_bad_specs(tmp_path, spec, match):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(DataError, match=match):
        data.load_dataset(spec.format(tmp=tmp_path))


def test_unreadable_npz(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    path = tmp_path / "locked.npz"
    np.savez(path, x=X, y=Y)
    os.chmod(path, 0)
    try:
        with pytest.raises(DataError, match=r"locked\.npz: cannot read npz file: Permission"):
            data.load_dataset(f"npz:{path}")
    finally:
        os.chmod(path, 0o600)


@pytest.mark.parametrize("name, match", [pytest.param(*case, id=case[0]) for case in [
    ("truncated_idx", r"truncated-idx3-ubyte: truncated or corrupt IDX file"),
    ("truncated_idx_gz", r"truncated-idx3-ubyte\.gz: truncated gzip stream"),
    ("random_idx", r"random-idx3-ubyte: not an IDX file \(bad magic number\)"),
    ("random_idx_gz", r"random-idx3-ubyte\.gz: not an IDX file \(bad magic number\)"),
    ("empty_idx", r"empty-idx3-ubyte: empty IDX file"),
    ("empty_idx_gz", r"empty-idx3-ubyte\.gz: empty IDX file"),
    ]])
def test_corrupt_idx_files(corrupt_files, name, match):
    with pytest.raises(DataError, match=match):
        data.read_idx(corrupt_files[name])


def test_idx_gzip_with_a_garbage_payload(tmp_path):
    path = tmp_path / "garbage.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    with pytest.raises(DataError, match=r"garbage\.gz: cannot read IDX file"):
        data.read_idx(path)


def _fashion_dir(root, write_idx, x_train=(5, 28, 28), y_train=None, y_test=None):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, x_train),
              "train-labels-idx1-ubyte.gz": np.arange(x_train[0]) % 10
              if y_train is None else y_train,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": np.array([0, 1]) if y_test is None else y_test}
    for name, array in arrays.items():
        write_idx(root / name, np.asarray(array), True)
    return f"fashion_mnist:{root}"


@pytest.mark.parametrize("layout, match", [
    (dict(y_test=np.array([0, 12])), r"y_test has class id 12, but Fashion-MNIST has 10 "
                                     r"classes \(0-9\); reinstall"),
    (dict(x_train=(0, 28, 28), y_train=np.zeros(0)), r"x_train has shape \(0, 28, 28\), "
                                                     r"expected \(N, 28, 28\) with N >= 1"),
    (dict(x_train=(5, 32, 32)), r"x_train has shape \(5, 32, 32\), expected \(N, 28, 28\)"),
    (dict(y_train=np.zeros(4)), r"x_train has 5 images but y_train has 4 labels"),
], ids=["label_out_of_range", "no_training_images", "wrong_image_size", "count_mismatch"])
def test_bad_fashion_mnist_folder(tmp_path, write_idx, layout, match):
    spec = _fashion_dir(tmp_path, write_idx, **layout)
    with pytest.raises(DataError, match=match):
        data.load_dataset(spec)


def test_truncated_file_in_fashion_mnist_folder_is_named(tmp_path, write_idx):
    spec = _fashion_dir(tmp_path, write_idx)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-6])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: truncated gzip stream"):
        data.load_dataset(spec)


def test_corrupt_image_in_image_folder_is_named(tmp_path):
    import tensorflow as tf
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        tf.io.write_file(str(tmp_path / label / "good.png"),
                         tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)))
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match=r"dog/broken\.png: cannot decode this image"):
        data.load_dataset(f"imagefolder:{tmp_path}", image_size=(4, 4))


@pytest.mark.parametrize("call, match", [
    (lambda: data.calibration_samples(np.zeros((0, 3))), "empty array"),
    (lambda: data.calibration_samples(X, 0), "sample count must be positive, got 0"),
    (lambda: data.subsample(X, Y, -5), "sample count must be positive, got -5"),
], ids=["calibration_from_empty", "calibration_zero", "subsample_negative"])
def test_bad_sample_counts(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_bad_test_fraction(good_files):
    with pytest.raises(DataError, match=r"test_fraction must be in \(0, 1\), got 1.5"):
        data.load_dataset(f"npz:{good_files['npz']}", test_fraction=1.5)


# ------------------------------------------------------------ python -m tfcompress.data


@pytest.mark.parametrize("spec, fragments", [
    ("npz:/nonexistent/data.npz", ["/nonexistent/data.npz: no such npz file"]),
    ("bogus", ["unknown dataset 'bogus'", "npz:PATH"]),
    ("random_npz", ["random.npz: cannot read npz file", "not a zip archive"]),
    ("y_strings", ["y must hold integer class ids"]),
], ids=["missing_file", "unknown_spec", "random_bytes", "string_labels"])
def test_data_module_main(tmp_path, corrupt_files, run_main, one_error_line, spec, fragments):
    if spec == "random_npz":
        spec = f"npz:{corrupt_files['random_npz']}"
    elif spec == "y_strings":
        np.savez(tmp_path / "s.npz", x=X, y=np.array(["cat"] * 10))
        spec = f"npz:{tmp_path}/s.npz"
    code, out, err = run_main(data.main, ["python -m tfcompress.data", spec])
    assert code == 1 and out == ""
    one_error_line(code, err, *fragments)


def test_data_module_main_without_a_spec(run_main):
    code, _, err = run_main(data.main, ["python -m tfcompress.data"])
    assert code == 2 and err.startswith("usage: python -m tfcompress.data SPEC")


def test_data_module_end_to_end(corrupt_files, one_error_line):
    """The real process: exit status 1, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "tfcompress.data",
                           f"npz:{corrupt_files['truncated_npz']}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    one_error_line(proc.returncode, proc.stderr, "truncated.npz: cannot read npz file")
