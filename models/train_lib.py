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
sparsity report. A rerun after an interruption reuses `dense.keras` when
`dense.json` says it was trained with the same settings (model, data, epochs,
learning rate, seed, init model, teacher...); otherwise it trains it again.

`channel_prune_ratio` removes that fraction of whole channels (a thinner,
faster model) and fine-tunes it; `lowrank_energy` SVD-factorizes Dense and 1x1
conv layers keeping that share of the spectrum's energy; both run after the
dense phase and before magnitude pruning.

With `teacher` set, the dense phase distills that saved model into the new zoo
model (`tfcompress.distillation`, Hinton soft targets at `distill_temperature`,
student loss weight `distill_alpha`). `cluster_clusters` adds weight clustering
(sparsity-preserving after pruning) and `qat` quantization-aware training (with
the scheme that keeps zeros and centroids); they run in that order after
pruning, through the same stage functions as `tfcompress run` recipes
(`tfcompress.stages`). With `qat`, `model.keras` is the QAT model: export it
with `tfcompress export --mode int8_full` (no calibration needed). A rerun after
an interruption in the cluster or QAT phase reuses `dense.keras`, redoes the
(deterministic) pruning phase and resumes the interrupted phase from `backup/`.

Example:
    result = train(TrainConfig(model="small_cnn", dataset="fashion_mnist",
                               epochs=8, model_dir="runs/baseline"))
    result.metrics["test_accuracy"]
