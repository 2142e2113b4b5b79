r"""Benchmark: int8 accuracy after post-training quantization vs quantization-aware training.

Takes a trained float Fashion-MNIST model and reports, on all 10,000 test
images: the float Keras accuracy, the accuracy of its full-integer TFLite
model from post-training quantization (PTQ, calibrated on training images),
and the accuracy of the full-integer TFLite model after QAT fine-tuning
(through the interpreter, like every TFLite figure here). Writes
OUT/bench_qat.json, OUT/bench_qat.md and the two .tflite files.

Example:
    python -m benchmarks.bench_qat --baseline=runs/demo-baseline/model.keras \
        --out=runs/bench-qat
"""

import os
import time

from absl import app, flags

from benchmarks import absl_main, markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline", "runs/demo-baseline/model.keras",
                    "Trained float model; trained with the demo settings when missing.")
flags.DEFINE_string("out", "runs/bench-qat", "Output folder.")
flags.DEFINE_integer("qat_epochs", 1, "QAT fine-tuning epochs on the 60k training images.",
                     lower_bound=1)
flags.DEFINE_float("qat_learning_rate", 1e-4, "Adam learning rate at the start of QAT; it "
                   "decays to 1% over the fine-tuning (cosine).", lower_bound=0.0)
flags.DEFINE_integer("batch_size", 128, "QAT batch size.", lower_bound=1)
flags.DEFINE_integer("calibration_samples", 500, "Training images that calibrate PTQ.",
                     lower_bound=1)
flags.DEFINE_enum("scheme", "default", ["default", "prune_preserving", "cluster_preserving",
                                        "prune_cluster_preserving"], "QAT scheme.")
flags.DEFINE_bool("per_tensor", False, "One scale per kernel instead of per channel.")
flags.DEFINE_integer("seed", 0, "Random seed for the fine-tuning.")


def _markdown(report):
    rows = [("float Keras", report["float_keras_accuracy"], "-"),
            ("PTQ int8_full TFLite", report["ptq_int8_accuracy"], report["ptq_tflite_bytes"]),
            ("QAT Keras (fake-quant)", report["qat_keras_accuracy"], "-"),
            ("QAT int8_full TFLite", report["qat_int8_accuracy"], report["qat_tflite_bytes"])]
    lines = [f"Fashion-MNIST test set ({report['test_images']:,} images), baseline "
             f"`{report['baseline']}`; QAT: {report['qat_epochs']} epoch(s), Adam "
             f"{report['qat_learning_rate']:g} cosine, scheme {report['scheme']}"
             f"{', per-tensor' if report['per_tensor'] else ''}.", ""]
    lines += markdown_table(
        ["model", "top-1 accuracy", "vs float (points)", ".tflite bytes"],
        [[name, f"{100 * accuracy:.2f}%",
          f"{100 * (accuracy - report['float_keras_accuracy']):+.2f}",
          size if size == "-" else f"{size:,}"] for name, accuracy, size in rows])
    lines += ["", f"QAT fine-tuning took {report['qat_train_seconds']:.0f} s on "
              f"{report['machine']}. TFLite accuracies are measured through the LiteRT "
              "interpreter."]
    return "\n".join(lines) + "\n"


