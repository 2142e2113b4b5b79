r"""Benchmark: what 80% magnitude pruning costs and gains on the Fashion-MNIST baseline.

Reports, in one run on one machine: test accuracy dense vs pruned, float32
TFLite bytes and gzip bytes dense vs pruned, and the time per training step of
the pruned (wrapped) model against the plain model (median of several timed
windows). Writes OUT/bench_pruning.json.

Example:
    python -m benchmarks.bench_pruning --baseline=runs/demo-baseline/model.keras \
        --out=runs/bench-pruning
"""

import gzip
import os
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks import absl_main

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline", "runs/demo-baseline/model.keras",
                    "Trained dense model; trained with the demo settings when missing.")
flags.DEFINE_float("sparsity", 0.8, "Target sparsity.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_integer("prune_epochs", 3, "Fine-tuning epochs while pruning.", lower_bound=1)
flags.DEFINE_float("prune_learning_rate", None, "Peak learning rate while pruning; default the "
                   "training rate.", lower_bound=0.0)
flags.DEFINE_integer("timing_steps", 20, "Training steps per timed window.", lower_bound=1)
flags.DEFINE_integer("timing_repeats", 5, "Rounds of timed windows per order (2x this in all).",
                     lower_bound=1)
flags.DEFINE_string("out", "runs/bench-pruning", "Output folder.")


def _step_times(models, x, y, steps, repeats, batch_size=128):
    """Seconds per training step of each model: (minimum, median) over windows.

    Windows of `steps` steps alternate between the models, and the order is
    reversed every round: on this shared 2-core machine the window that comes
    first in a round ran ~30% faster whatever the model (measured), so each
    model gets each position equally often. The ratio uses the minimum, the
    window least disturbed by the machine.
    """
    from tfcompress.pruning import is_pruned_model, pruning_callbacks
    n = steps * batch_size
    callbacks = [pruning_callbacks() if is_pruned_model(m) else [] for m in models]
    for model, cbs in zip(models, callbacks):  # warm-up: tracing
        model.fit(x[:2 * batch_size], y[:2 * batch_size], batch_size=batch_size, verbose=0,
                  callbacks=cbs)
    times = [[] for _ in models]
    for round_ in range(2 * repeats):
        order = range(len(models)) if round_ % 2 == 0 else reversed(range(len(models)))
        for i in order:
            start = time.perf_counter()
            models[i].fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0,
                          callbacks=callbacks[i])
            times[i].append((time.perf_counter() - start) / steps)
    return [(float(np.min(t)), float(np.median(t))) for t in times]


def run():
    from models.train_lib import TrainConfig, train
    from tfcompress import load_model, pruning
    from tfcompress.data import load_dataset
    from tfcompress.keras import keras
    from tfcompress.saving import write_json_atomic
    from tflite_export.convert import convert

    ds = load_dataset("fashion_mnist")
    if not os.path.exists(FLAGS.baseline):
        print(f"{FLAGS.baseline} missing: training the demo baseline", flush=True)
        train(TrainConfig(model="small_cnn", epochs=5, model_dir=os.path.dirname(FLAGS.baseline)))
    result = train(TrainConfig(
        init_model=FLAGS.baseline, epochs=0, dataset="fashion_mnist",
        model_dir=os.path.join(FLAGS.out, "pruned"), prune_sparsity=FLAGS.sparsity,
        prune_epochs=FLAGS.prune_epochs, prune_learning_rate=FLAGS.prune_learning_rate,
        prune_skip_first_and_last=False,
        prune_exclude=("conv1",)), dataset=ds)
    dense = load_model(FLAGS.baseline)
    sizes = {}
    for name, model in (("dense", dense), ("pruned", result.model)):
        data = convert(model, "float32")
        sizes[name] = {"tflite_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9))}

    def compiled(model):
        model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
        return model

    plain = compiled(keras.models.clone_model(dense))
    wrapped = compiled(pruning.prune(dense, pruning.PruningConfig(
        FLAGS.sparsity, skip_first_and_last=False, exclude=("conv1",)),
        steps_per_epoch=469, total_epochs=FLAGS.prune_epochs))
    (plain_step, plain_median), (pruned_step, pruned_median) = _step_times(
        [plain, wrapped], ds.x_train, ds.y_train, FLAGS.timing_steps, FLAGS.timing_repeats)
    report = {
        "machine": "2-core shared x86 machine, no GPU",
        "dense_test_accuracy": result.metrics["dense_test_accuracy"],
        "pruned_test_accuracy": result.metrics["test_accuracy"],
        "accuracy_drop_points": 100 * (result.metrics["dense_test_accuracy"]
                                       - result.metrics["test_accuracy"]),
        "sparsity": result.metrics["sparsity"],
        "sizes": sizes,
        "gzip_ratio": sizes["dense"]["gzip_bytes"] / sizes["pruned"]["gzip_bytes"],
        "train_step_s": {"plain_min": plain_step, "pruned_min": pruned_step,
                         "plain_median": plain_median, "pruned_median": pruned_median},
        "train_step_ratio": pruned_step / plain_step,
        "prune_epochs": FLAGS.prune_epochs,
        "prune_learning_rate": FLAGS.prune_learning_rate,
    }
    write_json_atomic(os.path.join(FLAGS.out, "bench_pruning.json"), report)
    print(f"dense {report['dense_test_accuracy']:.4f} -> pruned {report['pruned_test_accuracy']:.4f}"
          f" ({report['accuracy_drop_points']:+.2f} points lost) at "
          f"{report['sparsity']['sparsity']:.1%} sparsity")
    print(f"float32 TFLite gzip: {sizes['dense']['gzip_bytes']:,} -> "
          f"{sizes['pruned']['gzip_bytes']:,} bytes ({report['gzip_ratio']:.2f}x smaller)")
    print(f"training step (min / median of {2 * FLAGS.timing_repeats} windows, order "
          f"alternating): plain {plain_step * 1000:.1f} / {plain_median * 1000:.1f} ms, pruned "
          f"{pruned_step * 1000:.1f} / {pruned_median * 1000:.1f} ms; ratio of minima "
          f"{report['train_step_ratio']:.2f}x (2-core shared machine, no GPU)")
    return report


main = absl_main(run)


if __name__ == "__main__":
    app.run(main)
