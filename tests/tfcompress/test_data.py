import gzip
import os

import numpy as np
import pytest

from tfcompress import data
from tfcompress.data import DataError


def test_fashion_mnist_is_the_real_thing(fashion_mnist):
    ds = fashion_mnist
    assert ds.x_train.shape == (60000, 28, 28, 1)
    assert ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top"
    assert ds.x_train.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Fashion-MNIST is balanced: 6,000 train and 1,000 test images a class.
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


def _write_idx_images(path, images, compress=True):
    header = bytes([0, 0, 8, 3]) + np.array(images.shape, ">u4").tobytes()
    raw = header + images.astype(np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    _write_idx_images(tmp_path / "a.gz", images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), images)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_idx_names_the_file(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    full = tmp_path / "full"
    _write_idx_images(full, images, compress)
    cut = tmp_path / "train-images-idx3-ubyte.gz"
    cut.write_bytes(full.read_bytes()[:-40])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: truncated"):
        data.read_idx(cut)


def test_not_idx(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(DataError, match=r"x\.idx: not an IDX file"):
        data.read_idx(path)


def test_truncated_real_fashion_file(tmp_path, fashion_mnist):
    src = os.path.join(fashion_mnist.source, "train-labels-idx1-ubyte.gz")
    for name in data._FASHION_FILES.values():
        os.symlink(os.path.join(fashion_mnist.source, name + ".gz"), tmp_path / (name + ".gz"))
    os.unlink(tmp_path / "train-labels-idx1-ubyte.gz")
    with open(src, "rb") as f:
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(f.read()[:20000])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: truncated"):
        data.load_dataset(f"fashion_mnist:{tmp_path}")


def test_fashion_dir_with_missing_files(tmp_path):
    with pytest.raises(DataError, match="Fashion-MNIST files missing: train-images-idx3-ubyte"):
        data.load_fashion_mnist(str(tmp_path))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_scale_maps_stored_values_the_same_way_for_every_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    spec = _npz(tmp_path / "d.npz", x=x, y=rng.integers(0, 3, 20), x_test=xt,
                y_test=[0, 1, 2, 0, 1, 2])
    auto = data.load_dataset(spec)
    np.testing.assert_allclose(auto.x_test, xt / 255.0, rtol=1e-6)
    assert auto.scale == "unit" and "uint8 values scaled unit" in auto.summary()
    raw = data.load_dataset(spec, scale="none")  # a model with Rescaling(1/255) inside
    np.testing.assert_array_equal(raw.x_train, x.astype(np.float32))
    assert raw.value_range == (float(min(x.min(), xt.min())), float(max(x.max(), xt.max())))
    sym = data.load_dataset(spec, scale="symmetric")
    np.testing.assert_allclose(sym.x_train, x / 127.5 - 1, rtol=1e-6, atol=1e-6)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    norm = data.load_dataset(spec, scale="unit", mean=mean, std=std)
    np.testing.assert_allclose(norm.x_test, (xt / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    # Float data is kept as stored by "auto", divided by "unit".
    floats = _npz(tmp_path / "f.npz", x=x.astype(np.float32), y=np.arange(20) % 3)
    assert data.load_dataset(floats).value_range[1] > 200
    assert data.load_dataset(floats, scale="unit").value_range[1] <= 1.0
    with pytest.raises(data.DataError, match="data.mean has 2 values but the data has 3"):
        data.load_dataset(spec, mean=[0.5, 0.5])
    with pytest.raises(data.DataError, match="unknown data scale 'pixels'"):
        data.load_dataset(spec, scale="pixels")


def test_npz_with_test_split(tmp_path):
    rng = np.random.default_rng(0)
    spec = _npz(tmp_path / "d.npz", x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
                y=rng.integers(0, 3, 20), x_test=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
                y_test=np.array([0, 1, 2, 0, 1, 2]))
    ds = data.load_dataset(spec)
    assert ds.x_train.shape == (20, 8, 8, 1) and ds.x_test.shape == (6, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0
    assert ds.num_classes == 3 and ds.y_test.tolist() == [0, 1, 2, 0, 1, 2]


def test_npz_without_test_split_is_seeded(tmp_path):
    x = np.arange(50, dtype=np.float32).reshape(50, 1)
    spec = _npz(tmp_path / "d.npz", x=x, y=np.arange(50) % 2)
    a = data.load_dataset(spec, test_fraction=0.2, seed=1)
    b = data.load_dataset(spec, test_fraction=0.2, seed=1)
    c = data.load_dataset(spec, test_fraction=0.2, seed=2)
    assert len(a.x_train) == 40 and len(a.x_test) == 10
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    # Train and test are disjoint and together are all rows.
    assert sorted(np.concatenate([a.x_train, a.x_test]).ravel().tolist()) == list(range(50))


def test_npz_one_hot_labels(tmp_path):
    spec = _npz(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32), y=np.eye(4)[[3, 0, 1, 2]],
                x_test=np.zeros((1, 2), np.float32), y_test=np.eye(4)[[2]])
    assert data.load_dataset(spec).y_train.tolist() == [3, 0, 1, 2]


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((3, 2))), r"needs arrays 'x' and 'y'.*missing \['y'\]"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(4, int)), "'x' has 3 rows but 'y' has 4"),
    (dict(x=np.full((3, 2), np.nan), y=np.zeros(3, int)), "NaN or Inf"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, int), x_test=np.zeros((1, 2))), "both 'x_test' and"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, int), x_test=np.zeros((1, 5)), y_test=np.zeros(1, int)),
     r"'x_test' rows have shape \(5,\)"),
    (dict(x=np.zeros((3, 2)), y=np.array([0.5, 1, 2])), "integer class ids"),
    (dict(x=np.zeros((0, 2)), y=np.zeros(0, int)), "'x' is empty"),
])
def test_npz_errors(tmp_path, arrays, message):
    spec = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        data.load_dataset(spec)


