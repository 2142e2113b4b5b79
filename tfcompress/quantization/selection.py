"""Which layers `quantize` wraps, and why it refuses the ones TFMOT cannot quantize.

`select` applies `QATConfig.exclude_layers` (`layer_selection.matches`) and
`exclude_types` (`layer_selection.matches_class`), refuses an entry that
matches no layer, and names every remaining layer TFMOT cannot quantize, with
the two ways out. `warn_float_folds` warns about BatchNorm folds the converter
will keep in float (see the package docstring).

Example:
    selected = select(model, config, Scheme("default", False).get_quantize_registry())
    warn_float_folds(selected, config)
"""

import warnings

from tfcompress.keras import keras, tf
from tfcompress.layer_selection import describe, matches, matches_class, unmatched
from tfcompress.quantization.config import QuantizationError, custom_config
from tfcompress._compat import inbound_nodes, quantizable_activation_names  # noqa: E402

_BATCH_NORMS = ("BatchNormalization", "SyncBatchNormalization")
# Replaced by a DepthwiseConv2D + Conv2D pair by TFMOT's layout transforms, so
# the registry never sees them.
_TRANSFORMED = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def _inbound_layer(layer):
    """The one layer feeding `layer`, or None (several inputs, or a shared layer)."""
    nodes = inbound_nodes(layer)  # what TFMOT's own transforms read
    if len(nodes) != 1:
        return None
    inbound = tf.nest.flatten(nodes[0].inbound_layers)
    return inbound[0] if len(inbound) == 1 else None


def _activation_name(activation):
    return getattr(activation, "__name__", type(activation).__name__)


def _folded_into(bn, chosen, config):
    """The layer TFMOT's layout transforms fold BatchNorm `bn` into, or None.

    Their patterns (matched by class name): Conv2D, DepthwiseConv2D or Dense
    with a linear activation right before the BN, or a conv then a Reshape;
    every layer of the pattern quantized, none with a config of the user's.
    """
    before = _inbound_layer(bn)
    kinds = ("Conv2D", "DepthwiseConv2D", "Dense")
    if type(before).__name__ == "Reshape" and id(before) in chosen:
        before, kinds = _inbound_layer(before), ("Conv2D", "DepthwiseConv2D")
    if (type(before).__name__ in kinds and id(before) in chosen
            and _activation_name(before.activation) == "linear"
            and custom_config(before, config) is None and custom_config(bn, config) is None):
        return before
    return None


def _unsupported_reason(layer, registry, chosen, config):
    """Why TFMOT cannot quantize `layer` under this scheme, or None if it can."""
    if isinstance(layer, keras.Model):
        return ("a model nested in the model, which TFMOT cannot quantize inside another model "
                "(rebuild the model flat to quantize its layers)")
    if type(layer).__name__ in _BATCH_NORMS:
        if _folded_into(layer, chosen, config) is not None:
            return None
        return ("a BatchNormalization that TFMOT quantizes only folded into the quantized "
                "Conv2D, DepthwiseConv2D or Dense without activation right before it")
    if isinstance(layer, _TRANSFORMED):
        return None
    if not registry.supports(layer):
        scheme = config.scheme.replace("_", "-")
        return f"no QuantizeConfig for it in TFMOT's {scheme} 8-bit scheme"
    layer_config = registry.get_quantize_config(layer)
    try:  # an Activation layer's config decides by its activation, and raises
        layer_config.get_output_quantizers(layer)
    except ValueError:
        return (f"its activation {_activation_name(layer.activation)!r} is not one TFMOT "
                "quantizes")
    inner = getattr(layer_config, "config", layer_config)  # inside PreservingQuantizeConfig
    for attr in getattr(inner, "activation_attrs", None) or []:
        activation = getattr(layer, attr, None)
        if activation is not None and \
                _activation_name(activation) not in quantizable_activation_names():
            return (f"its activation {_activation_name(activation)!r} is not one TFMOT "
                    "quantizes inside a layer (use activation=None and a separate "
                    "activation layer)")
    return None


def _configured(key, layer):
    """A `quantize_configs` key names one layer exactly, or one class exactly."""
    return layer.name == key if isinstance(key, str) else type(layer) is key


def _check_entries_match(layers, config):
    names = ", ".join(layer.name for layer in layers)
    for field, patterns, match, what in (
            ("exclude_layers", config.exclude_layers, matches, "entry"),
            ("exclude_types", config.exclude_types, matches_class, "entry"),
            ("quantize_configs", config.quantize_configs, _configured, "key")):
        for pattern in unmatched(patterns, layers, match):
            how = " (names match exactly, classes exactly)" if what == "key" else ""
            raise QuantizationError(f"{field} {what} {getattr(pattern, '__name__', pattern)!r} "
                                    f"matches no layer{how}; the model's layers are: {names}")


def _ways_out(model, problems):
    """The error for the layers TFMOT cannot quantize: each named, and the two ways out."""
    # After "layer(s) TFMOT cannot quantize:", each is named without the word "layer".
    listed = "; ".join(f"{describe(layer).removeprefix('layer ')}: {reason}"
                       for layer, reason in problems)
    names = [layer.name for layer, _ in problems]
    return QuantizationError(
        f"model {model.name!r} has {len(problems)} layer(s) TFMOT cannot quantize: {listed}. "
        f"Either keep them in float with QATConfig(exclude_layers=[{', '.join(map(repr, names))}])"
        f" (or exclude_types=[...]; in a recipe: qat: {{exclude_layers: [{', '.join(names)}]}}, "
        f"with tfcompress train: --qat_exclude_layers={','.join(names)}), which "
        "converts in int8 mode but not int8_full, or give each a "
        "tfmot.quantization.keras.QuantizeConfig with QATConfig(quantize_configs="
        "{name or class: config}) or quantization.register_quantize_config(cls, config)")


def select(model, config, registry):
    """The layers to annotate, each with its custom config (or None).

    Raises:
        QuantizationError: an entry of `config` that matches no layer, every
            layer excluded, or layers TFMOT cannot quantize (all named).
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    _check_entries_match(layers, config)

    def excluded(layer):
        return (any(matches(p, layer) for p in config.exclude_layers)
                or any(matches_class(k, layer) for k in config.exclude_types))

    chosen = {id(layer): layer for layer in layers if not excluded(layer)}
    if not chosen:
        raise QuantizationError(f"every layer of {model.name!r} is excluded; nothing to quantize")
    problems = []
    for layer in chosen.values():
        if custom_config(layer, config) is None:
            reason = _unsupported_reason(layer, registry, chosen, config)
            if reason:
                problems.append((layer, reason))
    if problems:
        raise _ways_out(model, problems)
    return [(layer, custom_config(layer, config)) for layer in chosen.values()]


def warn_float_folds(selected, config):
    """Warns about BatchNorm folds the converter will leave in float (package docstring)."""
    chosen = {id(layer): layer for layer, _ in selected}
    for layer, _ in selected:
        before = (_folded_into(layer, chosen, config)
                  if type(layer).__name__ in _BATCH_NORMS else None)
        if before is None:
            continue
        if type(before).__name__ == "Dense" or config.per_tensor:
            warnings.warn(
                f"{describe(before)} is followed by BatchNormalization {layer.name!r}: the "
                "TFLite converter folds the BN into its weights after the fake quantization "
                "and, as one per-tensor scale cannot hold the per-channel BN scales, keeps it "
                "in float, so the model will not convert in int8_full mode. Drop the BN, fold "
                "it into the layer before QAT, or (for a conv) use per_tensor=False",
                stacklevel=3)
