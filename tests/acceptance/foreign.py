"""Classifier models "no one on the project wrote", built and saved the ways users do.

Plain tf_keras only (none of tfcompress's model zoo, training or save helpers),
trained briefly on fixed-seed subsets of the real Fashion-MNIST, so the
acceptance suite can run tfcompress on them.

Example:
    built = build_all(tmp_path)          # None when Fashion-MNIST is not installed
    data_paths, models = built
    models["logits"]
    # {"path": ".../logits.keras", "data": "unit", "accuracy": 0.82,
    #  "head": "logits", "format": "keras"}
    np.load(data_paths[models["logits"]["data"]])["x_test"]
"""

import importlib.util
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf_keras, not Keras 3, behind tf.keras
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

from tfcompress.data import read_idx  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
USER_LAYERS_PATH = os.path.join(HERE, "user_layers.py")
DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
          "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
# Pullover vs Bag: a tiny CNN separates them at ~98%, so a pruned model's drop shows.
BINARY_CLASSES = (2, 8)
SCE = "sparse_categorical_crossentropy"


def _idx_file(folder, stem):
    """The IDX file `stem` in `folder`, gzipped or not, or None."""
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def fashion_dir():
    """The folder holding all four Fashion-MNIST IDX files ($TFCOMPRESS_DATA first), or None.

    Example: fashion_dir()  # "/usr/share/datasets/fashion-mnist"
    """
    for folder in (os.environ.get("TFCOMPRESS_DATA"), DEFAULT_FASHION_DIR):
        if folder and all(_idx_file(folder, stem) for stem in _FILES.values()):
            return folder
    return None


