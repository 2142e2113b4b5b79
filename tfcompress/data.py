"""Data sets as numpy arrays: one entry point, `load_dataset(spec)`.

Specs:
    "fashion_mnist"            the real Fashion-MNIST IDX files (see below)
    "fashion_mnist:DIR"        the IDX files in DIR
    "npz:PATH"                 arrays x, y and optionally x_test, y_test
    "imagefolder:PATH"         one sub-folder per class (PATH/train, PATH/test if present)
    "tfds:NAME"                a TensorFlow Datasets set (needs `pip install tensorflow-datasets`)

Images come back as float32 NHWC, labels as int64 class ids. How stored values
map to the model's input is `scale` (SCALES): "auto" divides uint8 data (and
8-bit image files) by 255 and keeps other data as stored; "unit" always divides
by 255; "none" keeps the stored values (a model with `Rescaling(1/255)` inside
wants uint8 pixels as they are); "symmetric" maps 0..255 to [-1, 1]; then
`mean`/`std` (a number or one per channel) normalise: (x - mean) / std. Fashion-MNIST is looked for in:
an explicit DIR, `$TFCOMPRESS_DATA`, /usr/share/datasets/fashion-mnist (Debian
package `dataset-fashion-mnist`), the Keras cache (~/.keras/datasets), and
finally downloaded with `keras.datasets.fashion_mnist`.

Example:
    ds = load_dataset("fashion_mnist")
    ds.x_train.shape, ds.num_classes        # (60000, 28, 28, 1), 10
    raw = load_dataset("npz:pixels.npz", scale="none")   # uint8 values kept as 0..255
    calib = calibration_samples(ds.x_train, 200, seed=0)
"""

import dataclasses
import gzip
import os
import sys
from typing import Optional

import numpy as np

from tfcompress.errors import DataError, run_cli

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPEC_HELP = ("use fashion_mnist, fashion_mnist:DIR, npz:PATH, imagefolder:PATH "
             "or tfds:NAME")
# Without a 'labels' array the class count is the largest id + 1; a stray huge id
# (2**40) would otherwise allocate a name per class until memory runs out.
MAX_CLASSES = 100_000
SCALES = ("auto", "unit", "none", "symmetric")
_SCALE_WORDS = {"unit": "/ 255 -> [0, 1]", "none": "as stored",
                "symmetric": "/ 127.5 - 1 -> [-1, 1]"}


