r"""Trains a zoo model on a data set and saves it with its test accuracy.

A thin absl binary over `models.train_lib.train`. It shows Keras progress,
writes TensorBoard logs to MODEL_DIR/logs, resumes an interrupted run from
MODEL_DIR/backup, and saves MODEL_DIR/model.keras and MODEL_DIR/metrics.json.

Example:
    python -m models.train --model=small_cnn --dataset=fashion_mnist \
        --epochs=5 --model_dir=runs/baseline
    tfcompress train --model=ds_cnn --dataset=npz:clips.npz --model_options=size=S
"""

import sys

from absl import app, flags

import models
from tfcompress.errors import run_cli

FLAGS = flags.FLAGS

flags.DEFINE_enum("model", "small_cnn", models.list_models(), "Zoo model to train.")
flags.DEFINE_string("dataset", "fashion_mnist",
                    "fashion_mnist[:DIR], npz:PATH, imagefolder:PATH or tfds:NAME.")
flags.DEFINE_integer("epochs", 5, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (cosine decay).", lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling, subsampling).")
flags.DEFINE_string("model_dir", "runs/train", "Where the model, metrics and logs go.")
flags.DEFINE_integer("max_train_samples", None, "Train on this many samples (seeded subset).",
                     lower_bound=1)
flags.DEFINE_list("model_options", [], "Builder options as key=value, e.g. width=8,alpha=0.35.")


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


def _train():
    from models.train_lib import TrainConfig, train
    config = TrainConfig(
        model=FLAGS.model, dataset=FLAGS.dataset, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, seed=FLAGS.seed,
        model_dir=FLAGS.model_dir, max_train_samples=FLAGS.max_train_samples,
        model_options=parse_model_options(FLAGS.model_options))
    result = train(config)
    m = result.metrics
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


def parse_flags(argv):
    """absl's parser, but a bad flag is one line on stderr, not a usage dump."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(argv=None):
    """Entry point for `tfcompress train` and `tfcompress-train`."""
    app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
