r"""Benchmark: what removing 50% of the channels costs and gains, as int8 TFLite on a CPU.

On Fashion-MNIST, in one run on one machine: train the baseline (or load
--baseline), prune --ratio of the channels with each --criteria, fine-tune
the thinner model, convert the baseline and every pruned model to int8_full,
and measure each one's accuracy through the interpreter on the 10,000 test
images and its median latency at 1 thread. Writes
OUT/bench_channel_pruning.json.

Latency: every interpreter (XNNPACK on, the default) is warmed up, then
rounds of --timing_runs single-image invokes alternate between the models,
the order reversed every round, so that the drift of this shared machine
falls on all of them alike; each model's median (and minimum) over all its
invokes is reported.

Example:
    python -m benchmarks.bench_channel_pruning --out=runs/bench-channel-pruning
    python -m benchmarks.bench_channel_pruning --baseline=runs/demo-baseline/model.keras \
        --criteria=taylor --fine_tune_epochs=3
"""

import os
import time

import numpy as np
from absl import app, flags

from benchmarks import absl_main

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline", None, "A trained model to start from; by default a zoo model "
                    "is trained for --epochs.")
flags.DEFINE_enum("model", "small_cnn", ["small_cnn", "mobilenet_v2"], "Zoo model to train.")
flags.DEFINE_integer("width", 16, "small_cnn width.", lower_bound=1)
flags.DEFINE_float("alpha", 0.35, "mobilenet_v2 width multiplier.")
flags.DEFINE_integer("epochs", 5, "Baseline training epochs.", lower_bound=1)
flags.DEFINE_float("learning_rate", 2e-3, "Baseline peak learning rate (cosine decay).")
flags.DEFINE_float("ratio", 0.5, "Fraction of channels to remove.", lower_bound=0.0,
                   upper_bound=0.99)
flags.DEFINE_list("criteria", ["l1", "taylor", "bn_scale"], "Importance criteria to compare.")
flags.DEFINE_integer("round_to", 1, "Round kept channel counts to this multiple.", lower_bound=1)
flags.DEFINE_integer("fine_tune_epochs", 3, "Epochs of fine-tuning after pruning.",
                     lower_bound=0)
flags.DEFINE_float("fine_tune_learning_rate", 1e-3, "Fine-tuning peak learning rate.")
flags.DEFINE_integer("timing_runs", 200, "Invokes per model per round.", lower_bound=1)
flags.DEFINE_integer("timing_rounds", 20, "Rounds (the order alternates).", lower_bound=2)
flags.DEFINE_integer("seed", 0, "Seed for training and sampling.")
flags.DEFINE_string("out", "runs/bench-channel-pruning", "Output folder.")


