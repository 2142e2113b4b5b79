"""The pipeline's Keras stages: each takes a model and returns a model (Keras -> Keras).

`train`, `distill`, `prune`, `channel_prune`, `lowrank`, `cluster` and `qat`
glue the technique modules (`distillation`, `pruning`, `channel_pruning`,
`lowrank`, `clustering`, `quantization`) to `fit`: compile with
Adam on a cosine-decayed learning rate, train with `BackupAndRestore` in
`work_dir/backup` so a killed stage resumes from its last finished epoch, and
return the plain (stripped) model plus a dict of facts for the report.
With `ctx.strategy` (a `tf.distribute.Strategy`, see `tfcompress.distribute`)
`run_stage` runs the stage in its scope; batch sizes are global.

Example:
    ctx = StageContext(x_train, y_train, x_test, y_test, work_dir="runs/x/03-prune")
    model, info = run_stage("prune", model, PruneStage(sparsity=0.8, epochs=3), ctx)
"""

import dataclasses
import os
import sys
import time
from typing import Callable, Optional

import numpy as np

from tfcompress import distribute, heads
from tfcompress.keras import keras
from tfcompress.training import compile_for_training  # noqa: F401  (stages' public name)


@dataclasses.dataclass
class StageContext:
    """What every stage needs besides its own settings."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    work_dir: str
    seed: int = 0
    verbose: Optional[int] = None            # Keras fit verbosity; None: bar on a tty, else a line an epoch
    log: Callable = print
    student_builder: Optional[Callable] = None  # () -> a fresh student model (distill)
    teacher_builder: Optional[Callable] = None  # () -> the teacher, for stages with distill: true
    earlier_stages: tuple = ()               # kinds of the stages already run (qat scheme "auto")
    callbacks: tuple = ()                    # extra Keras callbacks
    strategy: object = None                  # a tf.distribute.Strategy; None: one device
    head: Optional[heads.Head] = None        # the input model's head (run_stage detects it)


def _verbosity(ctx):
    if ctx.verbose is not None:
        return ctx.verbose
    return 1 if sys.stdout.isatty() else 2


def steps_per_epoch(ctx, batch_size):
    return int(np.ceil(len(ctx.x_train) / batch_size))


def with_teacher(model, settings, ctx):
    """The model to compile and fit: `model` itself, or a Distiller around it when the
    stage says `distill: true` (the teacher's soft targets keep guiding it)."""
    if not getattr(settings, "distill", False):
        return model
    from tfcompress import distillation
    return distillation.Distiller(
        distribute.in_scope(ctx.teacher_builder(), ctx.strategy), model,
        distillation_losses=distillation.LogitsDistillation(temperature=settings.temperature),
        student_loss_weight=settings.alpha)


def fit(model, ctx, epochs, batch_size, callbacks=()):
    """`model.fit` with resume: returns {"epochs", "train_seconds", "history"}.

    The backup in `ctx.work_dir/backup` is the resume point; a run killed and
    rerun ends with the same weights as one never killed (`tfcompress.resume`).
    """
    from tfcompress import resume
    backup = os.path.join(ctx.work_dir, "backup")
    if resume.has_backup(backup):
        ctx.log(f"  resuming from the backup in {backup}")
    start = time.time()
    history = resume.resumable_fit(model, ctx.x_train, ctx.y_train, batch_size, epochs, backup,
                                   seed=ctx.seed, callbacks=[*callbacks, *ctx.callbacks],
                                   verbose=_verbosity(ctx))
    seconds = time.time() - start
    return {"epochs": epochs, "train_seconds": round(seconds, 2),
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()}}


def keras_accuracy(model, ctx, head=None):
    """Top-1 accuracy of a Keras model on the test split, by its head's rule (argmax, or
    a threshold for one unit): never the model's own compiled metrics."""
    head = head or ctx.head or heads.detect(model)
    return head.accuracy(model.predict(ctx.x_test, batch_size=256, verbose=0), ctx.y_test)


# ----------------------------------------------------------------------------- stages

def train_stage(model, settings, ctx):
    """Trains `model` (the teacher) on the training split."""
    compile_for_training(model, settings.learning_rate,
                         settings.epochs * steps_per_epoch(ctx, settings.batch_size), ctx.head)
    info = fit(model, ctx, settings.epochs, settings.batch_size) if settings.epochs else {}
    return model, info


