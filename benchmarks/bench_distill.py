r"""Benchmark: what knowledge distillation gains and costs on Fashion-MNIST.

Trains a teacher (small_cnn, --teacher_width) once; then, for each seed, the
same student (small_cnn, --student_width, same initial weights) for the same
epochs twice: alone on the labels, and with `tfcompress.distillation.Distiller`
(logits distillation). Reports test accuracy on all 10,000 test images for
each, the gain per seed and its mean, and the cost of a Distiller epoch
against a student epoch plus a teacher inference epoch, all measured in the
same run on the same machine. Writes OUT/bench_distill.json and
OUT/bench_distill.md.

Timing: the two students train epoch by epoch in lockstep (`fit` with
`initial_epoch`), and after each epoch the teacher runs an inference epoch
(`teacher.predict` over the training set at the same batch size), so the
three times of an epoch see the same load from other processes; the two
students swap order every epoch. An epoch's time runs from `fit`'s epoch
begin to its epoch end (no evaluation). The cost ratio is, for each epoch,
Distiller / (student + teacher inference); the reported figure is its median
over epochs, which leaves out the first epoch's tracing. A second measure,
less exposed to other processes, times interleaved windows of a few steps
of each workload and reports minima and medians per step.

Example:
    python -m benchmarks.bench_distill --out=runs/bench-distill --epochs=5 --seeds=0,1
"""

import os
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks import markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/bench-distill", "Output folder.")
flags.DEFINE_integer("epochs", 5, "Training epochs of each student run.", lower_bound=1)
flags.DEFINE_integer("teacher_epochs", None, "Teacher training epochs (default: --epochs).",
                     lower_bound=1)
flags.DEFINE_list("seeds", ["0", "1"], "Seeds; one alone + distilled student pair each.")
flags.DEFINE_integer("teacher_width", 32, "small_cnn width of the teacher.", lower_bound=1)
flags.DEFINE_string("teacher", None, "A .keras teacher to reuse; trained (with --teacher_width, "
                    "--teacher_epochs) and saved there when missing.")
flags.DEFINE_integer("student_width", 8, "small_cnn width of the student.", lower_bound=1)
flags.DEFINE_float("temperature", 4.0, "LogitsDistillation temperature.", lower_bound=0.0)
flags.DEFINE_float("student_loss_weight", 0.5, "Weight of the hard-label loss, in [0, 1].",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine decay).",
                   lower_bound=0.0)
flags.DEFINE_integer("max_train_samples", None, "Train on a subset (smoke runs).",
                     lower_bound=1)
flags.DEFINE_integer("timing_steps", 20, "Steps per timed window of the step timing.",
                     lower_bound=1)
flags.DEFINE_integer("timing_repeats", 5, "Rounds of step-timing windows per order (2x this "
                     "in all); 0 skips the step timing.", lower_bound=0)
flags.DEFINE_integer("verbose", 0, "Keras fit verbosity.")


def _epoch_timer():
    """A Keras callback that records the wall time of each fit epoch in `.seconds`."""
    from tfcompress.keras import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def _compile(model, steps):
    from tfcompress.keras import keras
    from tfcompress.training import cosine_adam
    # As every stage: Adam with cosine decay over the whole run.
    model.compile(optimizer=cosine_adam(FLAGS.learning_rate, steps),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _train(model, x, y, epochs):
    _compile(model, int(np.ceil(len(x) / FLAGS.batch_size)) * epochs)
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=epochs, shuffle=True,
              verbose=FLAGS.verbose)


def _accuracy(model, ds):
    """Top-1 accuracy on the whole test split (no compile: the model keeps its optimizer)."""
    predictions = model.predict(ds.x_test, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == ds.y_test))


