r"""Trains a zoo model on a data set and saves it with its test accuracy.

A thin absl binary over `models.train_lib.train`. It shows Keras progress,
writes TensorBoard logs to MODEL_DIR/logs, resumes an interrupted run from
MODEL_DIR/backup, and saves MODEL_DIR/model.keras and MODEL_DIR/metrics.json.

Example:
    python -m models.train --model=small_cnn --dataset=fashion_mnist \
        --epochs=5 --model_dir=runs/baseline
    tfcompress train --model=ds_cnn --dataset=npz:clips.npz --model_options=size=S
    tfcompress train --init_model=runs/baseline/model.keras --epochs=0 \
        --prune_sparsity=0.8 --prune_epochs=3 --model_dir=runs/pruned
    tfcompress train --model=small_cnn --model_options=width=8 \
        --teacher=runs/baseline/model.keras --distill_temperature=4 --distill_alpha=0.5 \
        --prune_sparsity=0.8 --cluster_clusters=16 --qat --model_dir=runs/student
    python -m tfcompress.launch --num_workers=2 -- python -m models.train \
        --strategy=multi_worker --epochs=5 --batch_size=128 --model_dir=runs/two_workers
"""

import math
import sys

from absl import app, flags

import models
from tfcompress.distribute import STRATEGIES
from tfcompress.errors import parse_absl_flags, run_cli

FLAGS = flags.FLAGS

flags.DEFINE_enum("model", "small_cnn", models.list_models(), "Zoo model to train.")
flags.DEFINE_string("dataset", "fashion_mnist",
                    "fashion_mnist[:DIR], npz:PATH, imagefolder:PATH or tfds:NAME.")
flags.DEFINE_integer("epochs", 5, "Training epochs (may be 0 with --init_model).",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (cosine decay).", lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling, subsampling).")
flags.DEFINE_string("model_dir", "runs/train", "Where the model, metrics and logs go.")
flags.DEFINE_integer("max_train_samples", None, "Train on this many samples (seeded subset).",
                     lower_bound=1)
flags.DEFINE_list("model_options", [], "Builder options as key=value, e.g. width=8,alpha=0.35.")
flags.DEFINE_string("init_model", None, "Start from this saved model (.keras/.h5/SavedModel) "
                    "instead of a new zoo model.")
