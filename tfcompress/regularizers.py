"""Sparsity regularizers: push whole channels toward zero before channel pruning.

Train with one of these for a few epochs, then `channel_pruning.prune_channels`
removes the channels they drove to (near) zero at little accuracy cost.

Two ways to apply the same penalties, on BatchNorm scales ("bn_scale",
network slimming), on kernels element-wise ("kernel", L1 / elastic net), or
on whole filters ("filters", group lasso):

- `add_sparsity_penalty(model, ...)`: a copy of the model with Keras
  regularizers attached (L1L2 for "bn_scale" / "kernel", `GroupLasso` for
  "filters"), so `fit` adds the penalty to the loss. It is saved with the
  model (Keras' own L1L2 needs nothing to load; `GroupLasso` is registered as
  "tfcompress>GroupLasso": import tfcompress.regularizers before loading).
- `ProximalSparsity(...)`: a callback for an existing compiled model, no
  rebuild. After every training step it soft-thresholds the chosen weights by
  learning_rate * l1 (the proximal step of L1 / group lasso, as in ISTA),
  which, unlike a penalty's (sub)gradient, gives exact zeros. With Adam the
  step is a heuristic (Adam rescales the gradient step but not this one).

Example:
    from tfcompress import regularizers, channel_pruning
    slim = regularizers.add_sparsity_penalty(model, l1=1e-4, target="bn_scale")
    slim.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    slim.fit(x, y, epochs=3)
    print(regularizers.channel_sparsity(slim, "bn_scale", threshold=1e-2))
    thin, plan = channel_pruning.prune_channels(
        slim, channel_pruning.ChannelPruningConfig(0.5, criterion="bn_scale"))

References:
    Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
    Slimming", https://arxiv.org/abs/1708.06519 (L1 on BN scales);
    Wen et al. 2016, "Learning Structured Sparsity in Deep Neural Networks",
    https://arxiv.org/abs/1608.03665 (group lasso on filters).
"""


import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.layer_selection import check_patterns, matches
from tfcompress.keras import ensure_tf_keras_model, keras, tf

__all__ = ["RegularizerError", "GroupLasso", "TARGETS", "add_sparsity_penalty",
           "ProximalSparsity", "channel_sparsity"]

TARGETS = ("bn_scale", "kernel", "filters")


class RegularizerError(TfcompressError, ValueError):
    """A sparsity penalty that cannot be applied as asked; the message says what to do."""


@keras.utils.register_keras_serializable(package="tfcompress")
class GroupLasso(keras.regularizers.Regularizer):
    """l1 * sum over channels of ||channel's weights||_2, plus l2 * sum(w^2).

    The channel axis is the kernel's last (output filters of Conv / units of
    Dense) unless `axis` says otherwise (-2 for a DepthwiseConv2D kernel
    [kh, kw, channels, multiplier]). The L2 norm of a group, unlike L1 of
    its entries, drives whole filters to zero together.

    Example:
        keras.layers.Conv2D(32, 3, kernel_regularizer=GroupLasso(1e-4))
    """

    def __init__(self, l1=1e-4, l2=0.0, axis=-1):
        for name, value in (("l1", l1), ("l2", l2)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise RegularizerError(f"GroupLasso {name} must be a number >= 0, got {value!r}")
        self.l1, self.l2, self.axis = float(l1), float(l2), int(axis)

    def __call__(self, weight):
        groups = _groups(weight, self.axis)
        # The small constant keeps the gradient finite at an all-zero filter.
        penalty = self.l1 * tf.reduce_sum(tf.sqrt(tf.reduce_sum(tf.square(groups), 0) + 1e-12))
        if self.l2:
            penalty += self.l2 * tf.reduce_sum(tf.square(weight))
        return penalty

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2, "axis": self.axis}


def _groups(weight, axis):
    """`weight` as a matrix with one column per channel along `axis`."""
    weight = tf.convert_to_tensor(weight)
    moved = tf.experimental.numpy.moveaxis(weight, axis, -1)
    return tf.reshape(moved, [-1, tf.shape(moved)[-1]])


# ---------------------------------------------------------------------- which weights

_CONV_DENSE = tuple(getattr(keras.layers, n) for n in ("Conv1D", "Conv2D", "Conv3D", "Dense"))
_DEPTHWISE = tuple(getattr(keras.layers, n) for n in ("DepthwiseConv1D", "DepthwiseConv2D")
                   if hasattr(keras.layers, n))


