"""The public entry points: `prune_channels`, `mask_channels` and `fine_tune`."""

import numpy as np

from tfcompress.channel_pruning.config import ChannelPruningConfig, ChannelPruningError
from tfcompress.channel_pruning.graph import ChannelGraph
from tfcompress.channel_pruning.importance import loss_for
from tfcompress.channel_pruning.plan import ChannelPlan, make_plan
from tfcompress.channel_pruning.rebuild import masked_model, thin_model
from tfcompress.checks import as_config, check_finite_weights
from tfcompress.keras import ensure_tf_keras_model
from tfcompress.surgery import require_graph_model
from tfcompress.training import cosine_adam


def prune_channels(model, config=None, data=None, loss=None):
    """Removes the least important channels and rebuilds a thinner model.

    Example:
        thin, plan = prune_channels(model, ChannelPruningConfig(0.5, "taylor"),
                                    data=(x_train[:512], y_train[:512]))
        print(format_plan(plan))

    Args:
        model: a built functional or Sequential tf_keras model (left untouched).
        config: a `ChannelPruningConfig`, a dict of its fields, or None (0.5, "l1").
        data: (x, y) arrays; needed by the "taylor" criterion.
        loss: the loss "taylor" differentiates; default sparse (or one-hot)
            categorical cross-entropy, from logits unless the model's outputs
            are probabilities.

    Returns:
        (thin, plan): a new, uncompiled functional model with the same layer
        names, and the `ChannelPlan`.

    Raises:
        ChannelPruningError: a subclassed or unbuilt model, a model with
            nothing to prune, a pattern that matches nothing or names a layer
            that cannot be pruned, missing data for "taylor", no BatchNorm
            for "bn_scale", an unreachable target_macs.
        TypeError: a Keras 3 model.
    """
    model = require_graph_model(model, ChannelPruningError)
    config = as_config(config, ChannelPruningConfig, ChannelPruningError)
    if config.criterion == "taylor" and data is None:
        raise ChannelPruningError("criterion 'taylor' needs data=(x, y): a few batches of "
                                  "training samples to take gradients on")
    # NaN filter norms sort arbitrarily: the wrong channels would be removed.
    check_finite_weights(model, "the model to channel-prune")
    plan = make_plan(ChannelGraph(model), config, data, loss)
    thin = thin_model(model, plan.masks)
    params = {layer.name: layer.count_params() for layer in model.layers}
    thin_params = {layer.name: layer.count_params() for layer in thin.layers}
    for row in plan.layers:
        row["params_before"] = int(params[row["layer"]])
        row["params_after"] = int(thin_params[row["layer"]])
    plan.params_after = int(thin.count_params())
    return thin, plan


def _check_plan(model, plan):
    if not isinstance(plan, ChannelPlan):
        raise ChannelPruningError(f"expected the ChannelPlan that prune_channels returned, got "
                                  f"{type(plan).__name__}")
    layers = {layer.name: layer for layer in model.layers}
    for name, mask in plan.masks.items():
        layer = layers.get(name)
        ok = layer is not None and (mask["out"] is None or (
            layer.output_shape[-1] == mask["out"].size))
        if not ok:
            raise ChannelPruningError(f"the plan does not fit model {model.name!r} (layer "
                                      f"{name!r} is missing or has another width); use the plan "
                                      "made for this model")


def mask_channels(model, plan):
    """The pruned-in-place equivalent of `plan`: full width, pruned channels zeroed.

    Every Conv/Dense layer that reads a pruned channel gets a `ChannelMask`
    layer in front (named `<layer>_channel_mask`) that zeroes it; the weights
    are copies of `model`'s. See the package docstring for why the mask sits
    there and not on the producer's weights.

    Example:
        thin, plan = prune_channels(model, config)
        masked = mask_channels(model, plan)
        np.testing.assert_allclose(masked(x), thin(x), atol=1e-5)
    """
    model = require_graph_model(model, ChannelPruningError)
    _check_plan(model, plan)
    masks = {name: mask["in"] for name, mask in plan.masks.items()
             if plan.masks[name]["out"] is not None and not mask["in"].all()}
    return masked_model(model, masks)[0]


def fine_tune(model, x, y, epochs=1, batch_size=128, learning_rate=1e-3, validation_data=None,
              loss=None, verbose=0):
    """Compiles (Adam, cosine-decayed rate, cross-entropy, accuracy) and fits `model`.

    A convenience for recovering accuracy after `prune_channels`; for
    distillation from the unpruned model use `tfcompress.distillation`.

    Example:
        history = fine_tune(thin, x_train, y_train, epochs=2)

    Returns:
        The Keras History.
    """
    model = ensure_tf_keras_model(model)
    steps = int(np.ceil(len(x) / batch_size)) * epochs
    if loss is None:
        loss = loss_for(model, y, model(np.asarray(x[:8]), training=False), None)
    model.compile(optimizer=cosine_adam(learning_rate, steps), loss=loss, metrics=["accuracy"])
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True,
                     validation_data=validation_data, verbose=verbose)