def test_npz_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"nope\.npz: no such npz file"):
        data.load_dataset(f"npz:{tmp_path}/nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"bad\.npz: cannot read npz file"):
        data.load_dataset(f"npz:{bad}")


@pytest.mark.parametrize("spec", ["", "mnist", "npz", "npz:", "hdf5:x"])
def test_unknown_specs(spec):
    with pytest.raises(DataError, match="fashion_mnist, fashion_mnist:DIR, npz:PATH"):
        data.load_dataset(spec)


def test_image_folder(tmp_path):
    import tensorflow as tf
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        os.makedirs(tmp_path / label)
        for i in range(5):
            img = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            tf.io.write_file(str(tmp_path / label / f"{i}.png"), tf.io.encode_png(img))
    ds = data.load_dataset(f"imagefolder:{tmp_path}", image_size=(8, 8), test_fraction=0.2)
    assert ds.class_names == ["cat", "dog"]
    assert ds.x_train.shape == (8, 8, 8, 3) and ds.x_test.shape == (2, 8, 8, 3)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == [0] * 5 + [1] * 5


def test_tfds_without_package_is_clear():
    pytest.importorskip("tensorflow")
    try:
        import tensorflow_datasets  # noqa: F401
        pytest.skip("tensorflow-datasets is installed")
    except ImportError:
        pass
    with pytest.raises(DataError, match=r"tensorflow-datasets.*tfcompress\[tfds\]"):
        data.load_dataset("tfds:mnist")


def test_calibration_samples_are_deterministic():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    a = data.calibration_samples(x, 10, seed=3)
    assert a.shape == (10, 1) and len(np.unique(a)) == 10
    np.testing.assert_array_equal(a, data.calibration_samples(x, 10, seed=3))
    assert not np.array_equal(a, data.calibration_samples(x, 10, seed=4))
    assert len(data.calibration_samples(x, 1000)) == 100
    with pytest.raises(DataError, match="empty"):
        data.calibration_samples(np.zeros((0, 1)), 10)
