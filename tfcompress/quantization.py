"""Quantization-aware training (QAT) of tf_keras models on TFMOT's 8-bit schemes.

`quantize` wraps the model in TFMOT's fake-quantization wrappers; the model
trains as usual (compile + fit, no callbacks) and converts to an int8 TFLite
file with `tflite_export.convert(qat_model, "int8_full")`, which needs no
representative dataset: the ranges were learned in training. Post-training
quantization needs no Keras stage at all: it is `tflite_export.convert`.

Example:
    from tfcompress import quantization
    qat = quantization.quantize(model, quantization.QATConfig())
    qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, batch_size=128)
    tflite_bytes = convert(qat, "int8_full")          # int8 in, int8 out, int8 ops

Schemes (`QATConfig.scheme`):
    default                   TFMOT's Default8BitQuantizeScheme: int8 weights (per output
                              channel for Conv2D/DepthwiseConv2D, per tensor for Dense),
                              int8 activations.
    prune_preserving          PQAT: each weight that is zero when QAT starts stays zero
                              (its mask is applied before the fake quantization), so a
                              pruned model keeps its sparsity in the int8 file. Give it the
                              stripped model (`pruning.strip_pruning`).
    cluster_preserving        CQAT: the weights of a clustered (stripped) model stay on
                              their clusters while the centroids train, so each kernel
                              keeps its number of unique values.
    prune_cluster_preserving  PCQAT: both, for a model pruned, then clustered with
                              `preserve_sparsity=True`.
`per_tensor=True` gives every kernel one scale (TFMOT's `disable_per_axis`;
for the preserving schemes the per-tensor quantizer TFMOT uses for Dense is
used for convolutions too).

Where we differ from TFMOT 0.8.1 (each measured here; see the classes):
    * A Conv2D/DepthwiseConv2D/Dense that feeds a ReLU layer keeps its weight
      quantization (`_LayerReLUQuantize`): TFMOT dropped it, so such a layer
      trained with float weights, ignored per_tensor and lost PQAT zeros.
    * Each layer gets its own preserving quantizer, and a PQAT model saves
      and reloads as PQAT (`PreservingQuantizeConfig`).
    * CQAT keeps a per-tensor clustered Conv2D per tensor
      (`_cluster_granularity_from_weights`): TFMOT switched such kernels to
      per-channel centroids, which drift apart (4 values became 32).
    * QAT files load, PQAT and (P)CQAT ones included (`load_qat_model`).
    * Conversion: `tflite_export.convert` gives the converter no
      representative dataset for a QAT model (it would recalibrate) and checks
      the int8_full result itself (see there).

BatchNorm: TFMOT does not fold BatchNorm during training. A BatchNormalization
right after a Conv2D/DepthwiseConv2D/Dense without activation is matched by
its layout transforms: no fake quantization between the two, the BN output
(or the ReLU after it) is quantized. The TFLite converter then folds the BN
into the layer's weights and bias (no MUL/ADD op is left). Measured here (TF
2.21, TFMOT 0.8.1): with per-channel Conv2D weights the folded conv is int8;
with `per_tensor=True`, or after a Dense, the fold multiplies each output
channel by its own BN scale, which one per-tensor scale cannot hold, and the
converter keeps that conv / FULLY_CONNECTED in float. `int8` mode then runs
it in float; `int8_full` refuses the model, naming the float tensors.
`quantize` warns about such pairs. A BatchNormalization anywhere else is a
layer TFMOT cannot quantize (see below).

Rescaling (the `Rescaling(1/255)` users put inside a model that takes uint8
pixels) has no QuantizeConfig in TFMOT 0.8.1; it is an affine map of its input
with no weights, so it gets TFMOT's own output-only 8-bit config (its output is
fake-quantized, as after any activation) unless you give it another: measured on
the acceptance suite's Rescaling model, QAT then converts to int8_full (full
integer) at 81.2% against 81.4% float.

Unsupported layers (TFMOT 0.8.1 has no QuantizeConfig for, e.g., Conv1D,
LayerNormalization, Lambda, TF op layers from expressions like
`x + 3.0`, nested models): `quantize` lists every one by name and type, with
the two ways out: keep them in float (`exclude_layers` / `exclude_types`), or
give them a `QuantizeConfig` (`quantize_configs=` or
`register_quantize_config`). A model with float layers converts in `int8`
mode; `int8_full` needs every op quantized.

Saving: `tfcompress.save_model`, then `load_qat_model`, for `.keras` and `.h5`
files of every scheme. TFMOT alone could not load a `.keras` QAT file, nor a
cluster-preserving one in any format, and reloaded PQAT as plain QAT; see
`load_qat_model`.

References:
    Jacob et al. 2018, "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", https://arxiv.org/abs/1712.05877
    TFMOT collaborative optimization (PQAT, CQAT, PCQAT):
    https://www.tensorflow.org/model_optimization/guide/combine/collaborative_optimization
"""

