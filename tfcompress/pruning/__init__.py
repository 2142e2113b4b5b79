"""Magnitude pruning of tf_keras models on top of TFMOT's pruning wrapper.

Laid out as TFMOT's own sparsity package: `prune` (the config and the entry
points `prune`, `pruning_callbacks`, `strip_pruning`, `load_pruned_model`),
`wrapper` (the wrapper class, structures, step counters) and `report`
(`sparsity_report` and the structure checks).

`prune` wraps the chosen layers in TFMOT's `PruneLowMagnitude` (TFMOT's
documented per-layer route: `clone_model` with a `clone_function`); the model
trains as usual; `strip_pruning` gives back a plain model with the same layer
names and weight shapes, its pruned weights exactly zero; `sparsity_report`
measures what came out.

Example:
    from tfcompress import pruning, schedules
    config = pruning.PruningConfig(
        target_sparsity=0.8,
        schedule=schedules.PolynomialDecay(begin_epoch=0, end_epoch=3))
    pruned = pruning.prune(model, config, steps_per_epoch=469)
    pruned.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=4, batch_size=128, callbacks=pruning.pruning_callbacks())
    final = pruning.strip_pruning(pruned)
    print(pruning.format_sparsity_report(pruning.sparsity_report(final)))

The UpdatePruningStep callback is optional here. TFMOT's wrapper counts
training steps from -1 and asserts at the first batch that a callback has set
the count to 0 ("Prune() wrapper requires the UpdatePruningStep callback",
buried in a graph-execution traceback). `prune` (and `load_pruned_model`) set
the count to 0 themselves, so `fit` without the callback — or a custom
training loop, where the callback is awkward (tensorflow/model-optimization#271)
— prunes on the same schedule. The callback's other duty, re-applying the
masks at each epoch end so checkpoints hold exactly sparse weights, is done by
`strip_pruning` and `sparsity_report`, which read weight * mask.
`pruning_callbacks()` is still the recommended way to train: its checkpoints
are sparse on disk, and it can add TensorBoard summaries.

Reference:
    Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of
    pruning for model compression", https://arxiv.org/abs/1710.01878
"""

from tfcompress.pruning.prune import (PruningConfig, PruningError, load_pruned_model, prune,
                                      pruning_callbacks, strip_pruning)
from tfcompress.pruning.report import (format_sparsity_report, satisfies_blocks,
                                       satisfies_m_by_n, sparsity_report)
from tfcompress.pruning.wrapper import PruneLowMagnitude, is_pruned_model
from tfcompress.pruning.wrapper import wrappers as _wrappers  # noqa: F401  (tests read it)

__all__ = ["PruningError", "PruningConfig", "PruneLowMagnitude", "prune", "pruning_callbacks",
           "strip_pruning", "load_pruned_model", "sparsity_report", "format_sparsity_report",
           "is_pruned_model"]
