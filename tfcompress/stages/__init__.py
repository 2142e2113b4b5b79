"""The pipeline's Keras stages: each takes a model and returns a model (Keras -> Keras).

Each stage kind is one module here holding one registered settings class
(`base.register`): `train`, `distill`, `prune`, `channel_prune`, `lowrank`,
`cluster`, `qat`. Its `run(model, ctx)` glues a technique module
(`distillation`, `pruning`, `channel_pruning`, `lowrank`, `clustering`,
`quantization`) to `fit`: compile with Adam on a cosine-decayed learning rate
(`tfcompress.training`), train with `BackupAndRestore` in `work_dir/backup` so
a killed stage resumes from its last finished epoch, and return the plain
(stripped) model plus a dict of facts for the report. Every module in this
package is imported here, so a new stage kind is one new file (see `base`).
Importing this package does not import TensorFlow.

Example:
    from tfcompress import stages
    stages.kinds()                                  # ('train', 'distill', ..., 'qat')
    settings = stages.get("prune")(sparsity=0.8, epochs=3)
    ctx = stages.StageContext(x_train, y_train, x_test, y_test, work_dir="runs/x/03-prune")
    model, info = stages.run_stage("prune", model, settings, ctx)
"""

import importlib
import pkgutil

from tfcompress.errors import RecipeError
from tfcompress.stages.base import (Distilling, SoftTargets, StageSettings, Training, get,
                                    kinds, markdown_table, number_in, one_of, register)
from tfcompress.stages.context import (StageContext, fit, keras_accuracy, run_stage,
                                       steps_per_epoch, total_steps, with_teacher)
from tfcompress.training import compile_for_training

_INFRASTRUCTURE = ("base", "context")
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
del _module

from tfcompress.stages.channel_prune import ChannelPruneStage  # noqa: E402
from tfcompress.stages.cluster import ClusterStage  # noqa: E402
from tfcompress.stages.distill import DistillStage  # noqa: E402
from tfcompress.stages.lowrank import LowRankStage  # noqa: E402
from tfcompress.stages.prune import PruneStage  # noqa: E402
from tfcompress.stages.qat import QATStage, qat_scheme  # noqa: E402
from tfcompress.stages.train import TrainStage  # noqa: E402

__all__ = ["StageSettings", "Training", "SoftTargets", "Distilling", "register", "get", "kinds",
           "markdown_table",
           "number_in", "one_of", "RecipeError", "StageContext", "run_stage", "fit",
           "keras_accuracy", "steps_per_epoch", "total_steps", "with_teacher", "compile_for_training",
           "qat_scheme", "TrainStage", "DistillStage", "PruneStage", "ChannelPruneStage",
           "LowRankStage", "ClusterStage", "QATStage"]
