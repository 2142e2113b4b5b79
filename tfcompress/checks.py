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


def as_config(config, cls, error):
    """`config` as a `cls` instance: None gives the defaults, a dict its keyword arguments.

    Example:
        config = as_config({"target_sparsity": 0.8}, PruningConfig, PruningError)
    """
    if config is None:
        return cls()
    if isinstance(config, dict):
        return cls(**config)
    if not isinstance(config, cls):
        raise error(f"config must be a {cls.__name__}, a dict or None, got "
                    f"{type(config).__name__}")
    return config


def check_wrappable(model, error, verb, what="wrap the layers", advice="build it functionally"):
    """Raises `error` unless TFMOT can wrap `model`'s layers: a built Sequential or
    functional model (`verb`: "pruning", "clustering"... for the message)."""
    from tfcompress.layer_selection import is_graph_model
    if not is_graph_model(model):
        raise error(f"{type(model).__name__} is a subclassed model: TFMOT can only {what} of "
                    f"a Sequential or functional model{advice}")
    if not model.built:
        raise error(f"model {model.name!r} is not built; give it an Input (or call "
                    f"model.build(input_shape)) before {verb}")
