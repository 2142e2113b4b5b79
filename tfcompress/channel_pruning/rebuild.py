"""The two models a plan makes, through `tfcompress.surgery`: thin (pruned channels
cut out of the weights) and masked (full width, a `ChannelMask` zeroing them in
front of each layer that mixes channels)."""

import numpy as np

from tfcompress.channel_pruning.config import ChannelPruningError
from tfcompress.channel_pruning.graph import BATCHNORM, DEPTHWISE
from tfcompress.keras import keras, tf
from tfcompress.surgery import transform_model


def _slice_weights(layer, mask):
    """The weights of `layer` cut down to the kept channels in `mask` (in / out)."""
    cut_in, cut_out = mask["in"], mask["out"]
    weights = []
    for weight in layer.weights:
        value = weight.numpy()
        cls = type(layer)
        if cls in BATCHNORM:
            value = value[cut_in]
        elif cls in DEPTHWISE:
            value = value[..., cut_in, :] if value.ndim > 1 else value[
                np.repeat(cut_in, layer.depth_multiplier)]
        elif value.ndim > 1:  # a Conv / Dense kernel: [..., in, out]
            value = value[..., cut_in, :][..., cut_out]
        else:  # its bias
            value = value[cut_out]
        weights.append(value)
    return weights


def thin_model(model, masks):
    """`model` rebuilt with the channels `masks` ({layer: {"in", "out"}}) drops cut out."""

    def replace(layer, copy):
        mask = masks.get(layer.name)
        if mask is None:
            return None
        width = {}
        if mask["out"] is not None:
            key = "units" if type(layer).__name__ == "Dense" else "filters"
            width[key] = int(mask["out"].sum())
        return copy(layer, _slice_weights(layer, mask), **width)

    return transform_model(model, replace, ChannelPruningError)


@keras.utils.register_keras_serializable(package="tfcompress")
class ChannelMask(keras.layers.Layer):
    """Multiplies its input by a constant vector along the last axis (0/1: drop/keep).

    What `mask_channels` puts before every Conv/Dense layer that reads pruned
    channels; its `mask` is a non-trainable weight (the "taylor" criterion
    differentiates the loss with respect to it).
    """

    def __init__(self, mask, **kwargs):
        super().__init__(**kwargs)
        self.mask_values = np.asarray(mask, dtype=np.float32).reshape(-1)
        # Made here, not in build(): its shape is known, and Keras runs build()
        # through AutoGraph, which re-reads the source file.
        self.mask = self.add_weight(
            name="mask", shape=self.mask_values.shape, trainable=False,
            initializer=keras.initializers.Constant(self.mask_values))

    def call(self, inputs):
        return inputs * tf.cast(self.mask, inputs.dtype)

    def get_config(self):
        return dict(super().get_config(), mask=self.mask_values.tolist())


def masked_model(model, masks):
    """(the model with ChannelMask(masks[name]) before each named layer's input,
    {name: that ChannelMask})."""
    mask_layers = {}

    def replace(layer, copy):
        if layer.name not in masks:
            return None
        new = copy(layer)
        mask = mask_layers[layer.name] = ChannelMask(masks[layer.name],
                                                     name=f"{layer.name}_channel_mask")
        return lambda first, *args, **kwargs: new(mask(first), *args, **kwargs)

    return transform_model(model, replace, ChannelPruningError), mask_layers