def latencies(tflite_models, runs, rounds, warmup=50):
    """Per model: (median, minimum) seconds per single-sample invoke at 1 thread.

    Rounds of `runs` invokes alternate between the models, the order
    reversed every round (the first model in a round gets a different
    share of the machine's drift otherwise).
    """
    from ai_edge_litert.interpreter import Interpreter
    interpreters = []
    for data in tflite_models:
        interpreter = Interpreter(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        rng = np.random.default_rng(0)
        info = np.iinfo(detail["dtype"]) if np.issubdtype(detail["dtype"], np.integer) else None
        sample = (rng.integers(info.min, info.max + 1, detail["shape"]).astype(detail["dtype"])
                  if info else rng.random(detail["shape"]).astype(detail["dtype"]))
        interpreter.set_tensor(detail["index"], sample)
        for _ in range(warmup):
            interpreter.invoke()
        interpreters.append(interpreter)
    times = [[] for _ in tflite_models]
    for round_ in range(rounds):
        order = range(len(interpreters))
        for i in (order if round_ % 2 == 0 else reversed(order)):
            invoke = interpreters[i].invoke
            for _ in range(runs):
                start = time.perf_counter()
                invoke()
                times[i].append(time.perf_counter() - start)
    return [(float(np.median(t)), float(np.min(t))) for t in times]


def run():
    from tfcompress import channel_pruning, load_model, save_model
    from tfcompress.data import calibration_samples, load_dataset
    from tfcompress.keras import keras
    from tfcompress.saving import write_json_atomic
    from tflite_export.convert import convert
    from tflite_export.evaluate import evaluate_tflite
    import models

    unknown = sorted(set(FLAGS.criteria) - set(channel_pruning.CRITERIA))
    if unknown or not FLAGS.criteria:
        raise ValueError(f"--criteria: unknown {', '.join(unknown) or '(none given)'}; choose "
                         f"from {', '.join(channel_pruning.CRITERIA)}")
    keras.utils.set_random_seed(FLAGS.seed)
    os.makedirs(FLAGS.out, exist_ok=True)
    ds = load_dataset("fashion_mnist")
    calibration = calibration_samples(ds.x_train, 200, seed=FLAGS.seed)
    started = time.time()
    if FLAGS.baseline:
        baseline = load_model(FLAGS.baseline)
        trained_for = f"loaded from {FLAGS.baseline}"
    else:
        options = ({"width": FLAGS.width} if FLAGS.model == "small_cnn"
                   else {"alpha": FLAGS.alpha})
        baseline = models.get_model(FLAGS.model, ds.input_shape, ds.num_classes, **options)
        print(f"training {baseline.name} for {FLAGS.epochs} epochs", flush=True)
        channel_pruning.fine_tune(baseline, ds.x_train, ds.y_train, epochs=FLAGS.epochs,
                                  learning_rate=FLAGS.learning_rate, verbose=2)
        save_model(baseline, os.path.join(FLAGS.out, "baseline.keras"))
        trained_for = f"{FLAGS.epochs} epochs"
    entries = [{"name": "baseline", "model": baseline, "macs": sum(
        channel_pruning.count_macs(baseline).values()), "params": baseline.count_params()}]
    rng = np.random.default_rng(FLAGS.seed)
    sample = rng.choice(len(ds.x_train), 2048, replace=False)
    for criterion in FLAGS.criteria:
        config = channel_pruning.ChannelPruningConfig(
            ratio=FLAGS.ratio, criterion=criterion, round_to=FLAGS.round_to, batch_size=128,
            taylor_batches=16)
        thin, plan = channel_pruning.prune_channels(
            baseline, config, data=(ds.x_train[sample], ds.y_train[sample]))
        print(channel_pruning.format_plan(plan), flush=True)
        before = _keras_accuracy(thin, ds)
        if FLAGS.fine_tune_epochs:
            print(f"fine-tuning the {criterion}-pruned model for {FLAGS.fine_tune_epochs} epochs",
                  flush=True)
            channel_pruning.fine_tune(thin, ds.x_train, ds.y_train, epochs=FLAGS.fine_tune_epochs,
                                      learning_rate=FLAGS.fine_tune_learning_rate, verbose=2)
        save_model(thin, os.path.join(FLAGS.out, f"pruned_{criterion}.keras"))
        entries.append({"name": f"pruned_{criterion}", "model": thin, "macs": plan.macs_after,
                        "params": plan.params_after, "keras_accuracy_before_fine_tune": before})
    for entry in entries:
        entry["tflite"] = convert(entry["model"], "int8_full", representative_data=calibration)
        with open(os.path.join(FLAGS.out, f"{entry['name']}_int8_full.tflite"), "wb") as f:
            f.write(entry["tflite"])
        entry["keras_accuracy"] = _keras_accuracy(entry["model"], ds)
        entry["int8_accuracy"] = evaluate_tflite(entry["tflite"], ds.x_test, ds.y_test,
                                                 top_k=(1,), progress=False)["top1"]
    print(f"timing {len(entries)} int8_full models: {FLAGS.timing_rounds} rounds x "
          f"{FLAGS.timing_runs} invokes each, 1 thread", flush=True)
    timings = latencies([e["tflite"] for e in entries], FLAGS.timing_runs, FLAGS.timing_rounds)
    base = entries[0]
    results = []
    for entry, (median, minimum) in zip(entries, timings):
        results.append({
            "name": entry["name"], "macs": entry["macs"], "params": int(entry["params"]),
            "tflite_bytes": len(entry["tflite"]), "keras_accuracy": entry["keras_accuracy"],
            "keras_accuracy_before_fine_tune": entry.get("keras_accuracy_before_fine_tune"),
            "int8_accuracy": entry["int8_accuracy"],
            "int8_accuracy_drop_points": 100 * (base["int8_accuracy"] - entry["int8_accuracy"]),
            "latency_median_us": 1e6 * median, "latency_min_us": 1e6 * minimum,
            "speedup_median": timings[0][0] / median, "speedup_min": timings[0][1] / minimum})
    report = {
        "machine": "2-core shared x86 machine, no GPU; XNNPACK on, 1 thread",
        "model": base["model"].name, "baseline_training": trained_for, "ratio": FLAGS.ratio,
        "round_to": FLAGS.round_to, "fine_tune_epochs": FLAGS.fine_tune_epochs,
        "fine_tune_learning_rate": FLAGS.fine_tune_learning_rate,
        "timing": {"rounds": FLAGS.timing_rounds, "runs_per_round": FLAGS.timing_runs},
        "seconds": time.time() - started, "results": results}
    write_json_atomic(os.path.join(FLAGS.out, "bench_channel_pruning.json"), report)
    print(f"\n{'model':<18} {'MACs':>10} {'params':>8} {'bytes':>8} {'keras':>7} {'int8':>7} "
          f"{'drop':>6} {'median us':>10} {'speedup':>8}")
    for row in results:
        print(f"{row['name']:<18} {row['macs']:>10,} {row['params']:>8,} {row['tflite_bytes']:>8,} "
              f"{row['keras_accuracy']:>7.4f} {row['int8_accuracy']:>7.4f} "
              f"{row['int8_accuracy_drop_points']:>+6.2f} {row['latency_median_us']:>10.1f} "
              f"{row['speedup_median']:>7.2f}x")
    print(f"(int8_full, 10,000 test images through the interpreter; latency median of "
          f"{FLAGS.timing_rounds * FLAGS.timing_runs} invokes, 1 thread; "
          f"{report['seconds']:.0f} s in all)")
    return report


def _keras_accuracy(model, ds):
    predictions = model.predict(ds.x_test, batch_size=500, verbose=0)
    return float(np.mean(predictions.argmax(-1) == ds.y_test))


main = absl_main(run)


if __name__ == "__main__":
    app.run(main)
