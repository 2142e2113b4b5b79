"""Importance criteria: a score per class of tied channels (higher: keep).

"l1" / "l2" sum the filters' norms, "bn_scale" the |gamma| of the BatchNorm
layers on the channels, "taylor" squares the gradient of the loss with respect
to a gate on the channels (see the package docstring for the papers).
"""

import numpy as np

from tfcompress.channel_pruning.config import ChannelPruningError
from tfcompress.channel_pruning.rebuild import masked_model
from tfcompress.keras import keras, tf


def importance(graph, config, active_groups, data=None, loss=None):
    """config.criterion's score of every class, an array indexed by root atom.

    Args:
        graph: the model's `ChannelGraph`.
        config: the `ChannelPruningConfig`.
        active_groups: the groups that will be pruned ("bn_scale" needs a
            BatchNorm on all of their channels).
        data, loss: what "taylor" takes gradients on (see `prune_channels`).
    """
    if config.criterion in ("l1", "l2"):
        return _norm_importance(graph, 1 if config.criterion == "l1" else 2)
    if config.criterion == "bn_scale":
        return _bn_importance(graph, active_groups)
    return _taylor_importance(graph, config, data, loss)


def _class_sum(graph, atom_values):
    """Per-class sums of per-atom values, as an array indexed by root atom."""
    return np.bincount(graph.roots, weights=atom_values, minlength=len(graph.parent))


def _norm_importance(graph, order):
    values = np.zeros(len(graph.parent))
    for name, (node, atoms) in graph.producers.items():
        kernel = node.layer.kernel.numpy()
        flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
        values[atoms] += flat.sum(0) if order == 1 else np.sqrt((flat ** 2).sum(0))
    return _class_sum(graph, values)


def _bn_importance(graph, groups):
    values = np.zeros(len(graph.parent))
    covered = np.zeros(len(graph.parent), dtype=bool)
    for node, kind in graph.calls:
        if kind == "batchnorm" and node.layer.gamma is not None:
            layout = graph.input_layout(node)
            np.add.at(values, layout, np.abs(node.layer.gamma.numpy()))
            covered[layout] = True
    covered_roots = np.zeros(len(graph.parent), dtype=bool)
    covered_roots[graph.roots[covered]] = True
    for group in groups:
        missing = [c for c in group["classes"] if not covered_roots[c]]
        if missing:
            raise ChannelPruningError(
                f"criterion 'bn_scale' needs a BatchNormalization (with scale=True) on the "
                f"channels of layer {group['layers'][0]!r}, and {len(missing)} of them have "
                f"none: use criterion 'l1' or 'taylor', or exclude={[group['layers'][0]]!r}")
    return _class_sum(graph, values)


def loss_for(model, y, outputs, loss):
    """`loss` if given, else cross-entropy to match `y` (sparse or one-hot) and
    `outputs` (from logits unless they are probabilities)."""
    if loss is not None:
        return keras.losses.get(loss)
    out = outputs.numpy()
    probabilities = bool(np.all(out >= 0) and np.allclose(out.sum(-1), 1.0, atol=1e-3))
    if np.ndim(y) == out.ndim and np.shape(y)[-1] == out.shape[-1] and out.shape[-1] > 1:
        return keras.losses.CategoricalCrossentropy(from_logits=not probabilities)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)


def _check_data(model, data, what):
    try:
        x, y = data
        x, y = np.asarray(x), np.asarray(y)
    except (TypeError, ValueError):
        raise ChannelPruningError(f"{what} needs data=(x, y) arrays, got {type(data).__name__}"
                                  ) from None
    if len(x) != len(y) or len(x) == 0:
        raise ChannelPruningError(f"data: x has {len(x)} samples but y has {len(y)}; give "
                                  "matching, non-empty arrays")
    want = tuple(model.inputs[0].shape[1:])
    if len(model.inputs) != 1 or tuple(x.shape[1:]) != want:
        raise ChannelPruningError(f"data: x has samples of shape {tuple(x.shape[1:])} but model "
                                  f"{model.name!r} takes {want}")
    return x, y


def _taylor_importance(graph, config, data, loss):
    """(sum over the class's gates of dL/dgate)^2, averaged over batches."""
    model = graph.model
    x, y = _check_data(model, data, "criterion 'taylor'")
    prunable = np.ones(len(graph.parent), dtype=bool)
    prunable[list(graph.fixed_roots)] = False
    gates = {node.layer.name: np.ones(len(graph.input_layout(node)), np.float32)
             for node, kind in graph.calls
             if kind == "produce" and prunable[graph.roots[graph.input_layout(node)]].any()}
    gated, masks = masked_model(model, gates)
    variables = [masks[name].mask for name in gates]
    layouts = [graph.roots[graph.input_layout(graph.producers[name][0])] for name in gates]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    batches = [order[i:i + config.batch_size]
               for i in range(0, len(x), config.batch_size)][:config.taylor_batches]
    total = np.zeros(len(graph.parent))
    loss_fn = None
    for index in batches:
        xb = tf.convert_to_tensor(x[index], model.inputs[0].dtype)
        with tf.GradientTape() as tape:
            tape.watch(variables)
            outputs = gated(xb, training=False)
            if loss_fn is None:
                loss_fn = loss_for(model, y, outputs, loss)
            value = loss_fn(y[index], outputs)
        grads = tape.gradient(value, variables)
        per_class = np.zeros(len(graph.parent))
        for grad, roots in zip(grads, layouts):
            if grad is not None:
                np.add.at(per_class, roots, grad.numpy())
        total += per_class ** 2
    return total / max(len(batches), 1)