def _seed_run(seed, teacher, ds, x, y):
    """One seed: the student alone and distilled, trained epoch by epoch in lockstep.

    Each epoch trains the student alone, the distilled student, and runs
    the teacher's inference epoch, one after the other (the first two swap
    places every epoch), so the three times of an epoch share the machine's
    load of that moment; the cost ratio is the median over epochs of
    distiller / (alone + teacher inference).
    """
    import models
    from tfcompress import distillation
    from tfcompress.keras import keras

    def student():
        keras.utils.set_random_seed(seed)
        return models.get_model("small_cnn", ds.input_shape, ds.num_classes,
                                width=FLAGS.student_width)

    alone, distilled = student(), student()  # the same initial weights
    distiller = distillation.Distiller(
        teacher, distilled, distillation.LogitsDistillation(FLAGS.temperature),
        student_loss_weight=FLAGS.student_loss_weight)
    steps = int(np.ceil(len(x) / FLAGS.batch_size)) * FLAGS.epochs
    _compile(alone, steps)
    _compile(distiller, steps)
    timers = {"alone": _epoch_timer(), "distiller": _epoch_timer()}
    trainees = {"alone": alone, "distiller": distiller}
    teacher.predict(x[:2 * FLAGS.batch_size], batch_size=FLAGS.batch_size, verbose=0)  # trace
    teacher_seconds = []
    keras.utils.set_random_seed(seed)
    for epoch in range(FLAGS.epochs):
        order = ("alone", "distiller") if epoch % 2 == 0 else ("distiller", "alone")
        for name in order:
            trainees[name].fit(x, y, batch_size=FLAGS.batch_size, initial_epoch=epoch,
                               epochs=epoch + 1, shuffle=True, callbacks=[timers[name]],
                               verbose=FLAGS.verbose)
        begin = time.perf_counter()
        teacher.predict(x, batch_size=FLAGS.batch_size, verbose=0)
        teacher_seconds.append(time.perf_counter() - begin)
    alone_s, distiller_s = timers["alone"].seconds, timers["distiller"].seconds
    alone_accuracy, distilled_accuracy = _accuracy(alone, ds), _accuracy(distilled, ds)
    # After the accuracies: these steps train the students further.
    steps_timing = (_step_times(alone, distiller, teacher, x, y) if FLAGS.timing_repeats
                    else None)
    ratios = [d / (a + t) for a, d, t in zip(alone_s, distiller_s, teacher_seconds)]
    return {
        "seed": seed,
        "student_parameters": int(alone.count_params()),
        "alone_accuracy": alone_accuracy,
        "distilled_accuracy": distilled_accuracy,
        "gain_points": 100 * (distilled_accuracy - alone_accuracy),
        "student_epoch_s": float(np.median(alone_s)),
        "teacher_inference_s": float(np.median(teacher_seconds)),
        "distiller_epoch_s": float(np.median(distiller_s)),
        "cost_ratio": float(np.median(ratios)),
        "cost_ratio_per_epoch": [round(r, 4) for r in ratios],
        "student_epochs_s": [round(t, 2) for t in alone_s],
        "distiller_epochs_s": [round(t, 2) for t in distiller_s],
        "teacher_inference_passes_s": [round(t, 2) for t in teacher_seconds],
        "step_timing": steps_timing,
    }