def distill_stage(teacher, settings, ctx):
    """Distills `teacher` into a fresh student from `ctx.student_builder`."""
    from tfcompress import distillation
    student = distribute.in_scope(ctx.student_builder(), ctx.strategy)
    student_head = heads.detect(student, name=f"the student {student.name!r}")
    heads.check_fits(student_head, ctx.head.num_classes, f"the student {student.name!r}",
                     "the teacher's data")
    distiller = distillation.Distiller(
        teacher, student,
        distillation_losses=distillation.LogitsDistillation(temperature=settings.temperature),
        student_loss_weight=settings.alpha)
    compile_for_training(distiller, settings.learning_rate,
                         settings.epochs * steps_per_epoch(ctx, settings.batch_size),
                         student_head)
    info = fit(distiller, ctx, settings.epochs, settings.batch_size)
    info["teacher_parameters"] = int(teacher.count_params())
    info["student_parameters"] = int(distiller.student.count_params())
    ctx.head = student_head  # the stage's output model is the student (run_stage records it)
    return distiller.student, info


def prune_stage(model, settings, ctx):
    """Magnitude pruning to `settings.sparsity`; returns the stripped, sparse model."""
    from tfcompress import pruning, schedules
    steps = steps_per_epoch(ctx, settings.batch_size)
    structured_nm = bool(settings.structure and ":" in settings.structure)
    config = pruning.PruningConfig(
        target_sparsity=None if structured_nm else settings.sparsity,
        schedule=schedules.get(settings.schedule), structure=settings.structure,
        skip_first_and_last=settings.skip_first_and_last, exclude=tuple(settings.exclude))
    pruned = pruning.prune(model, config, steps_per_epoch=steps, total_epochs=settings.epochs)
    trainee = with_teacher(pruned, settings, ctx)
    compile_for_training(trainee, settings.learning_rate, settings.epochs * steps, ctx.head)
    info = fit(trainee, ctx, settings.epochs, settings.batch_size,
               callbacks=pruning.pruning_callbacks())
    stripped = pruning.strip_pruning(pruned)
    report = pruning.sparsity_report(stripped)
    info["sparsity"] = report["total"]["sparsity"] if "total" in report else None
    return stripped, info


def channel_prune_stage(model, settings, ctx):
    """Removes whole channels (tfcompress.channel_pruning), then fine-tunes or distills."""
    from tfcompress import channel_pruning, distillation
    config = channel_pruning.ChannelPruningConfig(
        ratio=settings.ratio, criterion=settings.criterion, round_to=settings.round_to,
        target_macs=settings.target_macs, skip_first_and_last=settings.skip_first_and_last)
    # Taylor importance needs gradients on a few batches of training data.
    data = (ctx.x_train[:2048], ctx.y_train[:2048]) if settings.criterion == "taylor" else None
    if distribute.strategy_name(ctx.strategy) == "default":
        thin, plan = channel_pruning.prune_channels(model, config, data=data)
    else:
        # Under a strategy the plan is made on a plain copy: Taylor's GradientTape
        # cannot watch mirrored variables outside fit ("DistributedVariable.handle
        # is not available outside the replica context"). The thin model is then
        # rebuilt inside the strategy's scope to train.
        thin, plan = distribute.outside_strategy(_plain_prune_channels, model, config, data)
        thin = distribute.in_scope(thin, ctx.strategy)
    ctx.log(f"  channels pruned ({settings.criterion}): MACs {plan.macs_before:,} -> "
            f"{plan.macs_after:,}, parameters {plan.params_before:,} -> {plan.params_after:,}")
    steps = settings.epochs * steps_per_epoch(ctx, settings.batch_size)
    if settings.distill:  # the unpruned model teaches its thinner self
        trainee = distillation.Distiller(
            model, thin,
            distillation_losses=distillation.LogitsDistillation(temperature=settings.temperature),
            student_loss_weight=settings.alpha)
    else:
        trainee = thin
    compile_for_training(trainee, settings.learning_rate, steps, ctx.head)
    info = fit(trainee, ctx, settings.epochs, settings.batch_size)
    info.update(macs_before=plan.macs_before, macs_after=plan.macs_after,
                parameters_before=plan.params_before)
    return thin, info


def _plain_prune_channels(model, config, data):
    from tfcompress import channel_pruning
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    return channel_pruning.prune_channels(plain, config, data=data)


