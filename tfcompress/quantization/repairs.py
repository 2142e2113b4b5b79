"""Repairs of TFMOT 0.8.1's QAT that `quantize` and `load_qat_model` apply (each measured here).

    * `cluster_granularity_from_weights`: CQAT keeps a per-tensor clustered
      Conv2D per tensor (TFMOT's `get_centroids` is swapped for the build).
    * `tidy_wrapper_variables`: a QAT model's wrappers list each variable
      once, so its `.keras` file loads.
    * `QuantizeLayer`: TFMOT's QuantizeLayer, marked built, for loading files.
    * `restore_masks`: the PQAT / PCQAT masks of a loaded model come from its
      loaded weights.

Example:
    with cluster_granularity_from_weights():
        qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
    tidy_wrapper_variables(qat)
"""

import contextlib

import numpy as np

from tfcompress.keras import tf
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)
from tfcompress._compat import (  # noqa: E402
    cluster_preserve_quantize_registry, own_trainable_weights, quantize_layer,
    quantizer_weight_vars, set_own_trainable_weights)


def _clustered_per_channel(weight):
    """True when each output channel has values of its own (per-channel clustering).

    Per-tensor clusters are shared by the channels; per-channel centroids are
    floats of their own, so no nonzero value appears in two channels.
    """
    values = np.asarray(weight)
    if values.ndim < 2 or values.shape[-1] < 2:
        return False
    channels = [np.unique(values[..., c]) for c in range(values.shape[-1])]
    nonzero = [c[c != 0] for c in channels]
    every = np.unique(values[values != 0])
    return sum(len(c) for c in nonzero) == len(every)


@contextlib.contextmanager
def cluster_granularity_from_weights():
    """Makes CQAT keep per-tensor clusters per tensor.

    TFMOT's cluster-preserving quantizer clusters a Conv2D kernel per channel
    whenever its channels hold (nearly) the same number of unique values,
    which per-tensor clustering can give too; the channels' centroids then
    train apart and the kernel ends with more unique values than it had
    (measured: 4 -> 32, tests/tfcompress/test_clustering.py). Only a kernel
    whose channels hold values of their own goes to TFMOT's per-channel path.
    TFMOT reads `get_centroids` from its module when a layer is built, so it
    is swapped for the build (in `quantize` and `load_qat_model`).
    """
    module = cluster_preserve_quantize_registry
    original = module.get_centroids

    def get_centroids(layer, weight, data_format):
        if _clustered_per_channel(weight):
            return original(layer, weight, data_format)
        centroids, index = module.get_unique(weight)
        return centroids, tf.size(centroids), index, False

    module.get_centroids = get_centroids
    try:
        yield
    finally:
        module.get_centroids = original


def tidy_wrapper_variables(model):
    """Lists each wrapper variable once, in the order a wrapper built from its config has.

    quantize_apply calls already built layers again, so TFMOT's wrappers list
    [kernel, bias, <quantizer variables>, kernel]; one built from a config
    lists [<quantizer variables>, kernel], the bias staying with the inner
    layer. A `.keras` file saves the list as it is and restores variables
    (the optimizer's too) by position, so loading failed ("expected 4
    variables, but received 5", then optimizer slots of the wrong shape).
    Keeping the last occurrence, without the inner layer's, gives the built
    order. Training is not affected: Keras drops the repeats anyway.
    """
    for layer in model.layers:
        if not isinstance(layer, tfmot.quantization.keras.QuantizeWrapper):
            continue
        inner = {id(v) for v in layer.layer.weights}
        kept = []
        for variable in reversed(own_trainable_weights(layer)):
            if id(variable) not in inner and all(variable is not k for k in kept):
                kept.append(variable)
        set_own_trainable_weights(layer, kept[::-1])


class QuantizeLayer(quantize_layer.QuantizeLayer):
    """TFMOT's QuantizeLayer, marked built after `build`; used only to load files.

    Its `build` never sets `self.built`, so loading a `.keras` file builds it
    twice (`build_from_config`, then the functional call) and the load fails
    with "expected 5 variables, but received 3". The class keeps TFMOT's name:
    `.keras` files store a layer's variables under its class name.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.built = True


def restore_masks(model):
    """Recomputes the PQAT / PCQAT masks from the loaded variables.

    TFMOT computes them as constants when a layer is built, from the values
    it has then: in a model built from a file, the initial ones. As TFMOT
    does at a build, the zeros of the kernel are kept zero; for PCQAT these
    are the pruned weights and those the zero cluster holds when saved.
    """
    names = cluster_preserve_quantize_registry
    for layer in model.layers:
        for weight, _, quantizer_vars in quantizer_weight_vars(layer):
            if names.SPARSITY_MASK in quantizer_vars:
                quantizer_vars[names.SPARSITY_MASK] = tf.math.divide_no_nan(weight, weight)
            if quantizer_vars.get(names.CENTROIDS_MASK) is not None:
                centroids = quantizer_vars[names.CLUSTER_CENTROIDS]
                quantizer_vars[names.CENTROIDS_MASK] = 1.0 - tf.one_hot(
                    tf.argmin(tf.abs(centroids), axis=-1), centroids.shape[-1])