def _step_times(alone, distiller, teacher, x, y):
    """Seconds per step, (minimum, median) over windows, of the three workloads.

    A second measure of the cost, less exposed to other processes than whole
    epochs: the models' own compiled step functions (what `fit` and
    `predict` run each batch, without the per-call and callback overhead)
    are timed in windows of --timing_steps steps: a student training step, a
    teacher inference step, a Distiller training step. The windows
    alternate, the order reversed every round so that each workload takes
    each place equally often (as benchmarks/bench_pruning.py does); the minimum
    is the window least disturbed by the machine.
    """
    from tfcompress.keras import tf
    n = FLAGS.timing_steps * FLAGS.batch_size
    batches = iter(tf.data.Dataset.from_tensor_slices((x[:n], y[:n]))
                   .batch(FLAGS.batch_size, drop_remainder=True).repeat())
    work = {"student_train": alone.make_train_function(),
            "teacher_inference": teacher.make_predict_function(),
            "distiller_train": distiller.make_train_function()}
    for step in work.values():  # warm-up: tracing
        tf.nest.map_structure(lambda t: t.numpy(), step(batches))
    times = {name: [] for name in work}
    names = list(work)
    for round_ in range(2 * FLAGS.timing_repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            begin = time.perf_counter()
            for _ in range(FLAGS.timing_steps):
                outputs = work[name](batches)
            tf.nest.map_structure(lambda t: t.numpy(), outputs)
            times[name].append((time.perf_counter() - begin) / FLAGS.timing_steps)
    result = {name: {"min_s": float(np.min(t)), "median_s": float(np.median(t))}
              for name, t in times.items()}
    for stat in ("min_s", "median_s"):
        result[f"ratio_{stat[:-2]}"] = result["distiller_train"][stat] / (
            result["student_train"][stat] + result["teacher_inference"][stat])
    return result


def _markdown(result):
    r = result
    trained = f"{r['teacher']['epochs']} epochs" if r["teacher"]["epochs"] else "reused"
    lines = [
        "# Knowledge distillation on Fashion-MNIST",
        "",
        f"Teacher {r['teacher']['name']} ({r['teacher']['parameters']:,} parameters, "
        f"{trained}): test accuracy "
        f"{100 * r['teacher']['test_accuracy']:.2f}%. Student small_cnn width "
        f"{r['student_width']} ({r['student_parameters']:,} parameters), {r['epochs']} epochs, "
        f"same seed and initial weights alone and distilled (LogitsDistillation temperature "
        f"{r['temperature']:g}, student_loss_weight {r['student_loss_weight']:g}). Accuracy on "
        f"all {r['test_samples']:,} test images; {r['train_samples']:,} training images.",
        "",
        *markdown_table(
            ["seed", "alone", "distilled", "gain (points)", "student epoch s",
             "teacher inference s", "Distiller epoch s",
             "Distiller / (student + teacher inference)"],
            [[run["seed"], f"{100 * run['alone_accuracy']:.2f}%",
              f"{100 * run['distilled_accuracy']:.2f}%", f"{run['gain_points']:+.2f}",
              f"{run['student_epoch_s']:.1f}", f"{run['teacher_inference_s']:.1f}",
              f"{run['distiller_epoch_s']:.1f}", f"{run['cost_ratio']:.3f}"]
             for run in r["runs"]], numeric_from=0),
    ]
    timed = [run for run in r["runs"] if run["step_timing"]]
    if timed:
        lines += ["", "Per training step, interleaved windows of "
                  f"{r['timing_steps']} steps (ms; minimum / median over windows):", ""]
        keys = ("student_train", "teacher_inference", "distiller_train")
        lines += markdown_table(
            ["seed", "student train", "teacher inference", "Distiller train",
             "ratio of minima", "ratio of medians"],
            [[run["seed"], *(f"{1000 * run['step_timing'][k]['min_s']:.1f} / "
                             f"{1000 * run['step_timing'][k]['median_s']:.1f}" for k in keys),
              f"{run['step_timing']['ratio_min']:.3f}",
              f"{run['step_timing']['ratio_median']:.3f}"] for run in timed], numeric_from=0)
    lines += [
        "",
        f"Mean gain: **{r['mean_gain_points']:+.2f} points** (target: at least +0.5). "
        f"Cost ratio, median over seeds: **{r['median_cost_ratio']:.3f}** (target: at most "
        "1.15).",
        "",
        "Times in seconds, medians over epochs (epoch begin to end in `fit`; the teacher "
        "inference epoch is `teacher.predict` over the training set). The students train in "
        "lockstep, one epoch each and a teacher inference pass in turn, so the three times "
        "of an epoch share the machine's load; the ratio is the median over epochs of each "
        "epoch's Distiller / (student + teacher inference).",
        "",
        f"Command: `{r['command']}`; wall time {r['wall_time_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def run():
    import models
    from tfcompress.data import load_dataset, subsample
    from tfcompress.keras import keras
    from tfcompress.saving import load_model, save_model, write_json_atomic

    start = time.time()
    seeds = [int(s) for s in FLAGS.seeds]
    ds = load_dataset("fashion_mnist")
    x, y = subsample(ds.x_train, ds.y_train, FLAGS.max_train_samples, seed=0)
    teacher_epochs = FLAGS.teacher_epochs or FLAGS.epochs

    if FLAGS.teacher and os.path.exists(FLAGS.teacher):
        teacher = load_model(FLAGS.teacher)
        print(f"reusing the teacher {FLAGS.teacher}", flush=True)
        teacher_epochs = None  # unknown: trained elsewhere
    else:
        keras.utils.set_random_seed(1000)
        teacher = models.get_model("small_cnn", ds.input_shape, ds.num_classes,
                                   width=FLAGS.teacher_width)
        print(f"training the teacher {teacher.name} ({teacher.count_params():,} parameters) "
              f"for {teacher_epochs} epochs on {len(x)} images", flush=True)
        _train(teacher, x, y, teacher_epochs)
        if FLAGS.teacher:
            save_model(teacher, FLAGS.teacher)
    teacher_result = {"name": teacher.name, "epochs": teacher_epochs,
                      "parameters": int(teacher.count_params()),
                      "test_accuracy": _accuracy(teacher, ds)}
    print(f"teacher test accuracy {teacher_result['test_accuracy']:.4f}", flush=True)

    runs = []
    for seed in seeds:
        runs.append(_seed_run(seed, teacher, ds, x, y))
        r = runs[-1]
        print(f"seed {seed}: alone {r['alone_accuracy']:.4f}, distilled "
              f"{r['distilled_accuracy']:.4f} ({r['gain_points']:+.2f} points); cost ratio "
              f"{r['cost_ratio']:.3f} (epochs: student {r['student_epochs_s']}, teacher "
              f"inference {r['teacher_inference_passes_s']}, Distiller {r['distiller_epochs_s']})",
              flush=True)

    result = {
        "dataset": "fashion_mnist",
        "train_samples": int(len(x)),
        "test_samples": int(len(ds.x_test)),
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "learning_rate": FLAGS.learning_rate,
        "temperature": FLAGS.temperature,
        "student_loss_weight": FLAGS.student_loss_weight,
        "student_width": FLAGS.student_width,
        "student_parameters": runs[0]["student_parameters"],
        "timing_steps": FLAGS.timing_steps,
        "teacher": teacher_result,
        "runs": runs,
        "mean_gain_points": float(np.mean([r["gain_points"] for r in runs])),
        "median_cost_ratio": float(np.median([r["cost_ratio"] for r in runs])),
        "command": " ".join(["python -m benchmarks.bench_distill"] + sys.argv[1:]),
        "wall_time_s": round(time.time() - start, 1),
    }
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "bench_distill.json"), result)
    markdown = _markdown(result)
    with open(os.path.join(FLAGS.out, "bench_distill.md"), "w") as f:
        f.write(markdown)
    print(markdown, flush=True)
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.seeds:
        raise app.UsageError("--seeds must name at least one seed")
    try:
        [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise app.UsageError(f"--seeds must be integers, got {','.join(FLAGS.seeds)}") from None
    from tfcompress.errors import run_cli
    return run_cli(run)


if __name__ == "__main__":
    app.run(main)
