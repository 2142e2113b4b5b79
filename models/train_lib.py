"""The training binary's flags as a recipe: `models/train.py` runs through the pipeline.

`TrainConfig` holds the binary's flags; `to_recipe` turns them into a recipe
(`tfcompress.config.Recipe`) and `train` runs it with `tfcompress.pipeline.run`
(no export or report), the same stages as `tfcompress run`. The stages go into
`model_dir/NN-kind/` (each with its `backup/` while it trains, `model.keras`,
`metrics.json`, `manifest.json`): a rerun reuses every finished stage whose
settings are the same (the pipeline's manifest hash; the dense phase too), and
resumes an interrupted one from its last finished epoch. At the end `train`
writes `model_dir/model.keras` (the last stage's model) and
`model_dir/metrics.json` (test accuracy, parameters, epochs, wall time, and
per phase what it did); TensorBoard logs go to `model_dir/logs/` (the phases
after the first in `logs/KIND/`).

The phases, in order: the dense phase (`train` a zoo model, or an
`--init_model` for `epochs`, which may be 0; or with `teacher` set, `distill`
that saved model into the zoo model), then `channel_prune`
(`channel_prune_ratio`), `lowrank` (`lowrank_energy`), `prune`
(`prune_sparsity`), `cluster` (`cluster_clusters`, sparsity-preserving after
pruning) and `qat` (with the scheme that keeps zeros and centroids). With
`qat`, `model.keras` is the QAT model: export it with `tfcompress export
--mode int8_full` (no calibration needed).

Example:
    result = train(TrainConfig(model="small_cnn", dataset="fashion_mnist",
                               epochs=8, model_dir="runs/baseline"))
    result.metrics["test_accuracy"]
"""

import dataclasses
import os

import models
from tfcompress import config as recipe_lib
from tfcompress import data as data_lib
from tfcompress import heads
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
        # An --init_model's options are its own: the zoo model's are not read then.
        models.check_options(self.model, {} if self.init_model else self.model_options)
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
        if self.init_model and not os.path.exists(self.init_model):
            raise ValueError(f"--init_model {self.init_model}: no such file or directory")
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


def to_recipe(config):
    """The recipe that runs `config`'s phases (`TrainConfig.later_phases`) in order."""
    given = config.init_model or config.teacher
    spec = recipe_lib.ModelSpec(path=config.init_model) if config.init_model else \
        recipe_lib.ModelSpec(model=config.model, options=dict(config.model_options))
    stages = []
    if config.teacher:
        teacher, student = recipe_lib.ModelSpec(path=config.teacher), spec
        stages.append(recipe_lib.DistillStage(
            epochs=config.epochs, temperature=config.distill_temperature,
            alpha=config.distill_alpha, learning_rate=config.learning_rate,
            batch_size=config.batch_size))
    else:
        teacher, student = spec, recipe_lib.ModelSpec()
        if config.epochs or not given:
            stages.append(recipe_lib.TrainStage(epochs=config.epochs,
                                                learning_rate=config.learning_rate,
                                                batch_size=config.batch_size))
    for phase in config.later_phases:
        stages.append(_phase_settings(phase, config))
    return recipe_lib.Recipe(
        name=os.path.basename(os.path.normpath(config.model_dir)) or "train",
        seed=config.seed, strategy=config.strategy,
        data=recipe_lib.DataConfig(dataset=config.dataset,
                                   max_train_samples=config.max_train_samples,
                                   scale=config.data_scale, mean=config.data_mean,
                                   std=config.data_std),
        teacher=teacher, student=student,
        stages=[recipe_lib.Stage(s.KIND, s) for s in stages],
        # The binary never measured its input model against chance; `tfcompress run` does.
        chance_check=False)


def _phase_settings(phase, config):
    """The stage settings of a phase after the dense one, from `config`'s flags."""
    if phase == "channel_prune":
        return recipe_lib.ChannelPruneStage(
            ratio=config.channel_prune_ratio, criterion=config.channel_prune_criterion,
            round_to=config.channel_prune_round_to, epochs=config.channel_prune_epochs,
            learning_rate=config.learning_rate, batch_size=config.batch_size)
    if phase == "lowrank":
        return recipe_lib.LowRankStage(energy=config.lowrank_energy,
                                       epochs=config.lowrank_epochs,
                                       batch_size=config.batch_size)
    if phase == "prune":
        # By default the training learning rate, decayed again over the pruning phase:
        # measured on the Fashion-MNIST baseline (80%, 3 epochs), a tenth of it lost
        # 1.64 points, half 0.99, the full rate 0.74 (make bench, BUILD_NOTES.md).
        return recipe_lib.PruneStage(
            sparsity=config.prune_sparsity, epochs=config.prune_epochs,
            schedule=config.prune_schedule, structure=config.prune_structure,
            skip_first_and_last=config.prune_skip_first_and_last,
            exclude=list(config.prune_exclude),
            learning_rate=config.prune_learning_rate or config.learning_rate,
            batch_size=config.batch_size)
    if phase == "cluster":
        return recipe_lib.ClusterStage(clusters=config.cluster_clusters,
                                       epochs=config.cluster_epochs,
                                       exclude=list(config.cluster_exclude),
                                       preserve_sparsity=config.prune_sparsity is not None,
                                       learning_rate=config.cluster_learning_rate,
                                       batch_size=config.batch_size)
    return recipe_lib.QATStage(epochs=config.qat_epochs, scheme=config.qat_scheme,
                               exclude_layers=list(config.qat_exclude_layers),
                               exclude_types=list(config.qat_exclude_types),
                               learning_rate=config.qat_learning_rate,
                               batch_size=config.batch_size)