def _slot(layer, target):
    """(config key, weight attribute, channel axis) a target regularizes in `layer`, or None."""
    cls = type(layer)
    if target == "bn_scale":
        if cls is keras.layers.BatchNormalization and layer.scale:
            return "gamma_regularizer", "gamma", -1
        return None
    if cls in _CONV_DENSE:
        return "kernel_regularizer", "kernel", -1
    if cls in _DEPTHWISE:
        return "depthwise_regularizer", "depthwise_kernel", -2
    return None


def _check(target, l1, l2):
    if target not in TARGETS:
        raise RegularizerError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    for name, value in (("l1", l1), ("l2", l2)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise RegularizerError(f"{name} must be a number >= 0, got {value!r}")






def _chosen(model, target, layers, exclude):
    """The layers of `model` whose `target` weights get the penalty."""
    include = None if layers is None else check_patterns(layers, "layers", RegularizerError)
    exclude = check_patterns(exclude, "exclude", RegularizerError)
    names = ", ".join(layer.name for layer in model.layers)
    for field, patterns in (("layers", include or ()), ("exclude", exclude)):
        for pattern in patterns:
            if not any(matches(pattern, layer) for layer in model.layers):
                raise RegularizerError(f"{field} entry {pattern!r} matches no layer; the "
                                       f"model's layers are: {names}")
    chosen = []
    for layer in model.layers:
        if any(matches(p, layer) for p in exclude):
            continue
        if include is not None and not any(matches(p, layer) for p in include):
            continue
        if _slot(layer, target) is None:
            if include is not None and layer.name in include:
                raise RegularizerError(
                    f"layer {layer.name!r} ({type(layer).__name__}) has no weights for target "
                    f"{target!r} (BatchNormalization with scale=True for 'bn_scale'; Conv, "
                    "DepthwiseConv and Dense kernels otherwise); remove it from layers")
            continue
        chosen.append(layer)
    if not chosen:
        raise RegularizerError(f"no layer of {model.name!r} has weights for target {target!r}")
    return chosen


# ------------------------------------------------------------------------ the penalty


def _combine(existing, new, layer, key):
    """Adds our penalty to a layer's existing L1/L2 regularizer (e.g. ResNet-8's weight decay)."""
    if existing is None:
        return new
    e_l1 = float(getattr(existing, "l1", 0.0) or 0.0)
    e_l2 = float(getattr(existing, "l2", 0.0) or 0.0)
    plain = type(existing) in (keras.regularizers.L1L2, keras.regularizers.L1,
                               keras.regularizers.L2)
    if plain and isinstance(new, keras.regularizers.L1L2):
        return keras.regularizers.L1L2(l1=float(new.l1) + e_l1, l2=float(new.l2) + e_l2)
    if plain and isinstance(new, GroupLasso) and e_l1 == 0:
        return GroupLasso(new.l1, new.l2 + e_l2, new.axis)
    raise RegularizerError(
        f"layer {layer.name!r} already has a {type(existing).__name__} {key} that cannot be "
        "merged with the sparsity penalty; pass replace=True to replace it, or exclude the layer")


def add_sparsity_penalty(model, l1=1e-4, l2=0.0, target="bn_scale", layers=None, exclude=(),
                         replace=False):
    """A copy of `model` whose chosen weights carry a sparsity penalty (a Keras regularizer).

    Example:
        slim = add_sparsity_penalty(model, l1=1e-4, target="bn_scale")
        slim.compile("adam", "sparse_categorical_crossentropy")
        slim.fit(x, y, epochs=3)        # loss includes l1 * sum |gamma|

    Args:
        model: a tf_keras functional or Sequential model (left untouched).
        l1: the L1 (or, for "filters", group-lasso) strength.
        l2: an L2 strength added to it (elastic net).
        target: "bn_scale" (BatchNorm gamma; network slimming), "kernel"
            (Conv / DepthwiseConv / Dense kernels, element-wise) or "filters"
            (the same kernels, one group per output channel: `GroupLasso`).
        layers: patterns (names, regular expressions, class names) of layers
            to regularize; None for all that have the target weights.
        exclude: patterns of layers to leave as they are.
        replace: replace a layer's existing regularizer in that slot. By
            default an existing L1/L2 one is added to (ResNet-8's L2 weight
            decay stays), any other is an error.

    Returns:
        A new, uncompiled model of the same kind with the same weights.

    Raises:
        RegularizerError: a bad target or strength, a pattern that matches
            nothing, a named layer without the target weights, a regularizer
            that cannot be merged.
    """
    model = ensure_tf_keras_model(model)
    _check(target, l1, l2)
    chosen = {id(layer) for layer in _chosen(model, target, layers, exclude)}

    def clone(layer):
        config = layer.get_config()
        if id(layer) in chosen:
            key, _, axis = _slot(layer, target)
            if target == "filters":
                new = GroupLasso(l1, l2, axis)
            else:
                new = keras.regularizers.L1L2(l1=l1, l2=l2)
            config[key] = new if replace else _combine(getattr(layer, key), new, layer, key)
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except NotImplementedError as e:
        raise RegularizerError(f"cannot copy model {model.name!r}: {e}; give custom layers a "
                               "get_config()") from e
    copy.set_weights(model.get_weights())
    return copy


# ------------------------------------------------------------------------ the callback


class ProximalSparsity(keras.callbacks.Callback):
    """Soft-thresholds chosen weights after every training step: exact zeros, no rebuild.

    For "bn_scale" / "kernel": w <- sign(w) * max(|w| - lr * l1, 0). For
    "filters": each output filter f <- f * max(0, 1 - lr * l1 / ||f||), the
    group-lasso proximal step, which zeroes whole filters. `lr` is the
    optimizer's current learning rate (schedules included).

    Example:
        model.fit(x, y, epochs=3, callbacks=[ProximalSparsity(1e-3, "bn_scale")])

    Args:
        l1: the strength (the same meaning as `add_sparsity_penalty`'s).
        target: "bn_scale", "kernel" or "filters".
        layers, exclude: as in `add_sparsity_penalty`.
    """

    def __init__(self, l1=1e-4, target="bn_scale", layers=None, exclude=()):
        super().__init__()
        _check(target, l1, 0.0)
        self.l1, self.target, self.layers, self.exclude = float(l1), target, layers, exclude
        self._step = None

    def on_train_begin(self, logs=None):
        chosen = _chosen(self.model, self.target, self.layers, self.exclude)
        weights = [(getattr(layer, _slot(layer, self.target)[1]), _slot(layer, self.target)[2])
                   for layer in chosen]
        group = self.target == "filters"

        @tf.function
        def step(threshold):
            for weight, axis in weights:
                if group:
                    norms = tf.norm(_groups(weight, axis), axis=0)
                    scale = tf.maximum(0.0, 1.0 - threshold / tf.maximum(norms, 1e-12))
                    shape = [1] * len(weight.shape)
                    shape[axis] = -1
                    weight.assign(weight * tf.reshape(scale, shape))
                else:
                    weight.assign(tf.sign(weight) * tf.maximum(tf.abs(weight) - threshold, 0.0))

        self._step = step

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        rate = optimizer.learning_rate
        if callable(rate):  # a schedule on a legacy optimizer
            rate = rate(optimizer.iterations)
        self._step(tf.constant(float(keras.backend.get_value(rate)) * self.l1, tf.float32))


# ------------------------------------------------------------------------- the report


def channel_sparsity(model, target="bn_scale", threshold=1e-3):
    """How many channels a penalty has driven to (near) zero, layer by layer.

    A channel counts as near zero when |gamma| ("bn_scale") or its filter's
    largest |weight| ("kernel" / "filters") is at most `threshold`.

    Example:
        report = channel_sparsity(model, "bn_scale", threshold=1e-2)
        report["total"]      # {"channels": 112, "near_zero": 40, "fraction": 0.357}

    Returns:
        {"layers": [{"layer", "channels", "near_zero"}], "total": {"channels",
        "near_zero", "fraction"}}, plain JSON types.
    """
    model = ensure_tf_keras_model(model)
    _check(target, 0.0, 0.0)
    rows = []
    for layer in _chosen(model, target, None, ()):
        _, attribute, axis = _slot(layer, target)
        groups = np.abs(_groups(getattr(layer, attribute), axis).numpy()).max(axis=0)
        rows.append({"layer": layer.name, "channels": int(groups.size),
                     "near_zero": int(np.sum(groups <= threshold))})
    channels = sum(row["channels"] for row in rows)
    near_zero = sum(row["near_zero"] for row in rows)
    return {"layers": rows, "total": {"channels": channels, "near_zero": near_zero,
                                      "fraction": near_zero / channels if channels else 0.0}}