"""

import dataclasses
import json
import os
import time

import numpy as np

import models
from tfcompress import data as data_lib
from tfcompress import heads
from tfcompress.errors import stage_errors
from tfcompress.keras import keras, tf
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
    channel_prune_ratio: float = None
    channel_prune_criterion: str = "l1"
    channel_prune_round_to: int = 1
    channel_prune_epochs: int = 2
    lowrank_energy: float = None
    lowrank_epochs: int = 1
    teacher: str = None
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5
    cluster_clusters: int = None
    cluster_epochs: int = 1
    cluster_learning_rate: float = 1e-4
    qat: bool = False
    qat_epochs: int = 1
    qat_learning_rate: float = 1e-4
    qat_scheme: str = "auto"
    cluster_exclude: tuple = ()
    qat_exclude_layers: tuple = ()
    qat_exclude_types: tuple = ()
    # How stored data values map to the model's input (tfcompress.data.scale_dataset).
    data_scale: str = "auto"
    data_mean: object = None
    data_std: object = None
    allow_unsafe: bool = False   # --init_model/--teacher files that hold code (trusted only)
    # tf.distribute strategy (tfcompress.distribute): default, mirrored, multi_worker.
    # batch_size is then the global batch, split evenly over the replicas.
    strategy: str = "default"

    def validate(self):
        """Raises ValueError naming the first bad field."""
        from tfcompress import distribute
        if self.strategy not in distribute.STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of "
                             f"{', '.join(distribute.STRATEGIES)}")
        for phase in ["distill" if self.teacher else "train", *self.later_phases]:
            distribute.check_supported(phase, self.strategy)  # before anything trains
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
        if self.teacher is not None:
            if not self.distill_temperature > 0:
                raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
            if not 0 <= self.distill_alpha <= 1:
                raise ValueError(f"distill_alpha (the student loss weight) must be in [0, 1], "
                                 f"got {self.distill_alpha}")
            if not os.path.exists(self.teacher):
                raise ValueError(f"--teacher {self.teacher}: no such file or directory")
            if not self.epochs:
                raise ValueError("--teacher needs --epochs >= 1: distillation trains the student")
        if self.cluster_clusters is not None and self.cluster_clusters < 2:
            raise ValueError(f"cluster_clusters must be >= 2, got {self.cluster_clusters}")
        if self.channel_prune_ratio is not None and not 0 < self.channel_prune_ratio < 1:
            raise ValueError(f"channel_prune_ratio must be in (0, 1), got "
                             f"{self.channel_prune_ratio}")
        if self.lowrank_energy is not None and not 0 < self.lowrank_energy <= 1:
            raise ValueError(f"lowrank_energy must be in (0, 1], got {self.lowrank_energy}")
        for name in ("cluster_epochs", "qat_epochs", "channel_prune_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cluster_learning_rate", "qat_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def later_phases(self):
        """Phases after the dense (or distillation) phase, in order."""
        return [name for name, on in (("channel_prune", self.channel_prune_ratio is not None),
                                      ("lowrank", self.lowrank_energy is not None),
                                      ("prune", self.prune_sparsity is not None),
                                      ("cluster", self.cluster_clusters is not None),
                                      ("qat", self.qat)) if on]


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    metrics: dict
    history: dict


def _compile(model, learning_rate, steps, head=None):
    """Adam (cosine decay over `steps`) with the loss and accuracy of the model's head
    (detected when None): a logits or one-sigmoid-unit --init_model trains with its own
    loss (tfcompress.heads)."""
    from tfcompress import stages
    stages.compile_for_training(model, learning_rate, steps, head or heads.detect(model))


def _test_accuracy(model, ds, head=None):
    """(loss, top-1) on the test split, by the head's rules; never the file's compile."""
    head = head or heads.detect(model)
    scores = model.predict(ds.x_test, batch_size=256, verbose=0)
    return head.mean_loss(scores, ds.y_test), head.accuracy(scores, ds.y_test)


def _fit(model, x, y, config, epochs, backup_dir, log_dir, callbacks):
    """fit with bit-exact resume from `backup_dir` (tfcompress.resume); returns (history, seconds)."""
    from tfcompress import resume
    start = time.time()
    history = resume.resumable_fit(
        model, x, y, config.batch_size, epochs, backup_dir, seed=config.seed,
        callbacks=[keras.callbacks.TensorBoard(log_dir, update_freq="epoch"), *callbacks],
        verbose=config.verbose)
    return history, time.time() - start


def _initial_model(config, ds):
    if not config.init_model:
        return models.get_model(config.model, ds.input_shape, ds.num_classes,
                                **config.model_options)
    model = load_model(config.init_model, allow_unsafe=config.allow_unsafe, compile=False)
    if tuple(model.input_shape[1:]) != ds.input_shape:
        raise ValueError(f"--init_model {config.init_model} takes inputs {model.input_shape[1:]} "
                         f"but {config.dataset} has {ds.input_shape}")
    heads.check_fits(heads.detect(model), ds.num_classes, f"--init_model {config.init_model}",
                     config.dataset)
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
    head = heads.detect(model)  # before wrapping, which hides the output's op
    pruned = pruning.prune(model, prune_config, steps_per_epoch=steps,
                           total_epochs=config.prune_epochs)
    # By default the training learning rate, decayed again over the pruning phase:
    # measured on the Fashion-MNIST baseline (80%, 3 epochs), a tenth of it lost
    # 1.64 points, half 0.99, the full rate 0.74 (make bench, BUILD_NOTES.md).
    learning_rate = config.prune_learning_rate or config.learning_rate
    _compile(pruned, learning_rate, config.prune_epochs * steps, head)
    history, seconds = _fit(pruned, x, y, config, config.prune_epochs,
                            os.path.join(config.model_dir, "backup-prune"),
                            os.path.join(config.model_dir, "logs", "prune"),
                            [*pruning.pruning_callbacks(), *callbacks])
    return pruning.strip_pruning(pruned), seconds, len(history.epoch)


def _stage_context(ds, x, y, config, callbacks, log_name):
    from tfcompress import stages
    tensorboard = keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs", log_name),
                                              update_freq="epoch")
    return stages.StageContext(
        x, y, ds.x_test, ds.y_test, work_dir=config.model_dir, seed=config.seed,
        verbose=config.verbose, callbacks=(tensorboard, *callbacks),
        # `train` runs everything in the strategy's scope; the stages need it too.
        strategy=tf.distribute.get_strategy() if tf.distribute.has_strategy() else None,
        log=lambda line: print(line, flush=True) if config.verbose else None,
        earlier_stages=tuple(p for p in ("prune", "cluster") if p in config.later_phases))

def _distill_phase(student, ds, x, y, config, callbacks):
    """Distills --teacher into the new zoo `student` for config.epochs (tfcompress.stages)."""
    from tfcompress import config as recipe, stages
    teacher = load_model(config.teacher, allow_unsafe=config.allow_unsafe, compile=False)
    if tuple(teacher.input_shape[1:]) != tuple(ds.input_shape):
        raise ValueError(f"--teacher {config.teacher} takes {teacher.input_shape[1:]}; "
                         f"{config.dataset} has {ds.input_shape}")
    ctx = _stage_context(ds, x, y, config, callbacks, "distill")
    ctx.head = heads.detect(teacher, name=f"--teacher {config.teacher}")
    heads.check_fits(ctx.head, ds.num_classes, f"--teacher {config.teacher}", config.dataset)
    ctx.student_builder = lambda: student
    settings = recipe.DistillStage(epochs=config.epochs, temperature=config.distill_temperature,
                                   alpha=config.distill_alpha, learning_rate=config.learning_rate,
                                   batch_size=config.batch_size)
    if config.verbose:
        print(f"distilling {teacher.name} ({teacher.count_params():,} parameters) into "
              f"{student.name}: T={config.distill_temperature}, student loss weight "
              f"{config.distill_alpha}", flush=True)
    return settings.run(teacher, ctx)


def _late_phase(phase, model, ds, x, y, config, callbacks):
    """Clustering or QAT after the dense/pruning phases (tfcompress.stages)."""
    from tfcompress import config as recipe, stages
    ctx = _stage_context(ds, x, y, config, callbacks, phase)
    if phase == "channel_prune":
        settings = recipe.ChannelPruneStage(
            ratio=config.channel_prune_ratio, criterion=config.channel_prune_criterion,
            round_to=config.channel_prune_round_to, epochs=config.channel_prune_epochs,
            learning_rate=config.learning_rate, batch_size=config.batch_size)
    elif phase == "lowrank":
        settings = recipe.LowRankStage(energy=config.lowrank_energy, epochs=config.lowrank_epochs,
                                       batch_size=config.batch_size)
    elif phase == "cluster":
        settings = recipe.ClusterStage(clusters=config.cluster_clusters,
                                       epochs=config.cluster_epochs,
                                       exclude=list(config.cluster_exclude),
                                       preserve_sparsity=config.prune_sparsity is not None,
                                       learning_rate=config.cluster_learning_rate,
                                       batch_size=config.batch_size)
        ctx.earlier_stages = ("prune",) if config.prune_sparsity is not None else ()
    else:
        settings = recipe.QATStage(epochs=config.qat_epochs, scheme=config.qat_scheme,
                                   exclude_layers=list(config.qat_exclude_layers),
                                   exclude_types=list(config.qat_exclude_types),
                                   learning_rate=config.qat_learning_rate,
                                   batch_size=config.batch_size)
    if config.verbose:
        print(f"{phase}: {settings.epochs} epoch(s)", flush=True)
    ctx.head = heads.detect(model)  # the plain model's: QAT/pruning wrappers hide its op
    with stage_errors(phase, config.init_model or f"zoo model {config.model}"):
        return settings.run(model, ctx)


def train(config, callbacks=(), dataset=None):
    """Trains (and optionally prunes) per `config`; see the module docstring.

    Under `config.strategy` everything runs in the strategy's scope (models,
    optimizers and metrics are made there) and `config.batch_size` is the
    global batch. Under multi_worker only the chief writes into
    `config.model_dir`; the other workers write into a throwaway folder but
    train against the chief's backups (BackupAndRestore's own scheme).

    Args:
        config: a TrainConfig.
        callbacks: extra Keras callbacks.
        dataset: an already loaded `Dataset` (skips loading `config.dataset`).

    Returns:
        TrainResult with the trained model, the metrics dict and the history.
    """
    from tfcompress import distribute
    config.validate()
    strategy = distribute.make_strategy(config.strategy)
    if config.strategy == "default":
        with stage_errors("train", config.init_model or f"zoo model {config.model}"):
            return _train(config, callbacks, dataset, config.model_dir)
    distribute.per_replica_batch_size(config.batch_size, strategy)  # raises if uneven
    if config.verbose:
        print(distribute.describe(strategy, config.batch_size), flush=True)
    with strategy.scope():
        result = _train(config, callbacks, dataset, distribute.write_dir(config.model_dir))
    distribute.sync_from_chief(strategy)  # the other workers wait for the chief to finish
    return result


def _dense_phase_key(config):
    """What the dense phase's result depends on: `dense.keras` is reused only if it matches."""
    fields = ("model", "dataset", "epochs", "batch_size", "learning_rate", "seed",
              "max_train_samples", "model_options", "init_model", "teacher",
              "distill_temperature", "distill_alpha")
    key = {name: getattr(config, name) for name in fields}
    for name in ("init_model", "teacher"):  # a retrained file at the same path is another model
        path = key[name]
        if path and os.path.exists(path):
            key[name] = [path, os.path.getsize(path), int(os.path.getmtime(path))]
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def _read_dense_key(model_dir):
    try:
        with open(os.path.join(model_dir, "dense.json")) as f:
            return json.load(f).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _train(config, callbacks, dataset, out_dir):
    """`train` in the strategy's scope; writes go to `out_dir` (model_dir on the chief)."""
    from tfcompress import distribute
    strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    ds = dataset or data_lib.load_dataset(config.dataset, scale=config.data_scale,
                                          mean=config.data_mean, std=config.data_std)
    x_train, y_train = data_lib.subsample(ds.x_train, ds.y_train, config.max_train_samples,
                                          config.seed)
    keras.utils.set_random_seed(config.seed)
    os.makedirs(config.model_dir, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    dense_path = os.path.join(config.model_dir, "dense.keras")
    pruning_run = bool(config.later_phases)
    history, train_seconds, epochs_run = None, 0.0, 0
    dense_key = _dense_phase_key(config)
    reuse = os.path.exists(dense_path) and _read_dense_key(config.model_dir) == dense_key
    if pruning_run and os.path.exists(dense_path) and not reuse and config.verbose:
        print(f"{dense_path} was trained with other settings (or by an older version): "
              "training the dense phase again", flush=True)
    # Every worker takes the chief's decision (they run collectives together).
    if pruning_run and distribute.sync_from_chief(strategy, reuse):
        # The dense phase finished in an earlier run.
        model = load_model(dense_path, allow_unsafe=config.allow_unsafe, compile=False)
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
        if config.teacher:
            model, info = _distill_phase(model, ds, x_train, y_train, config, callbacks)
            train_seconds, epochs_run = info["train_seconds"], config.epochs
        elif config.epochs:
            history, train_seconds = _fit(model, x_train, y_train, config, config.epochs,
                                          os.path.join(config.model_dir, "backup"),
                                          os.path.join(config.model_dir, "logs"), callbacks)
            epochs_run = len(history.epoch)
        if pruning_run:
            save_model(model, os.path.join(out_dir, "dense.keras"))
            write_json_atomic(os.path.join(out_dir, "dense.json"), {"key": dense_key})
    metrics = {}
    head = heads.detect(model)  # the plain model's, before any wrapper
    if pruning_run:
        metrics["dense_test_accuracy"] = _test_accuracy(model, ds, head)[1]
        if config.verbose:
            print(f"dense test accuracy {metrics['dense_test_accuracy']:.4f}; next: "
                  f"{', '.join(config.later_phases)}", flush=True)
    for phase in ("channel_prune", "lowrank"):
        if phase in config.later_phases:
            model, info = _late_phase(phase, model, ds, x_train, y_train, config, callbacks)
            train_seconds += info.get("train_seconds", 0)
            epochs_run += info.get("epochs", 0)
            metrics.update({f"{phase}_{k}": v for k, v in info.items()
                            if k in ("macs_before", "macs_after", "factored_layers")})
    if config.prune_sparsity is not None:
        from tfcompress import pruning
        model, prune_seconds, prune_run = _prune_phase(model, x_train, y_train, config, callbacks)
        train_seconds += prune_seconds
        epochs_run += prune_run
        report = pruning.sparsity_report(model, config.prune_structure)
        metrics.update(sparsity=report["total"], prune_epochs=config.prune_epochs,
                       prune_target=config.prune_sparsity)
    for phase in ("cluster", "qat"):
        if phase in config.later_phases:
            model, info = _late_phase(phase, model, ds, x_train, y_train, config, callbacks)
            train_seconds += info["train_seconds"]
            epochs_run += info["epochs"]
            metrics.update({f"{phase}_{k}": v for k, v in info.items()
                            if k in ("max_unique_values", "scheme")})
    test_loss, test_accuracy = _test_accuracy(model, ds, head)
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
    if strategy is not None:
        metrics.update(strategy=config.strategy, replicas=distribute.num_replicas(strategy),
                       global_batch_size=config.batch_size,
                       per_replica_batch_size=distribute.per_replica_batch_size(
                           config.batch_size, strategy))
    save_model(model, os.path.join(out_dir, "model.keras"))
    write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics)
    return TrainResult(model=model, metrics=metrics,
                       history=history.history if history is not None else {})
