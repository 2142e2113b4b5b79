"""The QAT schemes by name: TFMOT's default 8-bit scheme and its prune/cluster-preserving ones.

`Scheme(name, per_tensor)` is what `quantize` hands to TFMOT's `quantize_apply`:
TFMOT's default 8-bit scheme with two changes, each measured here (TFMOT 0.8.1):
    * its registry, for the preserving schemes, gives every layer a
      `PreservingQuantizeConfig` of its own (zeros or clusters kept, saved and
      reloaded with the scheme);
    * its layout transforms keep the weight quantization of a layer that feeds
      a ReLU (`WeightsOnlyQuantizeConfig`), which TFMOT dropped.

Example:
    tfmot.quantization.keras.quantize_apply(annotated, Scheme("prune_preserving", False))
"""

import numpy as np

from tfcompress.keras import keras
from tfcompress.quantization.config import CLUSTER_SCHEMES, QuantizationError
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)
from tfcompress._compat import (  # noqa: E402
    cluster_preserve_quantize_registry, default_8bit_transforms, preserving_weight_quantizers,
    prune_preserve_quantize_registry, quantize_utils, quantizer_weight_vars)

_default_8bit = tfmot.quantization.keras.default_8bit


def weight_name(weight):
    """"kernel" for a variable named "quant_conv/kernel:0"."""
    return weight.name.split("/")[-1].split(":")[0]


# --------------------------------------------------------------- preserving schemes


def preserve_registry(scheme):
    """TFMOT's registry of prune- or cluster-preserving weight quantizers."""
    if scheme == "prune_preserving":
        return prune_preserve_quantize_registry.PrunePreserveQuantizeRegistry()
    return cluster_preserve_quantize_registry.ClusterPreserveQuantizeRegistry(
        preserve_sparsity=scheme == "prune_cluster_preserving")


class PreservingQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
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
        quantizers = preserving_weight_quantizers(preserve_registry(scheme))
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
            _shape_like_saved(weight, *self.clusters[weight_name(weight)])
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


def record_clusters(model):
    """Stores in each cluster-preserving config what TFMOT built (see PreservingQuantizeConfig)."""
    for layer in model.layers:
        config = getattr(layer, "quantize_config", None)
        if not isinstance(config, PreservingQuantizeConfig) or config.scheme not in \
                CLUSTER_SCHEMES:
            continue
        config.clusters = {}
        for weight, quantizer, quantizer_vars in quantizer_weight_vars(layer):
            centroids = quantizer_vars.get(cluster_preserve_quantize_registry.CLUSTER_CENTROIDS)
            config.clusters[weight_name(weight)] = [
                None if centroids is None else centroids.shape.as_list(),
                bool(quantizer.preserve_sparsity)]


class _PreservingRegistry(tfmot.quantization.keras.QuantizeRegistry):
    """Default 8-bit configs (per-channel or per-tensor) with preserving weight quantizers."""

    def __init__(self, scheme, per_tensor):
        self._scheme = scheme
        self._base = _default_8bit.Default8BitQuantizeRegistry(disable_per_axis=per_tensor)
        self._preserve = preserve_registry(scheme)

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


def registry(scheme, per_tensor):
    """The QuantizeRegistry of a scheme by name (see the package docstring)."""
    if scheme == "default":
        return _default_8bit.Default8BitQuantizeRegistry(disable_per_axis=per_tensor)
    return _PreservingRegistry(scheme, per_tensor)


# ---------------------------------------------------------------- layout transforms


class WeightsOnlyQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """The scheme's weight quantization for a layer whose output the next ReLU quantizes."""

    def __init__(self, scheme="default", per_tensor=False):
        self.scheme = scheme
        self.per_tensor = per_tensor
        self._config = None

    def _for(self, layer):
        if self._config is None:  # one instance per layer (see _LayerReLUQuantize)
            self._config = registry(self.scheme, self.per_tensor).get_quantize_config(layer)
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


class _LayerReLUQuantize(_default_8bit.default_8bit_transforms.LayerReLUQuantize):
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


class _LayerReluActivationQuantize(
        _LayerReLUQuantize, _default_8bit.default_8bit_transforms.LayerReluActivationQuantize):
    """The same for an Activation("relu") layer."""


