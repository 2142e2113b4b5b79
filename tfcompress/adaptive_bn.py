"""Loss after adaptive BatchNorm: how a compressed candidate is judged before fine-tuning.

One-shot pruning shifts every activation the BatchNorm layers after it see,
while their moving statistics still describe the unpruned model; re-estimating
them on a batch of training data first (adaptive BN, EagleEye: Li et al. 2020,
https://arxiv.org/abs/2007.02491) makes the loss of a candidate predict what
fine-tuning will recover. `tfcompress.pruning.sensitivity` and
`tfcompress.channel_pruning.sensitivity` measure their curves with it.

Example:
    before = adapted_loss(model, x[:2000], y[:2000], heads.detect(model))
"""

import numpy as np


def batchnorms(model):
    """The model's BatchNormalization layers, nested models included."""
    from tfcompress.keras import keras
    from tfcompress.layer_selection import walk
    return [layer for layer in walk(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def adapted_loss(model, x, y, head, layers=None, batch_size=500):
    """`mean_loss` after setting every BatchNorm's statistics to those of the first
    `batch_size` rows of `x`; the model's statistics are restored afterwards."""
    layers = batchnorms(model) if layers is None else layers
    if not layers:
        return mean_loss(model, x, y, head, batch_size)
    saved = [(bn, bn.momentum, bn.moving_mean.numpy(), bn.moving_variance.numpy())
             for bn in layers]
    try:
        for bn in layers:
            bn.momentum = 0.0  # one batch sets the statistics outright
        model(x[:batch_size], training=True)
        return mean_loss(model, x, y, head, batch_size)
    finally:
        for bn, momentum, mean, variance in saved:
            bn.momentum = momentum
            bn.moving_mean.assign(mean)
            bn.moving_variance.assign(variance)


def mean_loss(model, x, y, head, batch_size=500):
    """`head`'s mean loss of the model's inference-mode outputs on (x, y), in batches."""
    scores = np.concatenate([np.asarray(model(x[i:i + batch_size], training=False))
                             for i in range(0, len(x), batch_size)])
    return head.mean_loss(scores, y)