import contextlib
import dataclasses
import re
import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tfcompress.checks import check_finite_weights
from tfcompress.errors import TfcompressError
from tfcompress.keras import ensure_tf_keras_model, keras, tf
from tfcompress.saving import load_model
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)
# Private in tf_keras 2.21 (pinned), as in tfcompress.saving.
from tf_keras.src.saving.serialization_lib import SafeModeScope  # noqa: E402
from tensorflow_model_optimization.python.core.clustering.keras import (  # noqa: E402
    cluster_wrapper)
from tensorflow_model_optimization.python.core.sparsity.keras import (  # noqa: E402
    pruning_wrapper)
from tensorflow_model_optimization.python.core.quantization.keras import (  # noqa: E402
    quantize_annotate, quantize_aware_activation, quantize_config as quantize_config_lib,
    quantize_layer, quantize_registry, quantize_wrapper)
from tensorflow_model_optimization.python.core.quantization.keras import (  # noqa: E402
    utils as quantize_utils)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve \
    import cluster_preserve_quantize_registry  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve \
    import prune_preserve_quantize_registry  # noqa: E402
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (  # noqa
    default_8bit_quantize_configs, default_8bit_quantize_layout_transform,
    default_8bit_quantize_registry, default_8bit_quantize_scheme, default_8bit_transforms)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations \
    import model_transformer  # noqa: E402

__all__ = ["QuantizationError", "QATConfig", "SCHEMES", "quantize", "register_quantize_config",
           "unregister_quantize_config", "load_qat_model", "is_qat_model", "quantized_kernels",
           "tflite_kernels", "PreservingQuantizeConfig", "WeightsOnlyQuantizeConfig"]

SCHEMES = ("default", "prune_preserving", "cluster_preserving", "prune_cluster_preserving")
_CLUSTER_SCHEMES = ("cluster_preserving", "prune_cluster_preserving")
_BATCH_NORMS = ("BatchNormalization", "SyncBatchNormalization")
# Replaced by a DepthwiseConv2D + Conv2D pair by TFMOT's layout transforms, so
# the registry never sees them.
_TRANSFORMED = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


class QuantizationError(TfcompressError, ValueError):
    """A model or layer cannot be quantized as asked; the message says what to do."""


# --------------------------------------------------------------------- custom layers

# Layer class -> QuantizeConfig, filled only by explicit register_quantize_config calls.
_REGISTERED = {}
# Layers TFMOT 0.8.1 leaves out that are affine maps without weights: their output is
# quantized like an activation's (see the module docstring). Registered configs win.
_BUILT_IN = {
    keras.layers.Rescaling: default_8bit_quantize_configs.Default8BitOutputQuantizeConfig}


def _check_quantize_config(quantize_config, what):
    if not isinstance(quantize_config, quantize_config_lib.QuantizeConfig):
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


# --------------------------------------------------------------------------- config


def _patterns(value):
    if isinstance(value, (str, type, re.Pattern)):
        value = [value]
    return tuple(value)


@dataclasses.dataclass
class QATConfig:
    """How to quantize: the scheme, per-tensor or per-channel, what stays float.

    Example:
        QATConfig()                                           # whole model, 8-bit
        QATConfig(scheme="prune_preserving")                  # after strip_pruning
        QATConfig(exclude_layers=["head.*"], exclude_types=["LayerNormalization"])
        QATConfig(quantize_configs={"my_layer": MyQuantizeConfig()})

    Args:
        scheme: one of SCHEMES (see the module docstring).
        per_tensor: one scale per kernel instead of one per output channel.
        exclude_layers: layer names, or regular expressions matched against
            the whole name, of layers to keep in float.
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
            if not (isinstance(kind, str) or (isinstance(kind, type)
                                              and issubclass(kind, keras.layers.Layer))):
                raise QuantizationError(f"exclude_types: {kind!r} is not a Keras layer class "
                                        "or class name")
        self.quantize_configs = dict(self.quantize_configs or {})
        for key, value in self.quantize_configs.items():
            if not (isinstance(key, str) or (isinstance(key, type)
                                             and issubclass(key, keras.layers.Layer))):
                raise QuantizationError(f"quantize_configs: key {key!r} is not a layer name "
                                        "or a Keras layer class")
            _check_quantize_config(value, f"quantize_configs[{key!r}]")


# --------------------------------------------------------------- preserving schemes


def _preserve_registry(scheme):
    """TFMOT's registry of prune- or cluster-preserving weight quantizers."""
    if scheme == "prune_preserving":
        return prune_preserve_quantize_registry.PrunePreserveQuantizeRegistry()
    return cluster_preserve_quantize_registry.ClusterPreserveQuantizeRegistry(
        preserve_sparsity=scheme == "prune_cluster_preserving")