flags.DEFINE_float("prune_sparsity", None, "Prune to this sparsity after training, e.g. 0.8.",
                   lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_enum("prune_schedule", "polynomial", ["polynomial", "constant"],
                  "Pruning schedule: polynomial (Zhu & Gupta cubic ramp over the first 3/4 of "
                  "the pruning epochs) or constant.")
flags.DEFINE_string("prune_structure", None, "None (unstructured), M:N such as 2:4, or a block "
                    "such as 1x4.")
flags.DEFINE_integer("prune_epochs", 2, "Fine-tuning epochs while pruning.", lower_bound=1)
flags.DEFINE_float("prune_learning_rate", None, "Peak learning rate while pruning (cosine "
                   "decay); default --learning_rate.", lower_bound=0.0)
flags.DEFINE_bool("prune_skip_first_and_last", True,
                  "Leave the first and last prunable layers (stem, classifier) dense.")
flags.DEFINE_list("prune_exclude", [], "Layer names/regexes/types to leave dense.")
flags.DEFINE_float("channel_prune_ratio", None, "Remove this fraction of whole channels after "
                   "training (a thinner, faster model), e.g. 0.5.")
flags.DEFINE_enum("channel_prune_criterion", "l1", ["l1", "l2", "bn_scale", "taylor"],
                  "Channel importance: filter norm, BatchNorm scale or Taylor (gradients).")
flags.DEFINE_integer("channel_prune_round_to", 1, "Round kept channel counts to a multiple.",
                     lower_bound=1)
flags.DEFINE_integer("channel_prune_epochs", 2, "Fine-tuning epochs after channel pruning.",
                     lower_bound=1)
flags.DEFINE_float("lowrank_energy", None, "SVD-factorize Dense/1x1 conv layers keeping this "
                   "share of the singular-value energy, e.g. 0.9.")
flags.DEFINE_integer("lowrank_epochs", 1, "Fine-tuning epochs after factorization.",
                     lower_bound=0)
flags.DEFINE_string("teacher", None, "Distill this saved model (.keras/.h5/SavedModel) into the "
                    "zoo --model for --epochs instead of training it on labels alone.")
flags.DEFINE_float("distill_temperature", 4.0, "Softmax temperature of the soft targets.")
flags.DEFINE_float("distill_alpha", 0.5, "Weight of the student's hard-label loss; the "
                   "distillation loss gets 1 - alpha.")
flags.DEFINE_integer("cluster_clusters", None, "Cluster weights to this many centroids per "
                     "kernel after pruning (sparsity-preserving when pruned).", lower_bound=2)
flags.DEFINE_integer("cluster_epochs", 1, "Fine-tuning epochs while clustering.", lower_bound=1)
flags.DEFINE_float("cluster_learning_rate", 1e-4, "Peak learning rate while clustering.")
flags.DEFINE_bool("qat", False, "Finish with quantization-aware training (prune/cluster "
                  "preserving as needed); model.keras is then the QAT model.")
flags.DEFINE_integer("qat_epochs", 1, "Quantization-aware training epochs.", lower_bound=1)
flags.DEFINE_float("qat_learning_rate", 1e-4, "Peak learning rate of QAT.")
flags.DEFINE_enum("strategy", "default", list(STRATEGIES),
                  "tf.distribute strategy: default (one device), mirrored (all local GPUs, else "
                  "CPUs; TFCOMPRESS_CPU_DEVICES=N splits the CPU), multi_worker (the cluster in "
                  "TF_CONFIG; on one machine: python -m tfcompress.launch --num_workers=2 -- "
                  "python -m models.train ...); parameter_server is refused with the reason. "
                  "--batch_size is then the global batch, split evenly over the replicas.")
flags.DEFINE_enum("qat_scheme", "auto", ["auto", "default", "prune_preserving",
                                         "cluster_preserving", "prune_cluster_preserving"],
                  "QAT scheme; auto keeps what pruning/clustering made.")
flags.DEFINE_list("cluster_exclude", [], "Layer names/regexes/types to leave unclustered.")
flags.DEFINE_list("qat_exclude_layers", [], "Layer names/regexes QAT keeps in float.")
flags.DEFINE_list("qat_exclude_types", [], "Layer class names QAT keeps in float.")
flags.DEFINE_enum("data_scale", "auto", ["auto", "unit", "none", "symmetric"],
                  "How stored values map to the model's input: auto (uint8 / 255, other data "
                  "as stored), unit (/ 255), none (as stored: a model with Rescaling inside), "
                  "symmetric ([-1, 1]).")
flags.DEFINE_list("data_mean", None, "Then subtract this: one number, or one per channel.")
flags.DEFINE_list("data_std", None, "Then divide by this: one number, or one per channel.")
flags.DEFINE_bool("allow_unsafe", False, "Load --init_model/--teacher files that hold code "
                  "(Lambda layers...); only for files you trust.")
flags.DEFINE_multi_string("custom_objects", [], "Import this module (a name, or a .py path) "
                          "first, so the custom layers it defines load; runs its code.")


def parse_model_options(items):
    """["width=8", "size=S"] -> {"width": 8, "size": "S"} (numbers parsed)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model_options entry {item!r} is not key=value")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        options[key.strip()] = value
    return options


def _check_finite_flags():
    """Refuses NaN and Inf float flags.

    NaN passes absl's bounds (every comparison with it is false) and Inf has no
    bound: --learning_rate=inf trained to NaN weights and exited 0.
    """
    for name in FLAGS:
        value = FLAGS[name].value
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}")


def _check_prune_structure():
    """Parsed now, not when the pruning phase starts after the whole training run."""
    if FLAGS.prune_structure:
        from tfcompress import pruning
        try:
            pruning.PruningConfig(structure=FLAGS.prune_structure)
        except ValueError as e:
            raise ValueError(f"--prune_structure: {e}") from None


def _numbers(values, flag):
    if values is None:
        return None
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--{flag} must be numbers, got {','.join(values)!r}") from None
    return numbers[0] if len(numbers) == 1 else numbers


def _train():
    from models.train_lib import TrainConfig, train
    from tfcompress.checks import check_finite_weights
    from tfcompress.saving import import_custom_objects
    _check_finite_flags()
    _check_prune_structure()
    for spec in FLAGS.custom_objects:
        import_custom_objects(spec)
    config = TrainConfig(
        model=FLAGS.model, dataset=FLAGS.dataset, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
        model_dir=FLAGS.model_dir, max_train_samples=FLAGS.max_train_samples,
        model_options=parse_model_options(FLAGS.model_options), init_model=FLAGS.init_model,
        prune_sparsity=FLAGS.prune_sparsity, prune_schedule=FLAGS.prune_schedule,
        prune_structure=FLAGS.prune_structure, prune_epochs=FLAGS.prune_epochs,
        prune_learning_rate=FLAGS.prune_learning_rate,
        prune_skip_first_and_last=FLAGS.prune_skip_first_and_last,
        prune_exclude=tuple(FLAGS.prune_exclude), teacher=FLAGS.teacher,
        channel_prune_ratio=FLAGS.channel_prune_ratio,
        channel_prune_criterion=FLAGS.channel_prune_criterion,
        channel_prune_round_to=FLAGS.channel_prune_round_to,
        channel_prune_epochs=FLAGS.channel_prune_epochs, lowrank_energy=FLAGS.lowrank_energy,
        lowrank_epochs=FLAGS.lowrank_epochs,
        distill_temperature=FLAGS.distill_temperature, distill_alpha=FLAGS.distill_alpha,
        cluster_clusters=FLAGS.cluster_clusters, cluster_epochs=FLAGS.cluster_epochs,
        cluster_learning_rate=FLAGS.cluster_learning_rate, qat=FLAGS.qat,
        qat_epochs=FLAGS.qat_epochs, qat_learning_rate=FLAGS.qat_learning_rate,
        qat_scheme=FLAGS.qat_scheme, strategy=FLAGS.strategy,
        cluster_exclude=tuple(FLAGS.cluster_exclude),
        qat_exclude_layers=tuple(FLAGS.qat_exclude_layers),
        qat_exclude_types=tuple(FLAGS.qat_exclude_types), data_scale=FLAGS.data_scale,
        data_mean=_numbers(FLAGS.data_mean, "data_mean"),
        data_std=_numbers(FLAGS.data_std, "data_std"), allow_unsafe=FLAGS.allow_unsafe)
    result = train(config)
    # A diverged run still "finishes"; say so instead of printing a NaN-model accuracy.
    check_finite_weights(result.model, f"the trained model (saved as {config.model_dir}/"
                                       "model.keras)")
    m = result.metrics
    if "sparsity" in m:
        print(f"pruned: {m['sparsity']['sparsity']:.1%} of {m['sparsity']['weights']:,} weights "
              f"are zero; dense test accuracy {m['dense_test_accuracy']:.4f}", flush=True)
    print(f"test accuracy: {m['test_accuracy']:.4f} ({m['model']} on {m['dataset']}, "
          f"{m['parameters']:,} parameters, {m['wall_time_s']:.0f} s training); "
          f"saved {config.model_dir}/model.keras", flush=True)
    return 0


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])!r}; flags look like --name=value",
              file=sys.stderr)
        return 2
    return run_cli(_train)


def run(argv=None):
    """Entry point for `tfcompress train` and `tfcompress-train` (as a program, argv None,
    TensorFlow's native log lines are quieted: tfcompress.native_logs)."""
    if argv is None:
        from tfcompress import native_logs
        native_logs.quiet()
    app.run(main, argv=argv, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