@dataclasses.dataclass
class Dataset:
    """Train and test splits plus what a model needs to know about them."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    value_range: tuple = (0.0, 1.0)
    source: str = ""
    stored_dtype: str = "float32"   # the values' type on disk: "uint8" for pixels
    scale: str = "none"             # how they were mapped to the model's input (SCALES)
    normalization: Optional[tuple] = None  # (mean, std) applied after `scale`

    @property
    def input_shape(self):
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def scale_words(self):
        words = f"{self.scale} ({_SCALE_WORDS[self.scale]})"
        if self.normalization:
            words += " then (x - {}) / {}".format(*self.normalization)
        return words

    def summary(self):
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
                f"input {self.input_shape}, {self.num_classes} classes, "
                f"{self.stored_dtype} values scaled {self.scale_words}, in "
                f"[{self.value_range[0]:g}, {self.value_range[1]:g}], from {self.source}")


def load_dataset(spec, data_dir=None, image_size=(96, 96), test_fraction=0.2, seed=0,
                 scale="auto", mean=None, std=None):
    """Loads a data set named by `spec` and scales it (see the module docstring).

    Args:
        spec: the data set spec string.
        data_dir: for fashion_mnist, the folder with the IDX files (same as
            "fashion_mnist:DIR").
        image_size: (height, width) images are resized to, for imagefolder.
        test_fraction: share held out as test when the source has no test split
            (npz without x_test, imagefolder without a test/ folder).
        seed: for that split; the same seed gives the same split.
        scale, mean, std: see `scale_dataset`.

    Returns:
        A `Dataset`.

    Raises:
        DataError: unknown spec, missing or corrupt files, mismatched arrays.
    """
    if not isinstance(spec, str) or not spec:
        raise DataError(f"dataset spec must be a non-empty string, got {spec!r}; {SPEC_HELP}")
    if scale not in SCALES:  # checked before minutes of loading
        raise DataError(f"unknown data scale {scale!r}; valid: {', '.join(SCALES)}")
    kind, _, arg = spec.partition(":")
    if kind == "fashion_mnist":
        ds = load_fashion_mnist(arg or data_dir)
    elif not arg:
        if kind in ("npz", "imagefolder", "tfds"):
            raise DataError(f"dataset spec {spec!r} needs a path or name after ':'; {SPEC_HELP}")
        raise DataError(f"unknown dataset {spec!r}; {SPEC_HELP}")
    elif kind == "npz":
        ds = load_npz(arg, test_fraction=test_fraction, seed=seed)
    elif kind == "imagefolder":
        ds = load_image_folder(arg, image_size=image_size, test_fraction=test_fraction, seed=seed)
    elif kind == "tfds":
        ds = load_tfds(arg)
    else:
        raise DataError(f"unknown dataset kind {kind!r} in {spec!r}; {SPEC_HELP}")
    return scale_dataset(ds, scale, mean, std)


def scale_dataset(ds, scale="auto", mean=None, std=None):
    """Maps `ds`'s stored values to the model's input, in place; returns `ds`.

    Args:
        ds: a `Dataset` as loaded (stored values, `ds.scale` "none").
        scale: "auto" ("unit" for uint8 data, else "none"), "unit" (x / 255),
            "none", "symmetric" (x / 127.5 - 1).
        mean, std: None, a number, or one number per channel (the last axis):
            then x = (x - mean) / std.

    Raises:
        DataError: an unknown scale, a std <= 0, or a per-channel list whose
            length is not the channel count.

    Example:
        scale_dataset(load_dataset("npz:x.npz", scale="none"), "unit", mean=0.5, std=0.25)
    """
    if scale not in SCALES:
        raise DataError(f"unknown data scale {scale!r}; valid: {', '.join(SCALES)}")
    if ds.scale != "none":
        raise DataError(f"{ds.name} is already scaled ({ds.scale}); load it with scale='none'")
    if scale == "auto":
        scale = "unit" if ds.stored_dtype == "uint8" else "none"
    channels = ds.x_train.shape[-1]
    stats = []
    for key, value in (("mean", mean), ("std", std)):
        if value is None:
            stats.append(None)
            continue
        arr = np.asarray(value, np.float32).reshape(-1)
        if len(arr) not in (1, channels):
            raise DataError(f"data.{key} has {len(arr)} values but the data has {channels} "
                            f"channel(s) (the last axis); give one number or {channels}")
        if key == "std" and not np.all(arr > 0):
            raise DataError(f"data.std must be > 0, got {value!r}")
        stats.append(arr)
    for x in (ds.x_train, ds.x_test):  # in place: the loaders made these float32 copies
        if scale == "unit":
            x /= np.float32(255.0)
        elif scale == "symmetric":
            x /= np.float32(127.5)
            x -= np.float32(1.0)
        if stats[0] is not None:
            x -= stats[0]
        if stats[1] is not None:
            x /= stats[1]
    ds.scale = scale
    if mean is not None or std is not None:
        ds.normalization = (0 if mean is None else mean, 1 if std is None else std)
    ds.value_range = _value_range(ds.x_train, ds.x_test)
    return ds


def _value_range(*arrays):
    present = [a for a in arrays if len(a)]
    return (float(min(a.min() for a in present)), float(max(a.max() for a in present)))


def read_idx(path):
    """Reads an IDX file (optionally gzipped) into a uint8 numpy array.

    Raises:
        DataError: naming the file, when it is truncated, corrupt or not IDX.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as e:  # includes gzip.BadGzipFile
        raise DataError(f"{path}: cannot read IDX file: {e}") from e
    except EOFError as e:
        raise DataError(f"{path}: truncated gzip stream (re-download or reinstall the file)") from e
    if not raw:
        raise DataError(f"{path}: empty IDX file (re-download or reinstall the file)")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: IDX element type 0x{dtype_code:02x} is not unsigned byte (0x08)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        shape = dims if ndim <= 4 else f"{ndim} dimensions"  # a corrupt header: keep it short
        raise DataError(f"{path}: truncated or corrupt IDX file: {len(raw)} bytes, "
                        f"header says {shape} needs {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    return None


def _fashion_dirs(explicit):
    if explicit:
        return [explicit]
    dirs = []
    env = os.environ.get("TFCOMPRESS_DATA")
    if env:
        dirs += [os.path.join(env, "fashion-mnist"), env]
    dirs += [DEBIAN_FASHION_MNIST_DIR,
             os.path.join(os.path.expanduser("~"), ".keras", "datasets", "fashion-mnist")]
    return dirs


def load_fashion_mnist(data_dir=None, download=True):
    """Fashion-MNIST (60,000 train / 10,000 test, 28x28x1, 10 classes), as stored
    (0..255; `scale_dataset` or `load_dataset("fashion_mnist")` scales it).

    Args:
        data_dir: folder holding the four IDX files; when given, only it is searched.
        download: fall back to `keras.datasets.fashion_mnist` (needs internet).
    """
    arrays, source = None, None
    if data_dir and os.path.isfile(data_dir):
        raise DataError(f"{data_dir}: is a file; give the folder that holds the four "
                        "Fashion-MNIST IDX files")
    for directory in _fashion_dirs(data_dir):
        paths = {k: _find_idx(directory, stem) for k, stem in _FASHION_FILES.items()}
        if all(paths.values()):
            arrays = {k: read_idx(p) for k, p in paths.items()}
            source = directory
            break
        if data_dir:
            missing = [_FASHION_FILES[k] + "[.gz]" for k, p in paths.items() if not p]
            raise DataError(f"{directory}: Fashion-MNIST files missing: {', '.join(missing)}")
    if arrays is None:
        if not download:
            raise DataError("Fashion-MNIST not found in " + ", ".join(_fashion_dirs(None))
                            + "; run `make data` or apt-get install dataset-fashion-mnist")
        arrays, source = _download_fashion_mnist(), "keras.datasets.fashion_mnist (download)"
    fix = "reinstall the files (apt-get install --reinstall dataset-fashion-mnist, or `make data`)"
    for k in ("x_train", "x_test"):
        if arrays[k].ndim != 3 or arrays[k].shape[1:] != (28, 28) or not len(arrays[k]):
            raise DataError(f"{source}: {k} has shape {arrays[k].shape}, expected (N, 28, 28) "
                            f"with N >= 1; {fix}")
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        if len(arrays[x]) != len(arrays[y]):
            raise DataError(f"{source}: {x} has {len(arrays[x])} images but {y} "
                            f"has {len(arrays[y])} labels")
        # Sparse categorical cross-entropy turns an id >= 10 into a NaN loss, silently.
        if arrays[y].max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{source}: {y} has class id {int(arrays[y].max())}, but "
                            f"Fashion-MNIST has {len(FASHION_MNIST_CLASSES)} classes (0-9); {fix}")
    return Dataset(
        name="fashion_mnist",
        x_train=_to_float_images(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=_to_float_images(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        class_names=list(FASHION_MNIST_CLASSES),
        value_range=(0.0, 255.0), source=source, stored_dtype="uint8",
    )


def _download_fashion_mnist():
    from tfcompress.keras import keras
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:  # no network, proxy, partial download...
        raise DataError(
            "Fashion-MNIST is not installed and the download failed "
            f"({' '.join(str(e).split())[:200]}); install the Debian package "
            "dataset-fashion-mnist, or put the four IDX files in a folder and set "
            "TFCOMPRESS_DATA to it") from e
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _features(x, path, key):
    """Checks that `x` holds real numbers in rows (N, ...), at least one."""
    x = np.asarray(x)
    # Complex values would lose their imaginary part in the cast; strings fail it.
    if x.ndim < 2 or not _is_real_number_dtype(x.dtype):
        raise DataError(f"{path}: '{key}' must be a numeric array (N, ...) of integers or "
                        f"floats, got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise DataError(f"{path}: '{key}' is empty (0 rows); it needs at least one sample")
    return x


def _finite_images(x, path, key):
    """`x` as float32 images; NaN/Inf (also float64 values beyond float32) refused."""
    x = _to_float_images(x)
    finite = np.isfinite(x)
    if not finite.all():
        rows = int((~finite.reshape(len(x), -1)).any(axis=1).sum())
        raise DataError(f"{path}: '{key}' contains NaN or Inf values (in {rows} of {len(x)} "
                        "rows; values beyond float32's range count too); clean or drop those "
                        "rows")
    return x


def _to_float_images(x):
    """A float32 copy of the stored values (scaled later, `scale_dataset`); (N, H, W)
    gets a channel axis."""
    if x.ndim == 3:
        x = x[..., None]
    with np.errstate(over="ignore"):  # values beyond float32 become Inf; callers check
        return x.astype(np.float32)


def _is_real_number_dtype(dtype):
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _labels(y, path, key):
    y = np.asarray(y)
    if not (_is_real_number_dtype(y.dtype) or y.dtype == np.bool_):
        # Strings or complex numbers: np.mod below would fail with a numpy TypeError.
        raise DataError(f"{path}: {key} must hold integer class ids (or one-hot rows), got "
                        f"{y.dtype} values; map class names to ids 0..N-1 (and store the "
                        "names as 'labels')")
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    y = y.reshape(-1) if y.ndim == 2 else y
    integral = np.issubdtype(y.dtype, np.integer) or bool(np.all(np.mod(y, 1) == 0))
    if y.ndim != 1 or not integral:
        raise DataError(f"{path}: {key} must hold integer class ids (or one-hot rows), "
                        f"got {y.dtype} with shape {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: {key} has negative class id {y.min()}")
    return y.astype(np.int64)


def _split(x, y, test_fraction, seed):
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(x) < 2:
        raise DataError(f"cannot split {len(x)} sample(s) into training and test sets; give "
                        "at least 2 samples, or the test split as 'x_test' and 'y_test'")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_npz(path, test_fraction=0.2, seed=0):
    """Arrays `x`, `y` (and optionally `x_test`, `y_test`) from an .npz file, as stored
    (`scale_dataset` maps them to the model's input).

    Instead of `x`, quantized features `x_int8` with `input_scale` and
    `input_zero_point` (the MLPerf Tiny test files) are dequantized to float.

    Without `x_test`, `test_fraction` of the rows is held out by a seeded split.
    """
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; give an .npz file (npz:PATH)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such npz file")
    fix = "save it with np.savez(path, x=..., y=...)"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"{path}: cannot read npz file: {e.strerror or e}") from e
    # np.load reads a .npy as one array and tries anything else as a pickle,
    # whose refusal would wrongly suggest allow_pickle for a corrupt file.
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: cannot read npz file: it is a .npy file (a single array); {fix}")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path}: cannot read npz file: it is not a zip archive (empty, "
                        f"truncated, corrupt or another format); {fix}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled), OSError, zlib.error
        reason = f"{' '.join(str(e).split())} (truncated or corrupt?)"
        if "allow_pickle" in reason:
            reason = ("it holds object (pickled) arrays, which are refused because unpickling "
                      "can run code; store numeric arrays")
        raise DataError(f"{path}: cannot read npz file: {reason}; {fix}") from e
    if "x" not in arrays and {"x_int8", "input_scale", "input_zero_point"} <= set(arrays):
        # Quantized features as MLPerf Tiny ships them: x = (x_int8 - zero_point) * scale.
        arrays["x"] = ((arrays["x_int8"].astype(np.float32) - float(arrays["input_zero_point"]))
                       * float(arrays["input_scale"])).astype(np.float32)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: npz needs arrays 'x' and 'y' (optionally 'x_test', "
                        f"'y_test'); missing {missing}, found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: give both 'x_test' and 'y_test' or neither")
    x, y = _features(arrays["x"], path, "x"), _labels(arrays["y"], path, "y")
    stored_dtype = x.dtype.name
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} rows but 'y' has {len(y)}")
    x = _finite_images(x, path, "x")
    if "x_test" in arrays:
        xt = _finite_images(_features(arrays["x_test"], path, "x_test"), path, "x_test")
        yt = _labels(arrays["y_test"], path, "y_test")
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: 'x_test' rows have shape {xt.shape[1:]} but 'x' rows "
                            f"have {x.shape[1:]}")
        if len(xt) != len(yt):
            raise DataError(f"{path}: 'x_test' has {len(xt)} rows but 'y_test' has {len(yt)}")
    else:
        x, y, xt, yt = _split(x, y, test_fraction, seed)
    n_classes = int(max(y.max(), yt.max() if len(yt) else 0)) + 1
    if n_classes > MAX_CLASSES and "labels" not in arrays:
        raise DataError(f"{path}: class id {n_classes - 1} is too large: ids must run from 0 to "
                        f"the number of classes - 1 (at most {MAX_CLASSES:,} classes without a "
                        "'labels' array); renumber the labels")
    names = [str(n) for n in arrays["labels"]] if "labels" in arrays else [
        str(i) for i in range(n_classes)]
    if len(names) < n_classes:
        raise DataError(f"{path}: 'labels' names {len(names)} classes but labels go up to "
                        f"{n_classes - 1}")
    lo = float(min(x.min(), xt.min() if len(xt) else x.min()))
    hi = float(max(x.max(), xt.max() if len(xt) else x.max()))
    return Dataset(name=os.path.basename(path), x_train=x, y_train=y, x_test=xt, y_test=yt,
                   class_names=names, value_range=(lo, hi), source=path,
                   stored_dtype=stored_dtype)


