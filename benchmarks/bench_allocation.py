r"""Benchmark: sensitivity-driven sparsity against uniform sparsity at equal total sparsity.

For each model, one baseline is trained on Fashion-MNIST, then pruned four times from
it, each with the same fine-tuning (Adam, cosine decay, --prune_epochs epochs on all
60,000 training images, TFMOT's polynomial schedule):
    uniform       every prunable layer (stem and classifier included) at the total
    sensitivity   each layer its own sparsity, the layers together at the total
                  (tfcompress.pruning.sensitivity: loss increase per layer after adaptive
                  BatchNorm on 2,000 training images, greedy allocation)
at each total in --sparsities. Reported: test accuracy of the stripped float model on all
10,000 test images, the measured total sparsity, and seconds (sensitivity measurement
and fine-tuning).
Models: small_cnn width 16 (5 epochs, as the demo's teacher) and mobilenet_v2 alpha 0.35
(resized to 32x32 inside; 2 epochs, as bench_int4).
Writes OUT/bench_allocation.json and OUT/bench_allocation.md.

Example:
    python -m benchmarks.bench_allocation --out=runs/bench-allocation
"""

import time

import numpy as np
from absl import app, flags

from benchmarks import absl_main, markdown_table, write_results

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/bench-allocation", "Output folder.")
flags.DEFINE_list("models", ["small_cnn", "mobilenet_v2"], "Zoo models to measure.")
flags.DEFINE_list("sparsities", ["0.85", "0.9"], "Total sparsities.")
flags.DEFINE_integer("prune_epochs", 3, "Fine-tuning epochs of every pruning run.")

ZOO = {"small_cnn": ({"width": 16}, 5), "mobilenet_v2": ({"alpha": 0.35}, 2)}


def _train(name, ds):
    import models
    from tfcompress import training
    from tfcompress.keras import keras
    options, epochs = ZOO[name]
    keras.utils.set_random_seed(0)
    model = models.get_model(name, (28, 28, 1), 10, **options)
    steps = epochs * -(-len(ds.x_train) // 128)
    model.compile(training.cosine_adam(2e-3, steps), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=128, verbose=0)
    return model


def _accuracy(model, ds):
    scores = model.predict(ds.x_test, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(scores, axis=1) == ds.y_test))


def _prune(model, ds, sparsity, allocation):
    from tfcompress import heads, pruning, training
    from tfcompress.keras import keras
    from tfcompress.pruning import sensitivity
    config = pruning.PruningConfig(sparsity, skip_first_and_last=False)
    start = time.time()
    if allocation == "sensitivity":
        config = sensitivity.allocate_sparsity(model, config, ds.x_train, ds.y_train).apply(
            config)
    measured = time.time() - start
    keras.utils.set_random_seed(0)
    steps = -(-len(ds.x_train) // 128)
    pruned = pruning.prune(model, config, steps_per_epoch=steps, total_epochs=FLAGS.prune_epochs)
    training.compile_for_training(pruned, 2e-3, FLAGS.prune_epochs * steps,
                                  heads.detect(model))
    start = time.time()
    pruned.fit(ds.x_train, ds.y_train, batch_size=128, epochs=FLAGS.prune_epochs, verbose=0,
               callbacks=pruning.pruning_callbacks())
    final = pruning.strip_pruning(pruned)
    total = pruning.sparsity_report(final)["total"]
    return {"sparsity_asked": sparsity, "allocation": allocation,
            "top1": _accuracy(final, ds), "sparsity": total["sparsity"],
            "sensitivity_seconds": round(measured, 1),
            "fine_tune_seconds": round(time.time() - start, 1),
            "per_layer": {name: float(value) for name, value in config.per_layer.items()}}


def run():
    from tfcompress import data
    ds = data.load_dataset("fashion_mnist")
    results = []
    for name in FLAGS.models:
        if name not in ZOO:
            raise ValueError(f"--models: unknown {name!r}; choose from {', '.join(ZOO)}")
        start = time.time()
        model = _train(name, ds)
        base = {"model": name, "baseline_top1": _accuracy(model, ds),
                "train_seconds": round(time.time() - start, 1)}
        print(f"{name}: baseline {100 * base['baseline_top1']:.2f}%", flush=True)
        for sparsity in map(float, FLAGS.sparsities):
            for allocation in ("uniform", "sensitivity"):
                row = {**base, **_prune(model, ds, sparsity, allocation)}
                print(f"  {sparsity:.0%} {allocation}: {100 * row['top1']:.2f}% "
                      f"(measured sparsity {row['sparsity']:.1%})", flush=True)
                results.append(row)
    table = markdown_table(
        ["model", "baseline", "total sparsity", "uniform", "sensitivity", "gain (pts)"],
        [[r["model"], f"{100 * r['baseline_top1']:.2f}%", f"{r['sparsity_asked']:.0%}",
          f"{100 * r['top1']:.2f}%", f"{100 * s['top1']:.2f}%",
          f"{100 * (s['top1'] - r['top1']):+.2f}"]
         for r, s in zip(results[::2], results[1::2])])
    lines = ["# Sensitivity allocation against uniform sparsity", "",
             f"Fashion-MNIST, {FLAGS.prune_epochs} fine-tuning epochs per run, float test "
             "accuracy on 10,000 images; 2-core shared machine, no GPU; one seed.", "", *table]
    write_results(FLAGS.out, "bench_allocation", results, lines)
    return results


main = absl_main(run)

if __name__ == "__main__":
    app.run(main)