_transforms = tfmot.quantization.keras.graph_transformations.transforms


class _SplitRescaling(_transforms.Transform):
    """A Rescaling with both a scale and an offset, on the built-in output-only config,
    becomes Rescaling(scale) then Rescaling(1, offset).

    Rescaling computes x * scale + offset: two TFLite ops (MUL, ADD) whose middle
    tensor no fake quantization covers, so an int8_full conversion of the QAT model
    kept both in float (measured on MobileNet's Rescaling(1/127.5, -1) preprocessing).
    Split, each half is one op with its own learned output range (the converter drops
    the multiplication by 1).
    """

    def pattern(self):
        return _transforms.LayerPattern("Rescaling")

    def replacement(self, match_layer):
        config = match_layer.layer["config"]
        quantize_config = match_layer.metadata.get("quantize_config")
        if (type(quantize_config).__name__ != "Default8BitOutputQuantizeConfig"
                or config.get("offset", 0.0) == 0.0 or config.get("scale", 1.0) == 1.0):
            return match_layer
        scale = keras.layers.Rescaling(config["scale"], name=config["name"],
                                       dtype=config.get("dtype"))
        offset = keras.layers.Rescaling(1.0, config["offset"], name=config["name"] + "_offset",
                                        dtype=config.get("dtype"))
        nodes = []
        for layer in (scale, offset):
            serialized = quantize_utils.serialize_layer(layer, use_legacy_format=True)
            serialized["name"] = layer.name
            nodes.append((serialized, {"quantize_config": type(quantize_config)()}))
        first = _transforms.LayerNode(nodes[0][0], metadata=nodes[0][1])
        return _transforms.LayerNode(nodes[1][0], input_layers=[first], metadata=nodes[1][1])


class _LayoutTransform(_default_8bit.Default8BitQuantizeLayoutTransform):
    """TFMOT's default 8-bit layout transforms, in its order, with the ReLU ones replaced,
    and the Rescaling split (`_SplitRescaling`)."""

    def __init__(self, scheme, per_tensor):
        self._scheme, self._per_tensor = scheme, per_tensor

    def apply(self, model, layer_quantize_map):
        t = _default_8bit.default_8bit_transforms
        dense_bn = default_8bit_transforms  # these three have no public name
        transforms = [
            t.InputLayerQuantize(), t.SeparableConv1DQuantize(), t.SeparableConvQuantize(),
            t.Conv2DReshapeBatchNormReLUQuantize(), t.Conv2DReshapeBatchNormActivationQuantize(),
            t.Conv2DBatchNormReLUQuantize(), t.Conv2DBatchNormActivationQuantize(),
            t.Conv2DReshapeBatchNormQuantize(), t.Conv2DBatchNormQuantize(),
            t.ConcatTransform6Inputs(), t.ConcatTransform5Inputs(), t.ConcatTransform4Inputs(),
            t.ConcatTransform3Inputs(), t.ConcatTransform(),
            dense_bn.DenseBatchNormQuantize(), dense_bn.DenseBatchNormReLUQuantize(),
            dense_bn.DenseBatchNormActivationQuantize(),
            _LayerReLUQuantize(self._scheme, self._per_tensor),
            _LayerReluActivationQuantize(self._scheme, self._per_tensor),
            _SplitRescaling(),
        ]
        return tfmot.quantization.keras.graph_transformations.model_transformer.ModelTransformer(
            model, transforms, set(layer_quantize_map.keys()), layer_quantize_map).transform()


class Scheme(_default_8bit.Default8BitQuantizeScheme):
    """A QAT scheme by name: TFMOT's default 8-bit one, or a preserving one (see module)."""

    def __init__(self, scheme, per_tensor):
        super().__init__(disable_per_axis=per_tensor)
        self._scheme, self._per_tensor = scheme, per_tensor

    def get_layout_transformer(self):
        return _LayoutTransform(self._scheme, self._per_tensor)

    def get_quantize_registry(self):
        return registry(self._scheme, self._per_tensor)


def scope_objects():
    """{class name: class} of the QuantizeConfigs a QAT model of these schemes may hold."""
    return {"PreservingQuantizeConfig": PreservingQuantizeConfig,
            "WeightsOnlyQuantizeConfig": WeightsOnlyQuantizeConfig}
