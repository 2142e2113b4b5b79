r"""Benchmark: int4 weights, round-to-nearest (AI Edge Quantizer) against learned rounding.

For each model, every mode below is exported from the same Keras model with the same
calibration images and evaluated through the interpreter on the same held-out images:

    float32, int8_full          the baseline and the plain converter
    int4_weights, int4_w4a8     AI Edge Quantizer as is: weights rounded to nearest
    int4_adaround               AdaRound + bias correction on the calibration images,
                                then stored by AI Edge Quantizer (same grid, same bytes)
    int4_mixed                  int4 or int8 per layer (learned rounding for the int4
                                ones): the smallest file within --max_drop points of
                                float on a budget slice kept apart from the test images

Reported per mode: top-1, agreement with the float32 file's top-1 predictions (far less
noisy than accuracy on small test sets), bytes and their ratio to int8_full's, seconds to
export (AdaRound included).

Models:
    ds_cnn      the MLPerf Tiny DS-CNN reference (../shared/data/mlperf_tiny_kws, trained
                by MLCommons); its 1,000 test clips are split: 200 calibrate, 300 are the
                budget slice, 500 are held out (there is no training split).
    small_cnn   the zoo's small_cnn width 16, trained here 2 epochs on Fashion-MNIST.
    resnet8     (with --models) the zoo's ResNet-8, and
    mobilenet_v2  the zoo's MobileNetV2 alpha 0.35 (resized to 32x32 inside), each trained
                here 2 epochs on Fashion-MNIST (Adam, cosine decay, as `tfcompress train`).
                For these three, 200 training images calibrate, the last 500 training
                images are the budget slice, all 10,000 test images are held out.

Writes OUT/bench_int4.json and OUT/bench_int4.md.

Example:
    python -m benchmarks.bench_int4 --out=runs/bench-int4
"""

import json
import os
import time

import numpy as np
from absl import app, flags

from benchmarks import absl_main, markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/bench-int4", "Output folder.")
flags.DEFINE_list("models", ["ds_cnn", "small_cnn"],
                  "Which models to measure (also: resnet8, mobilenet_v2).")
flags.DEFINE_float("max_drop", 1.0, "int4_mixed's budget: points below float on the slice.")

MODES = ("float32", "int8_full", "int4_weights", "int4_w4a8", "int4_adaround", "int4_mixed")
SHARED_KWS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                          "shared", "data", "mlperf_tiny_kws")


def _ds_cnn():
    import tfcompress
    with np.load(os.path.join(SHARED_KWS, "kws01_test.npz")) as z:
        x = (z["x_int8"].astype(np.float32) - float(z["input_zero_point"])) * \
            float(z["input_scale"])
        y = z["y"]
    model = tfcompress.load_model(os.path.join(SHARED_KWS, "ds_cnn_savedmodel"), compile=False)
    return model, x[:200], (x[200:500], y[200:500]), x[500:], y[500:]


def _zoo(name, options, epochs):
    """A zoo model trained here on Fashion-MNIST, with the rate schedule `tfcompress train`
    uses (a constant rate left ResNet-8 at 67% test / 89% training accuracy)."""
    import models
    from tfcompress import data, training
    from tfcompress.keras import keras
    ds = data.load_dataset("fashion_mnist")
    keras.utils.set_random_seed(0)
    model = models.get_model(name, (28, 28, 1), 10, **options)
    steps = epochs * -(-len(ds.x_train) // 128)
    model.compile(training.cosine_adam(2e-3, steps), "sparse_categorical_crossentropy")
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=128, verbose=0)
    return model, ds.x_train[:200], (ds.x_train[-500:], ds.y_train[-500:]), ds.x_test, \
        ds.y_test


BUILDERS = {
    "ds_cnn": _ds_cnn,
    "small_cnn": lambda: _zoo("small_cnn", {"width": 16}, 2),
    "resnet8": lambda: _zoo("resnet8", {}, 2),
    "mobilenet_v2": lambda: _zoo("mobilenet_v2", {"alpha": 0.35, "input_size": 32}, 2),
}


def _predictions(path, x):
    from tflite_export.evaluate import as_runner
    return np.argmax(as_runner(path).predict(x, progress=False), axis=1)


def measure(name, model, calibration, budget_slice, x_test, y_test, out):
    from tflite_export.convert import convert, write_tflite
    from tflite_export.mixed_precision import mixed_int4
    rows, float_predictions, int8_bytes = [], None, None
    for mode in MODES:
        start = time.time()
        if mode == "int4_mixed":
            data, _ = mixed_int4(model, calibration, *budget_slice, max_drop=FLAGS.max_drop,
                                 log=None)
        else:
            data = convert(model, mode, representative_data=calibration)
        seconds = time.time() - start
        path = write_tflite(data, os.path.join(out, f"{name}_{mode}.tflite"))
        predictions = _predictions(path, x_test)
        top1 = float(np.mean(predictions == y_test))
        if mode == "float32" and top1 < 1.5 / len(np.unique(y_test)):
            # A float model at chance makes every row below meaningless: stop, say why.
            raise ValueError(f"{name}: the float32 model scores {top1:.1%} on the held-out "
                             "images (chance level): it did not train; not reporting int4 "
                             "figures for it")
        float_predictions = predictions if mode == "float32" else float_predictions
        int8_bytes = len(data) if mode == "int8_full" else int8_bytes
        rows.append({"model": name, "mode": mode, "top1": float(np.mean(predictions == y_test)),
                     "agreement": float(np.mean(predictions == float_predictions)),
                     "bytes": len(data), "seconds": round(seconds, 1)})
        print(f"{name} {mode}: top-1 {rows[-1]['top1']:.2%}, agreement "
              f"{rows[-1]['agreement']:.2%}, {len(data):,} bytes, {seconds:.1f} s", flush=True)
    for row in rows:
        row["vs_int8_full"] = row["bytes"] / int8_bytes
    return rows


def run():
    os.makedirs(FLAGS.out, exist_ok=True)
    builders = BUILDERS
    rows = []
    for name in FLAGS.models:
        if name == "ds_cnn" and not os.path.isdir(SHARED_KWS):
            print(f"skipping ds_cnn: {SHARED_KWS} is absent", flush=True)
            continue
        rows += measure(name, *builders[name](), FLAGS.out)
    with open(os.path.join(FLAGS.out, "bench_int4.json"), "w") as f:
        json.dump(rows, f, indent=2)
    table = markdown_table(
        ["model", "mode", "top-1", "agreement with float", "bytes", "vs int8_full", "seconds"],
        [[r["model"], r["mode"], f"{r['top1']:.2%}", f"{r['agreement']:.2%}", f"{r['bytes']:,}",
          f"{r['vs_int8_full']:.2f}x", f"{r['seconds']:.1f}"] for r in rows], numeric_from=2)
    with open(os.path.join(FLAGS.out, "bench_int4.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))
    return rows


main = absl_main(run)

if __name__ == "__main__":
    app.run(main)
