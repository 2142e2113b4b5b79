"""What every stage runs with: the context, resumable `fit`, test accuracy, `run_stage`.

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


def total_steps(ctx, settings):
    """Optimizer steps of a whole stage: `settings.epochs` epochs of `settings.batch_size`."""
    return settings.epochs * steps_per_epoch(ctx, settings.batch_size)


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
    """`model.fit` with resume: returns {"epochs", "epochs_run", "train_seconds", "history"}
    (`epochs_run`: the epochs this call trained; fewer after a resume).

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
    return {"epochs": epochs, "epochs_run": len(history.epoch),
            "train_seconds": round(seconds, 2),
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()}}


def keras_accuracy(model, ctx, head=None):
    """Top-1 accuracy of a Keras model on the test split, by its head's rule (argmax, or
    a threshold for one unit): never the model's own compiled metrics."""
    head = head or ctx.head or heads.detect(model)
    return head.accuracy(model.predict(ctx.x_test, batch_size=256, verbose=0), ctx.y_test)


def run_stage(kind, model, settings, ctx):
    """Runs stage `kind` (`settings`, a registered stage's settings); returns (model, info)
    with test accuracy and parameters in info.

    Under `ctx.strategy` the stage runs in its scope (models, optimizers and
    metrics are made there; the input model is rebuilt there if it was made
    outside), after `distribute.check_supported` and a check that the global
    batch splits evenly over the replicas; info records both batch sizes.
    """
    if settings.KIND != kind:
        raise ValueError(f"run_stage({kind!r}) got the settings of stage {settings.KIND!r}")
    from tfcompress.keras import keras
    keras.utils.set_random_seed(ctx.seed)
    batch_size = getattr(settings, "batch_size", None)
    with distribute.stage_scope(kind, ctx.strategy, batch_size, ctx.log):
        model = distribute.in_scope(model, ctx.strategy)
        # The plain input model's head: wrapped (pruned, QAT) models hide its op.
        ctx.head = ctx.head or heads.detect(model)
        model, info = settings.run(model, ctx)
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