def train(config, callbacks=(), dataset=None):
    """Runs `config`'s phases through the pipeline; see the module docstring.

    Under `config.strategy` the stages run in the strategy's scope and
    `config.batch_size` is the global batch. Under multi_worker only the chief
    writes into `config.model_dir`; the other workers write into a throwaway
    folder but train against the chief's backups (BackupAndRestore's own scheme).

    Args:
        config: a TrainConfig.
        callbacks: extra Keras callbacks (every phase).
        dataset: an already loaded `Dataset` (skips loading `config.dataset`).

    Returns:
        TrainResult with the trained model, the metrics dict and the last phase's history.
    """
    from tfcompress import distribute, pipeline
    config.validate()
    recipe = recipe_lib.validate(to_recipe(config))
    if dataset is None:
        data = pipeline.load_data(recipe)
    else:
        data = (dataset, *data_lib.subsample(dataset.x_train, dataset.y_train,
                                             config.max_train_samples, config.seed))
    _check_files_fit(config, data[0])
    log = (lambda line: print(line, flush=True)) if config.verbose else (lambda line: None)
    result = pipeline.run(recipe, config.model_dir, log=log, verbose=config.verbose,
                          allow_unsafe=config.allow_unsafe, measure=False,
                          callbacks=tuple(callbacks),
                          tensorboard_dir=os.path.join(config.model_dir, "logs"), data=data)
    model = result["model"]
    if isinstance(model, pipeline.SavedStageModel):
        model = model.load()
    ds, x_train, _ = result["data"]
    metrics = _metrics(config, result["stages"], model, ds, x_train, config.allow_unsafe)
    # Under multi_worker every worker saves (a collective); only the chief's is model_dir's.
    out = distribute.write_dir(config.model_dir)
    save_model(model, os.path.join(out, "model.keras"))
    write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    last = result["stages"][-1]["info"] if result["stages"] else {}
    return TrainResult(model=model, metrics=metrics, history=last.get("history", {}))


def _check_files_fit(config, ds):
    """--init_model and --teacher read the data's inputs and score its classes (named by
    their flags, before the pipeline names them as its teacher or student)."""
    from tfcompress.checks import check_finite_weights
    from tfcompress.saving import load_model
    # What the file is to the first phase that takes it, for a NaN-weights message.
    verbs = {"train": "train", "distill": "distill into", "channel_prune": "channel-prune",
             "lowrank": "factorize", "prune": "prune", "cluster": "cluster", "qat": "quantize"}
    first = ("train" if config.epochs else (config.later_phases or ["train"])[0])
    roles = {"--init_model": f"the model to {verbs[first]}", "--teacher": "the teacher"}
    for flag, path in (("--init_model", config.init_model), ("--teacher", config.teacher)):
        if not path:
            continue
        model = load_model(path, allow_unsafe=config.allow_unsafe, compile=False)
        check_finite_weights(model, roles[flag])
        if tuple(model.input_shape[1:]) != tuple(ds.input_shape):
            raise ValueError(f"{flag} {path} takes inputs {model.input_shape[1:]} but "
                             f"{config.dataset} has {ds.input_shape}")
        heads.check_fits(heads.detect(model, name=f"{flag} {path}"), ds.num_classes,
                         f"{flag} {path}", config.dataset)


def _metrics(config, stages, model, ds, x_train, allow_unsafe):
    """metrics.json: the final model's test accuracy and what each phase did."""
    from tfcompress import pipeline
    first, later = stages[0], stages[1:]
    if first["kind"] == "input" and later and later[0]["kind"] in ("train", "distill"):
        first, later = later[0], later[1:]
    dense = pipeline.SavedStageModel(first["dir"], first["kind"], allow_unsafe).load()
    head = heads.detect(dense)  # the plain model's: QAT and pruning wrappers hide its op
    scores = model.predict(ds.x_test, batch_size=256, verbose=0)
    metrics = {}
    if later:
        metrics["dense_test_accuracy"] = first["info"]["keras_test_accuracy"]
    run_now = [s["info"] for s in stages if not s["reused"]]
    for stage in later:
        info, kind = stage["info"], stage["kind"]
        if kind == "prune":
            from tfcompress import pruning
            pruned = pipeline.SavedStageModel(stage["dir"], kind, allow_unsafe).load()
            metrics.update(sparsity=pruning.sparsity_report(pruned, config.prune_structure)[
                "total"], prune_epochs=config.prune_epochs, prune_target=config.prune_sparsity)
        keys = {"channel_prune": ("macs_before", "macs_after"), "lowrank": ("factored_layers",),
                "cluster": ("max_unique_values",), "qat": ("scheme",)}.get(kind, ())
        metrics.update({f"{kind}_{k}": info[k] for k in keys if k in info})
    metrics.update({
        "model": config.init_model or config.model,
        "dataset": config.dataset,
        "test_accuracy": float(head.accuracy(scores, ds.y_test)),
        "test_loss": float(head.mean_loss(scores, ds.y_test)),
        "parameters": int(model.count_params()),
        "epochs": config.epochs,
        "epochs_run_this_time": sum(info.get("epochs_run", 0) for info in run_now),
        "train_samples": int(len(x_train)),
        "test_samples": int(len(ds.x_test)),
        "wall_time_s": round(sum(info.get("train_seconds", 0) for info in run_now), 2),
        "seed": config.seed,
    })
    distributed = [s["info"] for s in stages if "replicas" in s["info"]]
    if distributed:
        metrics.update({k: distributed[-1][k] for k in ("strategy", "replicas",
                                                         "global_batch_size",
                                                         "per_replica_batch_size")
                        if k in distributed[-1]})
    return metrics