class PreservingQuantizeConfig(quantize_config_lib.QuantizeConfig):
    """A default 8-bit QuantizeConfig whose weight quantizer preserves zeros or clusters.

    TFMOT's preserving registries set the preserving quantizer on the
    registry's config object, which has three problems this class fixes:
    (1) one quantizer object serves all layers of a kind, and the cluster-
    preserving one switches `preserve_sparsity` off for itself at the first
    layer without zeros (measured: in PCQAT a pruned conv after an unpruned
    one lost its zeros); each layer gets a quantizer of its own here. (2) The
    config serializes without the preserving quantizer, so a saved PQAT model
    reloaded as plain QAT; the scheme is saved with the config here. (3) The
    cluster-preserving quantizer derives its centroid variables from the
    kernel's values when the layer is built, which from a file means random
    initial values, so the saved variables did not fit and the file could not
    be loaded; `clusters` records what was built (see `_shape_like_saved`).
    The preserving quantizer is TFMOT's per-channel one for a per-channel
    Conv config and its per-tensor (Dense) one otherwise.

    Args:
        config: the scheme's QuantizeConfig for the layer (or its serialized form).
        scheme: "prune_preserving", "cluster_preserving" or "prune_cluster_preserving".
        clusters: {weight name: [centroid variable shape or None, preserve_sparsity]}
            of a built cluster-preserving layer; set by `quantize`.
    """

    def __init__(self, config, scheme, clusters=None):
        if isinstance(config, dict):
            config = quantize_utils.deserialize_keras_object(config)
        # A registry of our own, so a quantizer of our own.
        quantizers = _preserve_registry(scheme)._config_quantizer_map
        if type(config).__name__ not in quantizers:
            raise QuantizationError(f"the {scheme} scheme has no weight quantizer for a "
                                    f"{type(config).__name__}")
        self.config = config
        self.scheme = scheme
        self.weight_quantizer = quantizers[type(config).__name__]
        self.clusters = clusters
        if clusters:
            self.weight_quantizer.preserve_sparsity = any(p for _, p in clusters.values())

    def get_weights_and_quantizers(self, layer):
        pairs = [(weight, self.weight_quantizer)
                 for weight, _ in self.config.get_weights_and_quantizers(layer)]
        for weight, _ in pairs if self.clusters else []:
            # Called by the wrapper's build just before the quantizer's build.
            _shape_like_saved(weight, *self.clusters[weight.name.split("/")[-1].split(":")[0]])
        return pairs

    def set_quantize_weights(self, layer, quantize_weights):
        self.config.set_quantize_weights(layer, quantize_weights)

    def get_activations_and_quantizers(self, layer):
        return self.config.get_activations_and_quantizers(layer)

    def set_quantize_activations(self, layer, quantize_activations):
        self.config.set_quantize_activations(layer, quantize_activations)

    def get_output_quantizers(self, layer):
        return self.config.get_output_quantizers(layer)

    def get_config(self):
        return {"config": quantize_utils.serialize_keras_object(self.config),
                "scheme": self.scheme, "clusters": self.clusters}