def load_image_folder(path, image_size=(96, 96), test_fraction=0.2, seed=0):
    """Images in PATH/<class>/..., or PATH/train/<class> and PATH/test/<class>.

    Uses `keras.utils.image_dataset_from_directory`; images are resized to
    `image_size`; their 0..255 values count as uint8 for `scale`. All images are
    held in memory.
    """
    from tfcompress.keras import keras, tf
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such image folder")
    kwargs = dict(image_size=tuple(image_size), batch_size=None, shuffle=False, labels="inferred",
                  label_mode="int")
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")
    try:
        if os.path.isdir(train_dir) and os.path.isdir(test_dir):
            train = keras.utils.image_dataset_from_directory(train_dir, **kwargs)
            test = keras.utils.image_dataset_from_directory(
                test_dir, class_names=train.class_names, **kwargs)
            names = train.class_names
            x, y = _stack(train)
            xt, yt = _stack(test)
        else:
            ds = keras.utils.image_dataset_from_directory(path, **kwargs)
            names = ds.class_names
            x, y, xt, yt = _split(*_stack(ds), test_fraction, seed)
    except ValueError as e:
        raise DataError(f"{path}: {' '.join(str(e).split())}") from e
    except tf.errors.OpError as e:  # decoding happens lazily, inside tf.data: no file name
        raise DataError(f"{_undecodable_image(path) or path}: cannot decode this image "
                        "(corrupt, truncated or not really an image); delete or re-save it") from e
    if len(x) == 0:
        raise DataError(f"{path}: no images found (expected PATH/<class>/<image>)")
    return Dataset(name=os.path.basename(os.path.normpath(path)), x_train=x, y_train=y,
                   x_test=xt, y_test=yt, class_names=list(names), source=path,
                   value_range=(0.0, 255.0), stored_dtype="uint8")


