"""Training a zoo model on a data set: the library behind `models/train.py`.

Writes into `model_dir`: `model.keras` (the trained model), `metrics.json`
(test accuracy, parameters, epochs, wall time), TensorBoard logs in `logs/`,
and, while training, a `backup/` that `BackupAndRestore` resumes from after an
interruption (it is deleted when training finishes).

Example:
    result = train(TrainConfig(model="small_cnn", dataset="fashion_mnist",
                               epochs=8, model_dir="runs/baseline"))
    result.metrics["test_accuracy"]
"""

import dataclasses
import os
import shutil
import time

import numpy as np

import models
from tfcompress import data as data_lib
from tfcompress.keras import keras
from tfcompress.saving import save_model, write_json_atomic


@dataclasses.dataclass
class TrainConfig:
    """What to train, on what, and where the results go."""

    model: str = "small_cnn"
    dataset: str = "fashion_mnist"
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0
    model_dir: str = "runs/train"
    max_train_samples: int = None
    model_options: dict = dataclasses.field(default_factory=dict)
    verbose: int = 1

    def validate(self):
        """Raises ValueError naming the first bad field."""
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of "
                             f"{', '.join(models.list_models())}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.max_train_samples}")
        if not self.model_dir:
            raise ValueError("model_dir must be set")


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    metrics: dict
    history: dict


def _learning_rate(config, steps_per_epoch):
    # Cosine decay over the whole run: a few CPU epochs get most of the accuracy.
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.01)


def train(config, callbacks=(), dataset=None):
    """Trains `config.model` on `config.dataset`; see the module docstring.

    Args:
        config: a TrainConfig.
        callbacks: extra Keras callbacks.
        dataset: an already loaded `Dataset` (skips loading `config.dataset`).

    Returns:
        TrainResult with the trained model, the metrics dict and the history.
    """
    config.validate()
    ds = dataset or data_lib.load_dataset(config.dataset)
    x_train, y_train = data_lib.subsample(ds.x_train, ds.y_train, config.max_train_samples,
                                          config.seed)
    keras.utils.set_random_seed(config.seed)
    model = models.get_model(config.model, ds.input_shape, ds.num_classes, **config.model_options)
    steps = int(np.ceil(len(x_train) / config.batch_size))
    model.compile(optimizer=keras.optimizers.Adam(_learning_rate(config, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    os.makedirs(config.model_dir, exist_ok=True)
    if config.verbose:
        print(f"training {model.name} ({model.count_params():,} parameters) on "
              f"{ds.summary()}; {len(x_train)} training samples, {config.epochs} epochs",
              flush=True)
    backup_dir = os.path.join(config.model_dir, "backup")
    all_callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs"), update_freq="epoch"),
        *callbacks,
    ]
    start = time.time()
    history = model.fit(x_train, y_train, batch_size=config.batch_size, epochs=config.epochs,
                        shuffle=True, callbacks=all_callbacks, verbose=config.verbose)
    train_seconds = time.time() - start
    # Keras deletes the checkpoint after a finished fit but leaves the folder.
    shutil.rmtree(backup_dir, ignore_errors=True)
    test_loss, test_accuracy = model.evaluate(ds.x_test, ds.y_test, batch_size=256, verbose=0)
    metrics = {
        "model": config.model,
        "dataset": config.dataset,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "parameters": int(model.count_params()),
        "epochs": config.epochs,
        "epochs_run_this_time": len(history.epoch),
        "train_samples": int(len(x_train)),
        "test_samples": int(len(ds.x_test)),
        "wall_time_s": round(train_seconds, 2),
        "seed": config.seed,
    }
    save_model(model, os.path.join(config.model_dir, "model.keras"))
    write_json_atomic(os.path.join(config.model_dir, "metrics.json"), metrics)
    return TrainResult(model=model, metrics=metrics, history=history.history)