def measure(model, ds, qat_epochs=1, qat_learning_rate=1e-4, batch_size=128,
            calibration_samples=500, scheme="default", per_tensor=False, seed=0, log=print):
    """PTQ and QAT of a trained float `model` on data set `ds`, measured on all of its test set.

    Returns:
        (report dict, PTQ int8_full bytes, QAT int8_full bytes).
    """
    import numpy as np

    from tfcompress import quantization
    from tfcompress.data import calibration_samples as draw
    from tfcompress.keras import keras
    from tfcompress.training import cosine_adam
    from tflite_export.convert import convert
    from tflite_export.evaluate import evaluate_tflite
    from tflite_export.inspect import inspect_tflite

    float_accuracy = float(np.mean(np.argmax(model.predict(ds.x_test, batch_size=512, verbose=0),
                                             axis=1) == ds.y_test))
    log(f"float Keras: {float_accuracy:.4f}")
    ptq = convert(model, "int8_full", representative_data=draw(ds.x_train, calibration_samples))
    ptq_accuracy = evaluate_tflite(ptq, ds.x_test, ds.y_test, top_k=(1,), progress=False)["top1"]
    log(f"PTQ int8_full: {ptq_accuracy:.4f}")

    keras.utils.set_random_seed(seed)
    qat = quantization.quantize(model, quantization.QATConfig(scheme=scheme,
                                                              per_tensor=per_tensor))
    steps = qat_epochs * int(np.ceil(len(ds.x_train) / batch_size))
    qat.compile(cosine_adam(qat_learning_rate, steps), keras.losses.SparseCategoricalCrossentropy(),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    start = time.time()
    qat.fit(ds.x_train, ds.y_train, batch_size=batch_size, epochs=qat_epochs, shuffle=True,
            verbose=2)
    train_seconds = time.time() - start
    qat_keras_accuracy = float(qat.evaluate(ds.x_test, ds.y_test, batch_size=512,
                                            verbose=0)[1])
    qat_tflite = convert(qat, "int8_full")  # no representative dataset: QAT ranges
    info = inspect_tflite(qat_tflite)
    if not info["is_full_integer"]:
        raise RuntimeError("the QAT int8_full model is not full-integer")
    qat_accuracy = evaluate_tflite(qat_tflite, ds.x_test, ds.y_test, top_k=(1,),
                                   progress=False)["top1"]
    log(f"QAT Keras: {qat_keras_accuracy:.4f}, QAT int8_full: {qat_accuracy:.4f}")
    report = {
        "machine": "a 2-core shared x86 machine, no GPU",
        "test_images": int(len(ds.x_test)),
        "float_keras_accuracy": float_accuracy,
        "ptq_int8_accuracy": ptq_accuracy,
        "ptq_calibration_samples": calibration_samples,
        "qat_keras_accuracy": qat_keras_accuracy,
        "qat_int8_accuracy": qat_accuracy,
        "ptq_drop_points": 100 * (float_accuracy - ptq_accuracy),
        "qat_drop_points": 100 * (float_accuracy - qat_accuracy),
        "qat_within_half_point": bool(float_accuracy - qat_accuracy <= 0.005),
        "ptq_tflite_bytes": len(ptq),
        "qat_tflite_bytes": len(qat_tflite),
        "qat_tensor_dtypes": info["tensor_dtypes"],
        "qat_epochs": qat_epochs,
        "qat_learning_rate": qat_learning_rate,
        "scheme": scheme,
        "per_tensor": per_tensor,
        "qat_train_seconds": train_seconds,
        "seed": seed,
    }
    return report, ptq, qat_tflite


def run():
    from models.train_lib import TrainConfig, train
    from tfcompress import load_model
    from tfcompress.data import load_dataset
    from tfcompress.saving import write_bytes_atomic, write_json_atomic

    ds = load_dataset("fashion_mnist")
    if not os.path.exists(FLAGS.baseline):
        print(f"{FLAGS.baseline} missing: training the demo baseline", flush=True)
        train(TrainConfig(model="small_cnn", epochs=5, model_dir=os.path.dirname(FLAGS.baseline)),
              dataset=ds)
    report, ptq, qat_tflite = measure(
        load_model(FLAGS.baseline), ds, qat_epochs=FLAGS.qat_epochs,
        qat_learning_rate=FLAGS.qat_learning_rate, batch_size=FLAGS.batch_size,
        calibration_samples=FLAGS.calibration_samples, scheme=FLAGS.scheme,
        per_tensor=FLAGS.per_tensor, seed=FLAGS.seed, log=lambda s: print(s, flush=True))
    report["baseline"] = FLAGS.baseline
    os.makedirs(FLAGS.out, exist_ok=True)
    write_bytes_atomic(os.path.join(FLAGS.out, "ptq_int8_full.tflite"), ptq)
    write_bytes_atomic(os.path.join(FLAGS.out, "qat_int8_full.tflite"), qat_tflite)
    write_json_atomic(os.path.join(FLAGS.out, "bench_qat.json"), report)
    markdown = _markdown(report)
    write_bytes_atomic(os.path.join(FLAGS.out, "bench_qat.md"), markdown.encode())
    print(markdown)
    return report


main = absl_main(run)


if __name__ == "__main__":
    app.run(main)
