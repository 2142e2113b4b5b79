"""What to quantize and how: `QATConfig`, and the QuantizeConfigs of layers TFMOT leaves out.

A layer's QuantizeConfig comes, in this order, from `QATConfig.quantize_configs`
(by name, then by class), from `register_quantize_config`, or from the built-in
table below; otherwise TFMOT's scheme decides (see `schemes`).

Example:
    QATConfig(scheme="prune_preserving", exclude_layers=["head.*"])
    register_quantize_config(keras.layers.LayerNormalization, LayerNormConfig())
"""

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

from tfcompress import activations
from tfcompress.errors import TfcompressError
from tfcompress.keras import keras
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)
from tfcompress._compat import default_8bit_quantize_configs  # noqa: E402

SCHEMES = ("default", "prune_preserving", "cluster_preserving", "prune_cluster_preserving")
CLUSTER_SCHEMES = ("cluster_preserving", "prune_cluster_preserving")


class QuantizationError(TfcompressError, ValueError):
    """A model or layer cannot be quantized as asked; the message says what to do."""


# --------------------------------------------------------------------- custom layers

# Layer class -> QuantizeConfig, filled only by explicit register_quantize_config calls.
_REGISTERED = {}
# Layers TFMOT 0.8.1 leaves out that compute element-wise, without weights: their
# output is quantized like an activation's (see the package docstring). Registered
# configs win. Rescaling (`Rescaling(1/255)` in a model taking pixels; a Keras 3
# import's `x + 3.0` and `x * (1 / 6)`), Multiply (a squeeze-and-excite gate), and
# the hard-swish activation of Keras 3 models (`keras3_import`).
# TF-op layers (TFOpLambda) are not among them: TFMOT's QuantizeWrapper needs the
# layer's compute_output_shape, which TFOpLambda lacks.
_OUTPUT_ONLY_CLASSES = (keras.layers.Rescaling, keras.layers.Multiply,
                        keras.layers.Subtract, keras.layers.Maximum, keras.layers.Minimum)
# The activations tfcompress adds for Keras 3 models: hard-swish converts to TFLite's one
# HARD_SWISH op. hard_sigmoid is not here: TFLite has no such op, its ADD, RELU6 and MUL
# would have no ranges between them (MobileNetV3 writes it as three layers instead).
_OUTPUT_ONLY_ACTIVATIONS = (activations.hard_swish,)


def built_in_config(layer):
    """tfcompress's own QuantizeConfig for a layer TFMOT leaves out, or None.

    Example:
        built_in_config(keras.layers.Rescaling(1 / 255))   # output-only 8-bit config
    """
    output_only = (
        type(layer) in _OUTPUT_ONLY_CLASSES
        or (type(layer) is keras.layers.Activation
            and layer.activation in _OUTPUT_ONLY_ACTIVATIONS))
    return default_8bit_quantize_configs.Default8BitOutputQuantizeConfig() if output_only \
        else None


def _check_quantize_config(quantize_config, what):
    if not isinstance(quantize_config, tfmot.quantization.keras.QuantizeConfig):
        raise QuantizationError(
            f"{what}: expected a tfmot.quantization.keras.QuantizeConfig instance, got "
            f"{type(quantize_config).__name__}")