def write_data(out_dir, n_train=6000, n_test=1000, seed=0):
    """Writes npz files (x, y, x_test, y_test) in the encodings users feed their models.

    Returns {"uint8", "unit", "symmetric", "binary"} -> path. x is NHWC (N, 28, 28, 1);
    y holds int class ids ("binary": 0 = Pullover, 1 = Bag, from the full splits,
    n_train // 3 and 2 * n_test // 5 samples, half of each class).

    Example: np.load(write_data("/tmp/d")["unit"])["x"].max()  # 1.0
    """
    folder = fashion_dir()
    if folder is None:
        raise FileNotFoundError("Fashion-MNIST IDX files not found; set TFCOMPRESS_DATA")
    raw = {k: read_idx(_idx_file(folder, stem)) for k, stem in _FILES.items()}
    rng = np.random.default_rng(seed)
    tr = rng.choice(len(raw["y_train"]), n_train, replace=False)
    te = rng.choice(len(raw["y_test"]), n_test, replace=False)
    x, x_test = raw["x_train"][tr, ..., None], raw["x_test"][te, ..., None]
    y, y_test = raw["y_train"][tr].astype(np.int64), raw["y_test"][te].astype(np.int64)

    def pair(images, labels, per_class):
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                              for c in BINARY_CLASSES])
        rng.shuffle(idx)
        return (images[idx, ..., None].astype(np.float32) / 255,
                (labels[idx] == BINARY_CLASSES[1]).astype(np.int64))

    bx, by = pair(raw["x_train"], raw["y_train"], n_train // 6)
    bx_test, by_test = pair(raw["x_test"], raw["y_test"], n_test // 5)
    xf, xf_test = x.astype(np.float32), x_test.astype(np.float32)
    arrays = {"uint8": (x, x_test), "unit": (xf / 255, xf_test / 255),
              "symmetric": (xf / 127.5 - 1, xf_test / 127.5 - 1)}
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for key, (a, a_test) in arrays.items():
        paths[key] = os.path.join(out_dir, f"{key}.npz")
        np.savez(paths[key], x=a, y=y, x_test=a_test, y_test=y_test)
    paths["binary"] = os.path.join(out_dir, "binary.npz")
    np.savez(paths["binary"], x=bx, y=by, x_test=bx_test, y_test=by_test)
    return paths


def load_user_layers():
    """Imports user_layers.py by path as module "user_layers" (once), as a user's own code would be."""
    if "user_layers" not in sys.modules:
        spec = importlib.util.spec_from_file_location("user_layers", USER_LAYERS_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["user_layers"] = module
        spec.loader.exec_module(module)
    return sys.modules["user_layers"]


def _cnn(units, activation=None, first=()):
    """The tiny CNN every case shares (~82% on Fashion-MNIST after 5 epochs on 6000 images).

    `first`: layers right after the Input, e.g. [Rescaling(1 / 255)].
    """
    return keras.Sequential([
        keras.Input((28, 28, 1)), *first,
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(units, activation=activation),
    ])


def _two_outputs():
    """Functional model: class probabilities plus a mean-brightness regression head."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    probs = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    brightness = keras.layers.Dense(1, name="brightness")(h)
    return keras.Model(inputs, [probs, brightness])


def _custom(ul):
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, strides=2), ul.Swish(),
        keras.layers.Conv2D(32, 3, strides=2), ul.Swish(),
        keras.layers.Flatten(), ul.ScaledDense(10), keras.layers.Activation("softmax"),
    ])


def accuracy(model, x, y, head):
    """Top-1 accuracy from model.predict: argmax, p > 0.5 (sigmoid) or z > 0 (one logit)."""
    out = model.predict(x.astype(np.float32), batch_size=256, verbose=0)
    out = out[0] if isinstance(out, (list, tuple)) else out  # multi-output: the class head
    if out.shape[-1] == 1:
        pred = out[:, 0] > (0.5 if head == "sigmoid" else 0.0)
    else:
        pred = out.argmax(-1)
    return float(np.mean(pred == y))


def build_models(out_dir, data_paths, epochs=5):
    """Trains and saves every case; returns name -> dict(path, data, accuracy, head, format).

    Example: build_models("/tmp/m", write_data("/tmp/d"))["h5"]["path"]  # "/tmp/m/h5.h5"
    """
    ul = load_user_layers()
    data = {k: dict(np.load(p)) for k, p in data_paths.items()}
    os.makedirs(out_dir, exist_ok=True)
    models = {}

    def fit(make, key, loss=SCE, metrics=None, y=None):
        keras.utils.set_random_seed(len(models))  # fixed, but a different init per case
        model = make()
        model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=metrics)
        d = data[key]
        model.fit(d["x"].astype(np.float32), d["y"] if y is None else y,
                  epochs=epochs, batch_size=64, verbose=0)
        return model

    def save(name, model, key, head="softmax", fmt="keras"):
        path = os.path.join(out_dir, name + {"keras": ".keras", "h5": ".h5", "savedmodel": ""}[fmt])
        model.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
        d = data[key]
        models[name] = dict(path=path, data=key, head=head, format=fmt,
                            accuracy=accuracy(model, d["x_test"], d["y_test"], head))
        return model

    def softmax():
        return _cnn(10, "softmax")

    one_hot = np.eye(10, dtype=np.float32)[data["unit"]["y"]]
    save("softmax_categorical", fit(softmax, "unit", "categorical_crossentropy",
                                    ["accuracy"], y=one_hot), "unit")
    save("softmax_topk_first", fit(softmax, "unit", metrics=[
        keras.metrics.SparseTopKCategoricalAccuracy(k=5), "accuracy"]), "unit")
    save("softmax_no_metrics", fit(softmax, "unit"), "unit")
    trained = fit(softmax, "unit", metrics=["accuracy"])
    fresh = keras.Sequential.from_config(trained.get_config())  # never compiled
    fresh.set_weights(trained.get_weights())
    save("softmax_uncompiled", fresh, "unit")
    logits = save("logits", fit(lambda: _cnn(10), "unit", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), ["accuracy"]), "unit", head="logits")
    twin = softmax()  # the logits model's exact weights under a softmax
    twin.set_weights(logits.get_weights())
    twin.compile(optimizer="adam", loss=SCE, metrics=["accuracy"])
    save("softmax_twin", twin, "unit")
    save("sigmoid_binary", fit(lambda: _cnn(1, "sigmoid"), "binary", "binary_crossentropy",
                               ["accuracy"]), "binary", head="sigmoid")
    save("rescaling_uint8", fit(lambda: _cnn(10, "softmax", [keras.layers.Rescaling(1 / 255)]),
                                "uint8", metrics=["accuracy"]), "uint8")
    save("symmetric", fit(softmax, "symmetric", metrics=["accuracy"]), "symmetric")
    save("h5", fit(softmax, "unit", metrics=["accuracy"]), "unit", fmt="h5")
    save("savedmodel", fit(softmax, "unit", metrics=["accuracy"]), "unit", fmt="savedmodel")
    save("custom_layer", fit(lambda: _custom(ul), "unit", metrics=["accuracy"]), "unit")
    unit = data["unit"]
    save("two_outputs", fit(_two_outputs, "unit", {"probs": SCE, "brightness": "mse"},
                            y={"probs": unit["y"], "brightness": unit["x"].mean(axis=(1, 2, 3))}),
         "unit")
    return models


def build_all(out_dir):
    """write_data + build_models under out_dir; None when Fashion-MNIST is not installed.

    Example: data_paths, models = build_all("/tmp/foreign")
    """
    if fashion_dir() is None:
        return None
    data_paths = write_data(os.path.join(out_dir, "data"))
    return data_paths, build_models(os.path.join(out_dir, "models"), data_paths)


def main(argv):
    """`python tests/acceptance/foreign.py OUT_DIR`: builds every case, runs
    `tfcompress run --model` on each (float32, int8_full) and prints a markdown table."""
    import json
    from tfcompress import cli
    out = argv[1] if len(argv) > 1 else "runs/foreign"
    built = build_all(out)
    if built is None:
        print("Fashion-MNIST is not installed")
        return 1
    data_paths, models = built
    extra = {"rescaling_uint8": ["--set", "data.scale=none"],
             "custom_layer": ["--custom_objects", USER_LAYERS_PATH]}
    rows = ["| case | head | format | Keras (numpy) | float32 | int8_full |",
            "|---|---|---|---|---|---|"]
    for name, case in models.items():
        if name in ("two_outputs", "softmax_twin"):
            continue
        run_dir = os.path.join(out, "runs", name)
        code = cli.main(["run", "--model", case["path"], "--data",
                         f"npz:{data_paths[case['data']]}", "--out", run_dir, "--set",
                         "benchmark.devices=[]", "--set", "export.modes=[float32, int8_full]",
                         *extra.get(name, [])])
        if code:
            rows.append(f"| {name} | {case['head']} | {case['format']} | "
                        f"{100 * case['accuracy']:.2f}% | failed | failed |")
            continue
        with open(os.path.join(run_dir, "report.json")) as f:
            top1 = {v["mode"]: v["top1"] for v in json.load(f)["variants"]}
        rows.append(f"| {name} | {case['head']} | {case['format']} | "
                    f"{100 * case['accuracy']:.2f}% | {100 * top1['float32']:.2f}% | "
                    f"{100 * top1['int8_full']:.2f}% |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
