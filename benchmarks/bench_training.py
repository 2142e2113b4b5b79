r"""Benchmark: does XLA (`jit_compile`) or a tf.data input make the pipeline's training faster?

Times epochs of the demo's two training workloads on Fashion-MNIST (all 60,000 images,
batch 128, Adam with cosine decay as every stage compiles it):
    train   small_cnn width 16, as the demo's train stage
    prune   the same model inside TFMOT's pruning wrappers, as the prune stage
each fed four ways: the pipeline's `EpochBatches` Sequence (what `tfcompress.resume`
needs for a bit-exact resume) or a `tf.data` pipeline (from_tensor_slices, batch,
prefetch), each with and without `jit_compile=True`. Each configuration runs --epochs
epochs; the figure is the median epoch time without the first epoch (tracing, XLA
compilation), and its ratio to the Sequence without XLA, measured in the same run.
Writes OUT/bench_training.json and OUT/bench_training.md.

Example:
    python -m benchmarks.bench_training --out=runs/bench-training
"""

import time

import numpy as np
from absl import app, flags

from benchmarks import absl_main, markdown_table, write_results

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/bench-training", "Output folder.")
flags.DEFINE_integer("epochs", 4, "Epochs per configuration (the first is not counted).",
                     lower_bound=2)

FEEDS = (("sequence", False), ("sequence", True), ("tf.data", False), ("tf.data", True))


def _epoch_times(workload, feed, jit, ds):
    import models
    from tfcompress import pruning, training
    from tfcompress.keras import keras, tf
    from tfcompress.resume import EpochBatches
    keras.utils.set_random_seed(0)
    model = models.get_model("small_cnn", (28, 28, 1), 10, width=16)
    steps = -(-len(ds.x_train) // 128)
    callbacks = []
    if workload == "prune":
        model = pruning.prune(model, pruning.PruningConfig(0.9, skip_first_and_last=False),
                              steps_per_epoch=steps, total_epochs=FLAGS.epochs)
        callbacks = pruning.pruning_callbacks()
    model.compile(training.cosine_adam(2e-3, FLAGS.epochs * steps),
                  "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)
    if feed == "sequence":
        data = EpochBatches(ds.x_train, ds.y_train, 128, seed=0)
    else:
        data = tf.data.Dataset.from_tensor_slices((ds.x_train, ds.y_train)).shuffle(
            len(ds.x_train), seed=0).batch(128).prefetch(2)
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(data, epochs=FLAGS.epochs, verbose=0, callbacks=[Clock(), *callbacks])
    return times


def run():
    from tfcompress import data
    ds = data.load_dataset("fashion_mnist")
    results = []
    for workload in ("train", "prune"):
        base = None
        for feed, jit in FEEDS:
            times = _epoch_times(workload, feed, jit, ds)
            median = float(np.median(times[1:]))
            base = base or median
            results.append({"workload": workload, "feed": feed, "jit_compile": jit,
                            "epoch_seconds": [round(t, 2) for t in times],
                            "median_s": round(median, 2), "ratio": round(median / base, 2)})
            print(f"{workload} {feed} jit={jit}: {median:.2f} s/epoch "
                  f"({median / base:.2f}x)", flush=True)
    table = markdown_table(
        ["workload", "input", "jit_compile", "median s/epoch", "vs Sequence, no XLA"],
        [[r["workload"], r["feed"], "yes" if r["jit_compile"] else "no", f"{r['median_s']:.2f}",
          f"{r['ratio']:.2f}x"] for r in results], numeric_from=3)
    lines = ["# Training speed: XLA and tf.data against the Sequence", "",
             f"small_cnn w16 on Fashion-MNIST, batch 128, median of epochs 2-{FLAGS.epochs}; "
             "2-core shared machine, no GPU.", "", *table]
    write_results(FLAGS.out, "bench_training", results, lines)
    return results


main = absl_main(run)

if __name__ == "__main__":
    app.run(main)