def register_quantize_config(layer_class, quantize_config):
    """Gives every layer of exactly `layer_class` this QuantizeConfig in `quantize`.

    The hook for custom layers and for built-in layers TFMOT does not
    quantize. Subclasses are not matched (a Conv2D config is wrong for
    Conv2DTranspose, a Conv2D subclass). A config in `QATConfig.quantize_configs`
    wins over a registered one. The config class must implement `get_config`
    and `from_config` (TFMOT clones and saves it); `load_qat_model` knows the
    registered classes.

    Example:
        class LayerNormConfig(tfmot.quantization.keras.QuantizeConfig): ...
        register_quantize_config(keras.layers.LayerNormalization, LayerNormConfig())

    Raises:
        QuantizationError: not a Keras layer class, or not a QuantizeConfig.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise QuantizationError(f"register_quantize_config needs a tf_keras layer class, got "
                                f"{layer_class!r}")
    _check_quantize_config(quantize_config, f"register_quantize_config({layer_class.__name__})")
    _REGISTERED[layer_class] = quantize_config


def unregister_quantize_config(layer_class):
    """Removes a registered config; returns it (None if there was none)."""
    return _REGISTERED.pop(layer_class, None)


def registered_config_classes():
    """{class name: class} of the registered QuantizeConfigs (for loading files)."""
    return {type(c).__name__: type(c) for c in _REGISTERED.values()}


def custom_config(layer, config):
    """The QuantizeConfig the user (or the built-in table) gives this layer, or None."""
    by_name = config.quantize_configs.get(layer.name)
    if by_name is not None:
        return by_name
    config_for_class = config.quantize_configs.get(type(layer)) or _REGISTERED.get(type(layer))
    return config_for_class if config_for_class is not None else built_in_config(layer)


# --------------------------------------------------------------------------- config


def _patterns(value):
    if isinstance(value, (str, type, re.Pattern)):
        value = [value]
    return tuple(value)


def _is_layer_class(value):
    return isinstance(value, type) and issubclass(value, keras.layers.Layer)


@dataclasses.dataclass
class QATConfig:
    """How to quantize: the scheme, per-tensor or per-channel, what stays float.

    Example:
        QATConfig()                                           # whole model, 8-bit
        QATConfig(scheme="prune_preserving")                  # after strip_pruning
        QATConfig(exclude_layers=["head.*"], exclude_types=["LayerNormalization"])
        QATConfig(quantize_configs={"my_layer": MyQuantizeConfig()})

    Args:
        scheme: one of SCHEMES (see the package docstring).
        per_tensor: one scale per kernel instead of one per output channel.
        exclude_layers: layer names, regular expressions matched against the
            whole name, or class names, of layers to keep in float
            (`tfcompress.layer_selection.matches`).
        exclude_types: layer classes (subclasses match too) or class names
            ("Rescaling") to keep in float.
        quantize_configs: {layer name or layer class: QuantizeConfig} for
            layers TFMOT does not know or should quantize differently; a name
            wins over a class, and both over `register_quantize_config`.

    Raises:
        QuantizationError: naming the field that is wrong.
    """

    scheme: str = "default"
    per_tensor: bool = False
    exclude_layers: Sequence[Any] = ()
    exclude_types: Sequence[Any] = ()
    quantize_configs: Optional[Mapping[Any, Any]] = None

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise QuantizationError(f"unknown QAT scheme {self.scheme!r}; choose one of "
                                    f"{', '.join(SCHEMES)}")
        if not isinstance(self.per_tensor, bool):
            raise QuantizationError(f"per_tensor must be True or False, got {self.per_tensor!r}")
        self.exclude_layers = _patterns(self.exclude_layers)
        for pattern in self.exclude_layers:
            try:
                re.compile(pattern)
            except (TypeError, re.error) as e:
                raise QuantizationError(f"exclude_layers: {pattern!r} is not a layer name or "
                                        f"regular expression ({e})") from None
        self.exclude_types = _patterns(self.exclude_types)
        for kind in self.exclude_types:
            if isinstance(kind, type) and (kind.__module__ or "").split(".")[0] == "keras":
                raise QuantizationError(f"exclude_types: {kind.__module__}.{kind.__name__} is a "
                                        "Keras 3 class; models here are tf_keras models: give "
                                        f"the class name {kind.__name__!r} or tf_keras's class")
            if not (isinstance(kind, str) or _is_layer_class(kind)):
                raise QuantizationError(f"exclude_types: {kind!r} is not a Keras layer class "
                                        "or class name")
        self.quantize_configs = dict(self.quantize_configs or {})
        for key, value in self.quantize_configs.items():
            if not (isinstance(key, str) or _is_layer_class(key)):
                raise QuantizationError(f"quantize_configs: key {key!r} is not a layer name "
                                        "or a Keras layer class")
            _check_quantize_config(value, f"quantize_configs[{key!r}]")