def lowrank_stage(model, settings, ctx):
    """SVD-factorizes Dense and 1x1 Conv2D layers (tfcompress.lowrank), then fine-tunes."""
    from tfcompress import lowrank
    factored, details = lowrank.factorize(model, lowrank.LowRankConfig(
        energy=settings.energy, rank_ratio=settings.rank_ratio,
        min_params_saving=settings.min_params_saving))
    ctx.log(f"  low-rank: parameters {details['params_before']:,} -> "
            f"{details['params_after']:,}")
    compile_for_training(factored, settings.learning_rate,
                         settings.epochs * steps_per_epoch(ctx, settings.batch_size), ctx.head)
    info = fit(factored, ctx, settings.epochs, settings.batch_size) if settings.epochs else {}
    info["factored_layers"] = [row["layer"] for row in details["layers"] if row.get("factored")]
    return factored, info


def cluster_stage(model, settings, ctx):
    """Weight clustering; sparsity-preserving when asked (the default)."""
    from tfcompress import clustering
    config = clustering.ClusteringConfig(number_of_clusters=settings.clusters,
                                         init=settings.init,
                                         preserve_sparsity=settings.preserve_sparsity,
                                         exclude=tuple(settings.exclude))
    clustered = clustering.cluster(model, config)
    trainee = with_teacher(clustered, settings, ctx)
    compile_for_training(trainee, settings.learning_rate,
                         settings.epochs * steps_per_epoch(ctx, settings.batch_size), ctx.head)
    info = fit(trainee, ctx, settings.epochs, settings.batch_size)
    stripped = clustering.strip_clustering(clustered)
    info["max_unique_values"] = clustering.unique_values_report(stripped)["max_unique"]
    return stripped, info


def qat_scheme(settings, earlier_stages):
    """The QAT scheme; "auto" keeps what earlier stages made (zeros, centroids)."""
    if settings.scheme != "auto":
        return settings.scheme
    pruned, clustered = "prune" in earlier_stages, "cluster" in earlier_stages
    if pruned and clustered:
        return "prune_cluster_preserving"
    return "prune_preserving" if pruned else "cluster_preserving" if clustered else "default"


def qat_stage(model, settings, ctx):
    """Quantization-aware training; returns the QAT model (it converts to int8 as is)."""
    from tfcompress import quantization
    scheme = qat_scheme(settings, ctx.earlier_stages)
    qat_model = quantization.quantize(
        model, quantization.QATConfig(scheme=scheme, per_tensor=settings.per_tensor,
                                      exclude_layers=tuple(settings.exclude_layers),
                                      exclude_types=tuple(settings.exclude_types)))
    trainee = with_teacher(qat_model, settings, ctx)
    compile_for_training(trainee, settings.learning_rate,
                         settings.epochs * steps_per_epoch(ctx, settings.batch_size), ctx.head)
    info = fit(trainee, ctx, settings.epochs, settings.batch_size)
    info["scheme"] = scheme
    return qat_model, info


STAGE_FUNCTIONS = {"train": train_stage, "distill": distill_stage, "prune": prune_stage,
                   "channel_prune": channel_prune_stage, "lowrank": lowrank_stage,
                   "cluster": cluster_stage, "qat": qat_stage}


def run_stage(kind, model, settings, ctx):
    """Runs stage `kind`; returns (model, info) with test accuracy and parameters in info.

    Under `ctx.strategy` the stage runs in its scope (models, optimizers and
    metrics are made there; the input model is rebuilt there if it was made
    outside), after `distribute.check_supported` and a check that the global
    batch splits evenly over the replicas; info records both batch sizes.
    """
    keras.utils.set_random_seed(ctx.seed)
    batch_size = getattr(settings, "batch_size", None)
    with distribute.stage_scope(kind, ctx.strategy, batch_size, ctx.log):
        model = distribute.in_scope(model, ctx.strategy)
        # The plain input model's head: wrapped (pruned, QAT) models hide its op.
        ctx.head = ctx.head or heads.detect(model)
        model, info = STAGE_FUNCTIONS[kind](model, settings, ctx)
        info["keras_test_accuracy"] = keras_accuracy(model, ctx)
        info["head"] = ctx.head.to_dict()  # the output model's (distill: the student's)
    info["parameters"] = int(model.count_params())
    if distribute.strategy_name(ctx.strategy) != "default":
        info.update(strategy=distribute.strategy_name(ctx.strategy),
                    replicas=distribute.num_replicas(ctx.strategy))
        if batch_size is not None:
            info.update(global_batch_size=batch_size,
                        per_replica_batch_size=distribute.per_replica_batch_size(batch_size,
                                                                                ctx.strategy))
    return model, info
