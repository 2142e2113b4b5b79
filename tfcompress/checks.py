"""Checks on models where they enter tfcompress (convert, prune, cluster, QAT, distill).

A NaN or Inf weight (a diverged training run, a corrupt checkpoint) does not
stop Keras or the TFLite converter: it flows through into every output, and a
pipeline reports 0% accuracy stages later. `check_finite_weights` stops it at
the door, naming the layer and the weight.

Example:
    check_finite_weights(model, "the model to convert")
"""

import numpy as np

from tfcompress.errors import NonFiniteWeightsError


def check_finite_weights(model, what="the model"):
    """Raises NonFiniteWeightsError if any float weight of `model` is NaN or Inf.

    Args:
        model: a tf_keras model (plain, or wrapped for pruning, clustering or QAT).
        what: how the message refers to the model, e.g. "the teacher".

    Raises:
        NonFiniteWeightsError: naming the first layer and weight that hold
            NaN/Inf, how many values, and what to do about it.
    """
    for layer in model.layers:
        for weight in layer.weights:
            if not weight.dtype.is_floating:
                continue  # step counters, masks stored as ints
            values = np.asarray(weight.numpy())
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                kinds = "/".join(k for k, f in (("NaN", np.isnan), ("Inf", np.isinf))
                                 if f(values).any())
                raise NonFiniteWeightsError(
                    f"{what} ({model.name!r}) has {bad} {kinds} value(s) in weight "
                    f"{weight.name!r} of layer {layer.name!r}: its training diverged or the "
                    "file is corrupt. Retrain it (check the loss for NaN, lower the learning "
                    "rate) or use an earlier checkpoint")