def _undecodable_image(root):
    """The first image file under `root` TensorFlow cannot decode, or None."""
    from tfcompress.keras import tf
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if not name.lower().endswith((".bmp", ".gif", ".jpeg", ".jpg", ".png")):
                continue
            path = os.path.join(folder, name)
            try:
                tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
            except tf.errors.OpError:
                return path
    return None


def _stack(ds):
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    return np.stack(xs).astype(np.float32), np.asarray(ys, np.int64)


def load_tfds(name):
    """A TensorFlow Datasets image-classification set with train and test splits."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"tfds:{name} needs tensorflow-datasets; install it with "
                        "pip install 'tfcompress[tfds]'") from e
    try:
        (x, y), (xt, yt) = tfds.as_numpy(tfds.load(
            name, split=["train", "test"], as_supervised=True, batch_size=-1))
        info = tfds.builder(name).info
        names = list(info.features["label"].names)
    except Exception as e:
        raise DataError(f"tfds:{name}: {' '.join(str(e).split())[:300]}") from e
    return Dataset(name=name, x_train=_to_float_images(x), y_train=y.astype(np.int64),
                   x_test=_to_float_images(xt), y_test=yt.astype(np.int64),
                   class_names=names, source=f"tfds:{name}", stored_dtype=x.dtype.name)


def subsample(x, y, n, seed=0):
    """The same `n` rows of (x, y) for the same seed; all rows when n is None."""
    if n is None or n >= len(x):
        return x, y
    if n <= 0:
        raise DataError(f"sample count must be positive, got {n}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[idx], y[idx]


def calibration_samples(x, n=200, seed=0):
    """`n` rows of `x` for a representative dataset, deterministic by `seed`.

    Example:
        converter.representative_dataset = lambda: ([s[None]] for s in calibration_samples(x))
    """
    if len(x) == 0:
        raise DataError("cannot draw calibration samples from an empty array")
    return subsample(np.asarray(x, np.float32), np.zeros(len(x)), n, seed)[0]


def main(argv):
    """`python -m tfcompress.data SPEC`: load SPEC and print a summary."""
    if len(argv) != 2:
        print("usage: python -m tfcompress.data SPEC  (" + SPEC_HELP + ")", file=sys.stderr)
        return 2

    def summarize():
        print(load_dataset(argv[1]).summary())
        return 0

    # Any user error (not only DataError) is one `error:` line, as in the tfcompress CLI.
    return run_cli(summarize)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