def _shape_like_saved(weight, centroids_shape, preserve_sparsity):
    """Gives a newly built kernel values from which TFMOT derives the saved centroid shapes.

    TFMOT makes one centroid per unique value (per channel when the channels
    hold values of their own) and keeps a zero cluster only if the kernel has
    zeros; the loaded weights then replace all of it. Per tensor, channels
    share values; per channel, channel c holds c*K .. c*K+K-1.
    """
    shape = weight.shape.as_list()
    channels, size = shape[-1], int(np.prod(shape))
    if centroids_shape is None:  # TFMOT did not cluster it: one value, no centroids
        values = np.zeros(size)
    elif len(centroids_shape) == 1:
        values = (np.arange(size) % centroids_shape[0]).reshape(channels, -1).T
    else:
        k = centroids_shape[1]
        values = (np.arange(size // channels) % k)[:, None] + k * np.arange(channels)[None, :]
    values = np.reshape(values, shape) + (0 if preserve_sparsity else 1)
    weight.assign(values.astype(weight.dtype.as_numpy_dtype))


def _record_clusters(model):
    """Stores in each cluster-preserving config what TFMOT built (see PreservingQuantizeConfig)."""
    for layer in model.layers:
        config = getattr(layer, "quantize_config", None)
        if not isinstance(config, PreservingQuantizeConfig) or config.scheme not in \
                _CLUSTER_SCHEMES:
            continue
        config.clusters = {}
        for weight, quantizer, quantizer_vars in layer._weight_vars:
            centroids = quantizer_vars.get(cluster_preserve_quantize_registry.CLUSTER_CENTROIDS)
            config.clusters[weight.name.split("/")[-1].split(":")[0]] = [
                None if centroids is None else centroids.shape.as_list(),
                bool(quantizer.preserve_sparsity)]


class _PreservingRegistry(quantize_registry.QuantizeRegistry):
    """Default 8-bit configs (per-channel or per-tensor) with preserving weight quantizers."""

    def __init__(self, scheme, per_tensor):
        self._scheme = scheme
        self._base = default_8bit_quantize_registry.Default8BitQuantizeRegistry(
            disable_per_axis=per_tensor)
        self._preserve = _preserve_registry(scheme)

    def supports(self, layer):
        # The preserving registries call layers without trainable weights
        # supported even when the default registry, which gives their
        # config, does not know them (Rescaling, Lambda).
        return self._base.supports(layer) and self._preserve.supports(layer)

    def get_quantize_config(self, layer):
        config = self._base.get_quantize_config(layer)
        # TFMOT preserves Conv2D and Dense kernels; it leaves DepthwiseConv2D
        # alone ("supported with 8-bit QAT, but not with prune/clustering").
        if not layer.trainable_weights or isinstance(layer, keras.layers.DepthwiseConv2D):
            return config
        return PreservingQuantizeConfig(config, self._scheme)


def _registry(scheme, per_tensor):
    if scheme == "default":
        return default_8bit_quantize_registry.Default8BitQuantizeRegistry(
            disable_per_axis=per_tensor)
    return _PreservingRegistry(scheme, per_tensor)


class WeightsOnlyQuantizeConfig(quantize_config_lib.QuantizeConfig):
    """The scheme's weight quantization for a layer whose output the next ReLU quantizes."""

    def __init__(self, scheme="default", per_tensor=False):
        self.scheme = scheme
        self.per_tensor = per_tensor
        self._config = None

    def _for(self, layer):
        if self._config is None:  # one instance per layer (see _LayerReLUQuantize)
            self._config = _registry(self.scheme, self.per_tensor).get_quantize_config(layer)
        return self._config

    def get_weights_and_quantizers(self, layer):
        return self._for(layer).get_weights_and_quantizers(layer)

    def set_quantize_weights(self, layer, quantize_weights):
        self._for(layer).set_quantize_weights(layer, quantize_weights)

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {"scheme": self.scheme, "per_tensor": self.per_tensor}


class _LayerReLUQuantize(default_8bit_transforms.LayerReLUQuantize):
    """TFMOT's Conv2D/DepthwiseConv2D/Dense/Add -> ReLU transform, keeping the weights.

    TFMOT gives the layer before the ReLU a NoOpQuantizeConfig so that no fake
    quantization sits between the two, which also drops its weight
    quantization: measured, such a conv trained with float weights, kept
    per-channel scales with per_tensor=True (the converter quantized it after
    training), and lost its pruned zeros under PQAT. It also overwrote a
    user's QuantizeConfig. Here the layer keeps the scheme's weight
    quantizers and only its output is left to the ReLU; Add (no weights) and
    user configs are left as TFMOT and the user have them.
    """

    def __init__(self, scheme, per_tensor):
        self._scheme, self._per_tensor = scheme, per_tensor

    def replacement(self, match_layer):
        before = match_layer.input_layers[0]
        if before.metadata.get("quantize_config") is not None:
            return match_layer
        if before.layer["class_name"] == "Add":
            return super().replacement(match_layer)
        before.metadata["quantize_config"] = WeightsOnlyQuantizeConfig(self._scheme,
                                                                       self._per_tensor)
        return match_layer

    def custom_objects(self):
        return {"WeightsOnlyQuantizeConfig": WeightsOnlyQuantizeConfig}


class _LayerReluActivationQuantize(_LayerReLUQuantize,
                                   default_8bit_transforms.LayerReluActivationQuantize):
    """The same for an Activation("relu") layer."""


class _LayoutTransform(default_8bit_quantize_layout_transform.Default8BitQuantizeLayoutTransform):
    """TFMOT's default 8-bit layout transforms, in its order, with the ReLU ones replaced."""

    def __init__(self, scheme, per_tensor):
        self._scheme, self._per_tensor = scheme, per_tensor

    def apply(self, model, layer_quantize_map):
        t = default_8bit_transforms
        transforms = [
            t.InputLayerQuantize(), t.SeparableConv1DQuantize(), t.SeparableConvQuantize(),
            t.Conv2DReshapeBatchNormReLUQuantize(), t.Conv2DReshapeBatchNormActivationQuantize(),
            t.Conv2DBatchNormReLUQuantize(), t.Conv2DBatchNormActivationQuantize(),
            t.Conv2DReshapeBatchNormQuantize(), t.Conv2DBatchNormQuantize(),
            t.ConcatTransform6Inputs(), t.ConcatTransform5Inputs(), t.ConcatTransform4Inputs(),
            t.ConcatTransform3Inputs(), t.ConcatTransform(),
            t.DenseBatchNormQuantize(), t.DenseBatchNormReLUQuantize(),
            t.DenseBatchNormActivationQuantize(),
            _LayerReLUQuantize(self._scheme, self._per_tensor),
            _LayerReluActivationQuantize(self._scheme, self._per_tensor),
        ]
        return model_transformer.ModelTransformer(
            model, transforms, set(layer_quantize_map.keys()), layer_quantize_map).transform()


class _Scheme(default_8bit_quantize_scheme.Default8BitQuantizeScheme):
    """A QAT scheme by name: TFMOT's default 8-bit one, or a preserving one (see module)."""

    def __init__(self, scheme, per_tensor):
        super().__init__(disable_per_axis=per_tensor)
        self._scheme = scheme

    def get_layout_transformer(self):
        return _LayoutTransform(self._scheme, self._disable_per_axis)

    def get_quantize_registry(self):
        return _registry(self._scheme, self._disable_per_axis)


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
def _cluster_granularity_from_weights():
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


def _tfmot_scheme(config):
    return _Scheme(config.scheme, config.per_tensor)


# --------------------------------------------------------------------------- layers


def _describe(layer):
    return f"{layer.name!r} ({type(layer).__name__})"


def _is_graph_model(layer):
    return isinstance(layer, keras.Model) and (
        layer._is_graph_network or isinstance(layer, keras.Sequential))


def _matches(pattern, layer):
    if isinstance(pattern, type):
        return isinstance(layer, pattern)
    # A plain name matches itself even when it holds regex characters ("tf.math.add").
    return pattern == layer.name or re.fullmatch(pattern, layer.name) is not None


def _custom_config(layer, config):
    """The QuantizeConfig the user gave this layer, or None."""
    by_name = config.quantize_configs.get(layer.name)
    if by_name is not None:
        return by_name
    config_for_class = config.quantize_configs.get(type(layer)) or _REGISTERED.get(type(layer))
    if config_for_class is None and type(layer) in _BUILT_IN:
        return _BUILT_IN[type(layer)]()
    return config_for_class


def _inbound_layer(layer):
    """The one layer feeding `layer`, or None (several inputs, or a shared layer)."""
    nodes = layer._inbound_nodes  # private, but what TFMOT's own transforms read
    if len(nodes) != 1:
        return None
    inbound = tf.nest.flatten(nodes[0].inbound_layers)
    return inbound[0] if len(inbound) == 1 else None


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
            and _custom_config(before, config) is None and _custom_config(bn, config) is None):
        return before
    return None


def _activation_name(activation):
    return getattr(activation, "__name__", type(activation).__name__)


def _supported_activation(activation):
    names = (quantize_aware_activation.QuantizeAwareActivation._PRE_QUANT_ACTIVATIONS
             | quantize_aware_activation.QuantizeAwareActivation._POST_QUANT_ACTIVATIONS
             | quantize_aware_activation.QuantizeAwareActivation._NO_QUANTIZE_ACTIVATIONS)
    return _activation_name(activation) in names


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
        if activation is not None and not _supported_activation(activation):
            return (f"its activation {_activation_name(activation)!r} is not one TFMOT "
                    "quantizes inside a layer (use activation=None and a separate "
                    "activation layer)")
    return None


def _select(model, config, registry):
    """The layers to annotate, each with its custom config (or None)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = ", ".join(layer.name for layer in layers)
    for pattern in config.exclude_layers:
        if not any(_matches(pattern, layer) for layer in layers):
            raise QuantizationError(f"exclude_layers entry {pattern!r} matches no layer; the "
                                    f"model's layers are: {names}")
    for kind in config.exclude_types:
        if not any(_matches(kind, layer) if isinstance(kind, type)
                   else type(layer).__name__ == kind for layer in layers):
            raise QuantizationError(f"exclude_types entry {getattr(kind, '__name__', kind)!r} "
                                    f"matches no layer; the model's layers are: {names}")
    for key in config.quantize_configs:
        if not any(layer.name == key if isinstance(key, str) else type(layer) is key
                   for layer in layers):
            raise QuantizationError(f"quantize_configs key {getattr(key, '__name__', key)!r} "
                                    f"matches no layer (names match exactly, classes exactly); "
                                    f"the model's layers are: {names}")

    def excluded(layer):
        return (any(_matches(p, layer) for p in config.exclude_layers)
                or any(isinstance(layer, k) if isinstance(k, type) else type(layer).__name__ == k
                       for k in config.exclude_types))

    chosen = {id(layer): layer for layer in layers if not excluded(layer)}
    if not chosen:
        raise QuantizationError(f"every layer of {model.name!r} is excluded; nothing to quantize")
    problems = []
    for layer in chosen.values():
        if _custom_config(layer, config) is None:
            reason = _unsupported_reason(layer, registry, chosen, config)
            if reason:
                problems.append(f"{_describe(layer)}: {reason}")
    if problems:
        bad = [p.split(" (")[0] for p in problems]
        raise QuantizationError(
            f"model {model.name!r} has {len(problems)} layer(s) TFMOT cannot quantize: "
            + "; ".join(problems) + ". Either keep them in float with "
            f"QATConfig(exclude_layers=[{', '.join(bad)}]) (or exclude_types=[...]; in a "
            f"recipe: qat: {{exclude_layers: [{', '.join(b.strip(chr(39)) for b in bad)}]}}, "
            f"with tfcompress train: --qat_exclude_layers="
            f"{','.join(b.strip(chr(39)) for b in bad)}), which "
            "converts in int8 mode but not int8_full, or give each a "
            "tfmot.quantization.keras.QuantizeConfig with QATConfig(quantize_configs="
            "{name or class: config}) or quantization.register_quantize_config(cls, config)")
    return [(layer, _custom_config(layer, config)) for layer in chosen.values()]


def _warn_float_folds(selected, config):
    """Warns about BatchNorm folds the converter will leave in float (module docstring)."""
    chosen = {id(layer): layer for layer, _ in selected}
    for layer, _ in selected:
        before = (_folded_into(layer, chosen, config)
                  if type(layer).__name__ in _BATCH_NORMS else None)
        if before is None:
            continue
        if type(before).__name__ == "Dense" or config.per_tensor:
            warnings.warn(
                f"{_describe(before)} is followed by BatchNormalization {layer.name!r}: the "
                "TFLite converter folds the BN into its weights after the fake quantization "
                "and, as one per-tensor scale cannot hold the per-channel BN scales, keeps it "
                "in float, so the model will not convert in int8_full mode. Drop the BN, fold "
                "it into the layer before QAT, or (for a conv) use per_tensor=False",
                stacklevel=3)


# ----------------------------------------------------------------------- public API


def is_qat_model(model):
    """True when `model` holds TFMOT quantization wrappers (`quantize` was applied)."""
    return any(isinstance(layer, (quantize_wrapper.QuantizeWrapper, quantize_layer.QuantizeLayer,
                                  quantize_annotate.QuantizeAnnotate))
               for layer in model.layers)


def _check_model(model):
    if not _is_graph_model(model):
        raise QuantizationError(
            f"{type(model).__name__} is a subclassed model: TFMOT can only quantize the layers "
            "of a Sequential or functional model; build it functionally")
    if not model.built:
        raise QuantizationError(f"model {model.name!r} is not built; give it an Input (or call "
                                "model.build(input_shape)) before quantizing")
    if is_qat_model(model):
        raise QuantizationError(f"model {model.name!r} is already quantization-aware")
    for layer in model.layers:
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            raise QuantizationError(f"model {model.name!r} is still wrapped for pruning "
                                    f"({layer.name!r}); pruning.strip_pruning it first")
        if isinstance(layer, cluster_wrapper.ClusterWeights):
            raise QuantizationError(f"model {model.name!r} is still wrapped for clustering "
                                    f"({layer.name!r}); clustering.strip_clustering it first")


def _check_something_to_preserve(model, config):
    if config.scheme == "default":
        return
    registry = _preserve_registry(config.scheme)
    kernels = [weight.numpy() for layer in model.layers
               if type(layer) in registry._LAYERS_CONFIG_MAP
               and not isinstance(layer, keras.layers.DepthwiseConv2D)
               for weight in (getattr(layer, name) for name in
                              registry._LAYERS_CONFIG_MAP[type(layer)].weight_attrs)]
    if config.scheme.startswith("prune") and not any(np.any(k == 0) for k in kernels):
        raise QuantizationError(
            f"scheme {config.scheme!r} preserves zero weights, but no Conv2D or Dense kernel "
            f"of {model.name!r} has any: prune it and strip_pruning it first, or use "
            "scheme='default'")
    if config.scheme in _CLUSTER_SCHEMES:
        many = [k for k in kernels if len(np.unique(k)) > 1024]
        if kernels and len(many) == len(kernels):
            raise QuantizationError(
                f"scheme {config.scheme!r} preserves clusters, but every Conv2D and Dense "
                f"kernel of {model.name!r} has more than 1,024 unique values (TFMOT's limit "
                "for a clustered kernel): cluster it and strip_clustering it first, or use "
                "scheme='default'")


def quantize(model, config=None):
    """Returns a quantization-aware copy of `model`, ready to compile and fit.

    The original model is not changed and shares no variables with the
    result. Layer names become `quant_<name>`; the wrappers add a
    QuantizeLayer after the input.

    Example:
        qat = quantize(stripped, QATConfig(scheme="prune_preserving"))
        qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
        qat.fit(x, y, epochs=1)
        convert(qat, "int8_full")

    Args:
        model: a built tf_keras Sequential or functional model (stripped of
            pruning and clustering wrappers).
        config: a QATConfig, a dict of its fields, or None for the defaults.

    Returns:
        The QAT model (not compiled).

    Raises:
        QuantizationError: a subclassed/unbuilt/already wrapped model, layers
            TFMOT cannot quantize (all named, with the two ways out), a
            preserving scheme with nothing to preserve, or a config that
            matches no layer.
        TypeError: a Keras 3 model.
    """
    model = ensure_tf_keras_model(model)
    if config is None:
        config = QATConfig()
    elif isinstance(config, dict):
        config = QATConfig(**config)
    _check_model(model)
    # NaN weights would give NaN quantization ranges: nothing converts sensibly.
    check_finite_weights(model, "the model to quantize")
    scheme = _tfmot_scheme(config)
    selected = _select(model, config, scheme.get_quantize_registry())
    _check_something_to_preserve(model, config)
    _warn_float_folds(selected, config)
    plan = {id(layer): custom for layer, custom in selected}

    def annotate(layer):
        if id(layer) not in plan:
            return layer
        return quantize_annotate.QuantizeAnnotate(layer, quantize_config=plan[id(layer)])

    # quantize_apply clones the annotated model through get_config/from_config,
    # so custom layer and config classes must be in scope.
    objects = {type(layer).__name__: type(layer) for layer in model.layers}
    objects.update({type(c).__name__: type(c) for c in plan.values() if c is not None})
    objects.update(_scope_objects())
    try:
        granularity = (_cluster_granularity_from_weights() if config.scheme in _CLUSTER_SCHEMES
                       else contextlib.nullcontext())
        # quantize_apply rebuilds every layer from its config; a Lambda layer of
        # this in-memory model is the caller's own code, not a file's, so safe
        # mode (which refuses to rebuild it) is off for the copy.
        with tfmot.quantization.keras.quantize_scope(objects), granularity, \
                SafeModeScope(False):
            annotated = keras.models.clone_model(model, clone_function=annotate)
            qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
        _tidy_wrapper_variables(qat)
        _record_clusters(qat)
        return qat
    except QuantizationError:
        raise
    except Exception as e:  # TFMOT raises ValueError/RuntimeError/TypeError, without context
        reason = " ".join(str(e).split())[:500]
        raise QuantizationError(
            f"TFMOT could not quantize model {model.name!r}: {reason}. Keep the layer it names "
            "in float (QATConfig(exclude_layers=[...]); recipe key qat.exclude_layers; "
            "tfcompress train --qat_exclude_layers) or give it a QuantizeConfig "
            "(QATConfig(quantize_configs={...}))") from e


def _tidy_wrapper_variables(model):
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
        if not isinstance(layer, quantize_wrapper.QuantizeWrapper):
            continue
        inner = {id(v) for v in layer.layer.weights}
        kept = []
        for variable in reversed(layer._trainable_weights):
            if id(variable) not in inner and all(variable is not k for k in kept):
                kept.append(variable)
        layer._trainable_weights = kept[::-1]


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


def _scope_objects():
    objects = {"PreservingQuantizeConfig": PreservingQuantizeConfig,
               "WeightsOnlyQuantizeConfig": WeightsOnlyQuantizeConfig}
    objects.update({type(c).__name__: type(c) for c in _REGISTERED.values()})
    return objects


def _restore_masks(model):
    """Recomputes the PQAT / PCQAT masks from the loaded variables.

    TFMOT computes them as constants when a layer is built, from the values
    it has then: in a model built from a file, the initial ones. As TFMOT
    does at a build, the zeros of the kernel are kept zero; for PCQAT these
    are the pruned weights and those the zero cluster holds when saved.
    """
    names = cluster_preserve_quantize_registry
    for layer in model.layers:
        for weight, _, quantizer_vars in getattr(layer, "_weight_vars", []):
            if names.SPARSITY_MASK in quantizer_vars:
                quantizer_vars[names.SPARSITY_MASK] = tf.math.divide_no_nan(weight, weight)
            if quantizer_vars.get(names.CENTROIDS_MASK) is not None:
                centroids = quantizer_vars[names.CLUSTER_CENTROIDS]
                quantizer_vars[names.CENTROIDS_MASK] = 1.0 - tf.one_hot(
                    tf.argmin(tf.abs(centroids), axis=-1), centroids.shape[-1])


def load_qat_model(path, custom_objects=None, allow_unsafe=False, compile=True):
    """Loads a QAT model saved with `tfcompress.save_model` (`.keras` or `.h5`).

    `tfcompress.load_model` inside TFMOT's `quantize_scope`, with three
    repairs: TFMOT's QuantizeLayer is marked built (`QuantizeLayer`), so a
    `.keras` file does not build it twice; cluster-preserving layers are
    built with the centroid shapes they were saved with
    (`PreservingQuantizeConfig`); and the PQAT / PCQAT masks are recomputed
    from the loaded weights, so training continues to keep the zeros.

    Example:
        tfcompress.save_model(qat, "run/qat.keras")
        qat = load_qat_model("run/qat.keras")

    Args:
        path: the saved model.
        custom_objects: extra {name: class}, e.g. custom QuantizeConfig
            classes given through `QATConfig.quantize_configs`.
        allow_unsafe, compile: as in `tfcompress.load_model`.

    Raises:
        ModelLoadError: the file cannot be loaded (the reason is included).
    """
    objects = {**_scope_objects(), "QuantizeLayer": QuantizeLayer, **(custom_objects or {})}
    # A scope of our own inside TFMOT's: its QuantizeLayer would win otherwise.
    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(objects), \
            _cluster_granularity_from_weights():
        model = load_model(path, allow_unsafe=allow_unsafe, custom_objects=objects,
                           compile=compile)
    _restore_masks(model)
    return model


# ------------------------------------------------------------------ reading weights


def quantized_kernels(model):
    """The fake-quantized weights a QAT model computes with, one entry a weight.

    Each quantized weight of each wrapper is passed through its quantizer
    with training=False: the float values the int8 kernel stands for (PQAT
    masks and CQAT clusters applied).

    Returns:
        [{"layer": inner layer name, "type", "weight": e.g. "kernel",
          "values": numpy array in Keras layout}]
    """
    rows = []
    for layer in model.layers:
        for weight, quantizer, quantizer_vars in getattr(layer, "_weight_vars", []):
            values = quantizer(weight, training=False, weights=quantizer_vars)
            rows.append({"layer": layer.layer.name, "type": type(layer.layer).__name__,
                         "weight": weight.name.split("/")[-1].split(":")[0],
                         "values": np.asarray(values)})
    return rows


_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def tflite_kernels(tflite_model):
    """The constant kernels of the conv and fully-connected ops in a `.tflite`.

    Values are the stored ones (int8 for quantized files), rearranged to the
    Keras layout: CONV_2D OHWI -> HWIO, FULLY_CONNECTED [out, in] -> [in,
    out], DEPTHWISE_CONV_2D [1, H, W, C] -> [H, W, C]; so the last axis is
    the output channel. "layer" is read from the tensor name (the converter
    names a kernel after the op that uses it), without TFMOT's "quant_"
    prefix: best effort, for reports and tests.

    Example:
        for k in tflite_kernels(convert(qat, "int8_full")):
            k["layer"], k["dtype"], np.count_nonzero(k["values"] == 0)

    Returns:
        [{"layer", "op", "tensor", "dtype", "values", "scales", "zero_points"}]
    """
    from ai_edge_litert import schema_py_generated as schema
    from tflite_export.tflite_file import parse_tflite, read_tflite

    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = parse_tflite(read_tflite(tflite_model))
    rows = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            op_name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if op_name not in _KERNEL_OPS or len(op.inputs) < 2:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            buffer = model.buffers[tensor.buffer] if tensor.buffer > 0 else None
            dtype = type_names.get(tensor.type, "")
            if buffer is None or buffer.data is None or not len(buffer.data) or \
                    dtype.lower() not in ("int8", "uint8", "int16", "float16", "float32"):
                continue  # computed (e.g. DEQUANTIZE of float16 weights) or exotic
            values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(),
                                   dtype.lower()).reshape([int(d) for d in tensor.shape])
            if op_name == "CONV_2D":
                values = np.transpose(values, (1, 2, 3, 0))
            elif op_name == "FULLY_CONNECTED":
                values = values.T
            else:
                values = values[0]
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            parts = name.split(";")[0].split("/")
            layer = parts[1] if len(parts) > 2 else parts[0]
            quant = tensor.quantization
            rows.append({
                "layer": layer[len("quant_"):] if layer.startswith("quant_") else layer,
                "op": op_name, "tensor": name, "dtype": dtype, "values": values,
                "scales": [float(s) for s in quant.scale] if quant is not None
                and quant.scale is not None else [],
                "zero_points": [int(z) for z in quant.zeroPoint] if quant is not None
                and quant.zeroPoint is not None else []})
    return rows
