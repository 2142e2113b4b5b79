"""Sensitivity-driven sparsity: each layer gets its own sparsity, the model reaches the total.

`allocate_sparsity` measures, for every layer `prune` would wrap, the loss
increase on a slice of the training data when that layer alone is
magnitude-pruned (one shot, no fine-tuning) to each of `RATIOS`, then lets
`tfcompress.allocation.greedy_allocate` choose per-layer sparsities whose
weight-weighted mean is the config's sparsity at the least summed loss.
Layers set by `per_layer` keep their value and count toward the total;
excluded layers stay dense and do not count (the total is over the layers
pruned).

Example:
    allocation = allocate_sparsity(model, PruningConfig(0.9, skip_first_and_last=False),
                                   x_train, y_train)
    print(allocation.format())
    pruned = prune(model, allocation.apply(config), steps_per_epoch=469, total_epochs=4)
"""

import numpy as np

from tfcompress import heads
from tfcompress.adaptive_bn import adapted_loss, batchnorms as find_batchnorms
from tfcompress.allocation import Allocation, greedy_allocate, predicted_cost
from tfcompress.checks import as_config
from tfcompress.keras import ensure_tf_keras_model
from tfcompress.pruning.prune import PruningConfig, PruningError, override, select_layers
from tfcompress.pruning.wrapper import prunable_weights

__all__ = ["RATIOS", "allocate_sparsity"]

# Where each layer's curve is measured; the last is the most any layer gets.
RATIOS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def _magnitude_pruned(value, sparsity):
    """`value` with its round(sparsity * size) smallest magnitudes zeroed (ties: first ones)."""
    flat = value.reshape(-1).copy()
    count = int(round(sparsity * flat.size))
    flat[np.argsort(np.abs(flat), kind="stable")[:count]] = 0
    return flat.reshape(value.shape)


def allocate_sparsity(model, config, x, y, head=None, ratios=RATIOS, samples=2000, seed=0,
                      log=None):
    """Per-layer sparsities reaching `config`'s sparsity with the least predicted loss.

    Args:
        model: the trained tf_keras model to be pruned (left as it was).
        config: a `PruningConfig` (or dict) for unstructured pruning; its
            sparsity is the total, its selection (include, exclude,
            skip_first_and_last) and per_layer overrides are respected.
        x, y: training data; `samples` rows (fixed by `seed`) measure the loss.
        head: the model's `heads.Head` (detected when None).
        ratios: the sparsities each layer's curve is measured at.
        log: a print-like callable for progress, or None.

    Returns:
        A `tfcompress.allocation.Allocation`; `.apply(config)` gives the config to
            prune with.

    Raises:
        PruningError: a structured (M:N, block) config, or a total that the
            overrides exceed or the layers cannot reach.
    """
    from tfcompress.allocation import AllocationError
    from tfcompress.data import subsample
    model = ensure_tf_keras_model(model)
    config = as_config(config, PruningConfig, PruningError)
    if config.structure is not None:
        raise PruningError(f"sensitivity allocation sets a sparsity per layer; structure "
                           f"{config.structure!r} fixes the pattern: use it with allocation "
                           "uniform, or drop the structure")
    head = head or heads.detect(model)
    x, y = subsample(x, y, samples, seed)
    chosen = select_layers(model, config)
    weights = {layer.name: int(sum(np.prod(w.shape) for w in prunable_weights(layer)))
               for layer, _ in chosen}
    fixed = {layer.name: value for layer, value in chosen
             if override(config, layer) is not None}
    batchnorms = find_batchnorms(model)
    baseline = adapted_loss(model, x, y, head, batchnorms)
    curves = {}
    for layer, _ in chosen:
        if layer.name in fixed:
            continue
        variables = prunable_weights(layer)
        saved = [v.numpy() for v in variables]
        points = []
        try:
            for ratio in ratios:
                for variable, value in zip(variables, saved):
                    variable.assign(_magnitude_pruned(value, ratio))
                points.append((float(ratio),
                               adapted_loss(model, x, y, head, batchnorms) - baseline))
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)
        curves[layer.name] = points
        if log:
            log(f"    sensitivity {layer.name}: " + ", ".join(
                f"{r:.0%} {c:+.3f}" for r, c in points))
    try:
        per_layer = greedy_allocate(curves, weights, config.sparsity, fixed=fixed)
    except AllocationError as e:
        raise PruningError(f"sparsity {config.sparsity:g}: {e}") from None
    per_layer = {layer.name: per_layer[layer.name] for layer, _ in chosen}  # model order
    return Allocation(per_layer=per_layer, sizes=weights, unit="weights", curves=curves,
                              fixed=list(fixed), target=config.sparsity,
                              baseline_loss=float(baseline), samples=len(x),
                              predicted_loss_increase=predicted_cost(curves, per_layer))
