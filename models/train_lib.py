"""Training a zoo model on a data set: the library behind `models/train.py`.

Writes into `model_dir`: `model.keras` (the trained model), `metrics.json`
(test accuracy, parameters, epochs, wall time), TensorBoard logs in `logs/`,
and, while training, a `backup/` that `BackupAndRestore` resumes from after an
interruption (it is deleted when training finishes).

With `prune_sparsity` set, training has two phases: the dense model (trained
for `epochs`, or loaded from `init_model` and trained for `epochs`, which may
be 0) is saved as `dense.keras`, then pruned with `tfcompress.pruning` and
fine-tuned for `prune_epochs` (backup in `backup-prune/`); `model.keras` is
the stripped, sparse model and `metrics.json` adds the dense accuracy and the
sparsity report. A rerun after an interruption reuses `dense.keras`.

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
from tfcompress.saving import load_model, save_model, write_json_atomic


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
    init_model: str = None
    prune_sparsity: float = None
    prune_schedule: str = "polynomial"
    prune_structure: str = None
    prune_epochs: int = 2
    prune_learning_rate: float = None
    prune_skip_first_and_last: bool = True
    prune_exclude: tuple = ()

    def validate(self):
        """Raises ValueError naming the first bad field."""
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of "
                             f"{', '.join(models.list_models())}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < (0 if self.init_model else 1):
            raise ValueError(f"epochs must be >= 1 (>= 0 with init_model), got {self.epochs}")
        if self.prune_learning_rate is not None and not self.prune_learning_rate > 0:
            raise ValueError(f"prune_learning_rate must be > 0, got {self.prune_learning_rate}")
        if self.prune_sparsity is not None and self.prune_epochs < 1:
            raise ValueError(f"prune_epochs must be >= 1, got {self.prune_epochs}")
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


def _compile(model, learning_rate, steps):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate if steps is None else
                                                  _schedule(learning_rate, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _schedule(learning_rate, total_steps):
    # Cosine decay over the whole phase: a few CPU epochs get most of the accuracy.
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps,
                                                  alpha=0.01)


def _fit(model, x, y, config, epochs, backup_dir, log_dir, callbacks):
    """fit with resume-from-backup; returns (history, seconds)."""
    all_callbacks = [keras.callbacks.BackupAndRestore(backup_dir),
                     keras.callbacks.TensorBoard(log_dir, update_freq="epoch"), *callbacks]
    start = time.time()
    history = model.fit(x, y, batch_size=config.batch_size, epochs=epochs, shuffle=True,
                        callbacks=all_callbacks, verbose=config.verbose)
    # Keras deletes the checkpoint after a finished fit but leaves the folder.
    shutil.rmtree(backup_dir, ignore_errors=True)
    return history, time.time() - start


def _initial_model(config, ds):
    if not config.init_model:
        return models.get_model(config.model, ds.input_shape, ds.num_classes,
                                **config.model_options)
    model = load_model(config.init_model)
    if tuple(model.input_shape[1:]) != ds.input_shape:
        raise ValueError(f"--init_model {config.init_model} takes inputs {model.input_shape[1:]} "
                         f"but {config.dataset} has {ds.input_shape}")
    if model.output_shape[-1] != ds.num_classes:
        raise ValueError(f"--init_model {config.init_model} has {model.output_shape[-1]} outputs "
                         f"but {config.dataset} has {ds.num_classes} classes")
    return model


def _prune_phase(model, x, y, config, callbacks):
    """Prunes `model` for config.prune_epochs; returns (stripped model, seconds, epochs run)."""
    from tfcompress import pruning, schedules
    steps = int(np.ceil(len(x) / config.batch_size))
    # The ramp ends at 3/4 of the phase, leaving the last quarter to recover.
    schedule = schedules.get(config.prune_schedule)
    prune_config = pruning.PruningConfig(
        target_sparsity=None if config.prune_structure and ":" in config.prune_structure
        else config.prune_sparsity,
        schedule=schedule, structure=config.prune_structure,
        skip_first_and_last=config.prune_skip_first_and_last,
        exclude=tuple(config.prune_exclude))
    pruned = pruning.prune(model, prune_config, steps_per_epoch=steps,
                           total_epochs=config.prune_epochs)
    # By default the training learning rate, decayed again over the pruning phase:
    # measured on the Fashion-MNIST baseline (80%, 3 epochs), a tenth of it lost
    # 1.64 points, half 0.99, the full rate 0.74 (make bench, BUILD_NOTES.md).
    learning_rate = config.prune_learning_rate or config.learning_rate
    _compile(pruned, learning_rate, config.prune_epochs * steps)
    history, seconds = _fit(pruned, x, y, config, config.prune_epochs,
                            os.path.join(config.model_dir, "backup-prune"),
                            os.path.join(config.model_dir, "logs", "prune"),
                            [*pruning.pruning_callbacks(), *callbacks])
    return pruning.strip_pruning(pruned), seconds, len(history.epoch)


def train(config, callbacks=(), dataset=None):
    """Trains (and optionally prunes) per `config`; see the module docstring.

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
    os.makedirs(config.model_dir, exist_ok=True)
    dense_path = os.path.join(config.model_dir, "dense.keras")
    pruning_run = config.prune_sparsity is not None
    history, train_seconds, epochs_run = None, 0.0, 0
    if pruning_run and os.path.exists(dense_path):
        model = load_model(dense_path)  # the dense phase finished in an earlier run
        if config.verbose:
            print(f"dense phase already done: reusing {dense_path}", flush=True)
    else:
        model = _initial_model(config, ds)
        steps = int(np.ceil(len(x_train) / config.batch_size))
        _compile(model, config.learning_rate, max(1, config.epochs * steps))
        if config.verbose:
            print(f"training {model.name} ({model.count_params():,} parameters) on "
                  f"{ds.summary()}; {len(x_train)} training samples, {config.epochs} epochs",
                  flush=True)
        if config.epochs:
            history, train_seconds = _fit(model, x_train, y_train, config, config.epochs,
                                          os.path.join(config.model_dir, "backup"),
                                          os.path.join(config.model_dir, "logs"), callbacks)
            epochs_run = len(history.epoch)
        if pruning_run:
            save_model(model, dense_path)
    metrics = {}
    if pruning_run:
        from tfcompress import pruning
        _compile(model, config.learning_rate, None)
        metrics["dense_test_accuracy"] = float(
            model.evaluate(ds.x_test, ds.y_test, batch_size=256, verbose=0)[1])
        if config.verbose:
            print(f"dense test accuracy {metrics['dense_test_accuracy']:.4f}; pruning to "
                  f"{config.prune_sparsity} for {config.prune_epochs} epochs", flush=True)
        model, prune_seconds, prune_run = _prune_phase(model, x_train, y_train, config, callbacks)
        train_seconds += prune_seconds
        epochs_run += prune_run
        report = pruning.sparsity_report(model, config.prune_structure)
        metrics.update(sparsity=report["total"], prune_epochs=config.prune_epochs,
                       prune_target=config.prune_sparsity)
        _compile(model, config.learning_rate, None)
    test_loss, test_accuracy = model.evaluate(ds.x_test, ds.y_test, batch_size=256, verbose=0)
    metrics.update({
        "model": config.init_model or config.model,
        "dataset": config.dataset,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "parameters": int(model.count_params()),
        "epochs": config.epochs,
        "epochs_run_this_time": epochs_run,
        "train_samples": int(len(x_train)),
        "test_samples": int(len(ds.x_test)),
        "wall_time_s": round(train_seconds, 2),
        "seed": config.seed,
    })
    save_model(model, os.path.join(config.model_dir, "model.keras"))
    write_json_atomic(os.path.join(config.model_dir, "metrics.json"), metrics)
    return TrainResult(model=model, metrics=metrics,
                       history=history.history if history is not None else {})
