"""Weight clustering of tf_keras models on top of TFMOT's ClusterWeights wrapper.

`cluster` wraps the chosen layers so that each kernel holds at most
`number_of_clusters` distinct values (the centroids train, each weight
follows its nearest one); the model fine-tunes as usual; `strip_clustering`
gives back a plain model with the same layer names and weight shapes, its
kernels made of the centroids; `unique_values_report` counts what came out,
in a Keras model, a QAT model or a `.tflite` file. A clustered kernel
compresses well (gzip, or 4-bit indices plus a codebook for 16 clusters); to
keep the clusters through 8-bit quantization, fine-tune with
`quantization.QATConfig(scheme="cluster_preserving")` (CQAT).

Example:
    from tfcompress import clustering
    clustered = clustering.cluster(model, clustering.ClusteringConfig(number_of_clusters=16))
    clustered.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    clustered.fit(x, y, epochs=1, batch_size=128)
    plain = clustering.strip_clustering(clustered)
    print(clustering.format_unique_values_report(clustering.unique_values_report(plain)))

Notes (TFMOT 0.8.1):
    * TFMOT clusters Conv, Dense, Embedding, RNN and attention kernels, never
      biases, and never DepthwiseConv2D ("big unrecoverable accuracy loss").
    * `cluster_weights` wraps the caller's own layer objects and changes them
      (measured: quantize_apply on the original model failed afterwards with a
      weight-count mismatch); `cluster` works on a copy.
    * `cluster_weights` skips, with only a warning, a Conv2D whose kernel has
      too few weights for the clusters, and with `cluster_per_channel` it
      counts a bias-free Conv2D's channels wrong (it reads the kernel as the
      bias) and so skips every one. `cluster` does its own count and warns,
      naming each layer it leaves unclustered.
    * TFMOT's CQAT clusters a Conv2D per channel whenever its channels hold
      (nearly) as many values each, per-tensor clustered or not, and the
      channels' centroids then drift apart; `quantization.quantize` keeps a
      per-tensor clustered kernel per tensor (see there).
    * Per-channel int8 weights scale each channel by its own factor, so a
      conv kernel clustered to 16 values holds at most 16 int8 values per
      channel in a `.tflite` (and in a QAT model's fake-quantized kernel), but
      more in all: compare `max_unique_per_channel` there.

Reference:
    Han, Mao & Dally 2016, "Deep Compression: Compressing Deep Neural Networks
    with Pruning, Trained Quantization and Huffman Coding",
    https://arxiv.org/abs/1510.00149
"""

import copy
import dataclasses
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from tfcompress import quantization
from tfcompress._compat import (cluster_wrapper, clustering_registry, experimental_cluster,
                                pruning_wrapper, safe_mode_scope)
from tfcompress.checks import as_config, check_finite_weights, check_wrappable
from tfcompress.errors import TfcompressError
from tfcompress.keras import ensure_tf_keras_model, keras
from tfcompress.layer_selection import (check_patterns_or_classes, describe, is_graph_model,
                                        matches, unmatched, walk)
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)

__all__ = ["ClusteringError", "ClusteringConfig", "INITS", "cluster", "strip_clustering",
           "is_clustered_model", "unique_values_report", "format_unique_values_report"]

_Init = tfmot.clustering.keras.CentroidInitialization
INITS = {"kmeans++": _Init.KMEANS_PLUS_PLUS, "linear": _Init.LINEAR,
         "density": _Init.DENSITY_BASED, "random": _Init.RANDOM}


class ClusteringError(TfcompressError, ValueError):
    """A model or layer cannot be clustered as asked; the message says what to do."""


def _check_clusters(value, what, preserve_sparsity):
    # TFMOT: more than 1 cluster, more than 2 with preserve_sparsity (one is the zeros).
    low = 3 if preserve_sparsity else 2
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        why = " with preserve_sparsity (one cluster holds the zeros)" if preserve_sparsity else ""
        raise ClusteringError(f"{what} must be an integer >= {low}{why}, got {value!r}")
    return int(value)


def _check_patterns(patterns, name):
    """Validates layer patterns: names/regexes (str or compiled) or layer classes."""
    return check_patterns_or_classes(patterns, name, ClusteringError)


@dataclasses.dataclass
class ClusteringConfig:
    """How many clusters, how they start, and which layers.

    Layers are matched by name (a string is a regular expression matched
    against the whole name, so a plain name matches itself), by class name
    ("Dense") or by class (`keras.layers.Conv2D`).

    Example:
        ClusteringConfig(16)                                  # every clusterable kernel
        ClusteringConfig(8, init="linear", exclude=["conv1"])
        ClusteringConfig(16, preserve_sparsity=True)          # after pruning: zeros stay
        ClusteringConfig(16, per_layer={"classifier": 32})

    Args:
        number_of_clusters: distinct values per kernel (per channel with
            `per_channel`), >= 2 (>= 3 with `preserve_sparsity`).
        init: how centroids start: "kmeans++" (default), "linear" (evenly
            between min and max), "density" (by the weights' CDF), "random",
            or a `tfmot.clustering.keras.CentroidInitialization`.
        preserve_sparsity: keep zero weights zero (TFMOT's experimental
            sparsity-preserving clustering), for a pruned and stripped model.
        per_channel: cluster each output channel of a Conv2D separately
            (number_of_clusters values per channel; other layers per kernel).
            Matches per-channel int8 weights and usually costs less accuracy.
        include: patterns of the layers to cluster; () means every layer with
            weights TFMOT clusters.
        exclude: patterns of layers to leave alone; wins over `include`.
        skip_first_and_last: leave the first and last clusterable layers
            (stem and classifier) alone.
        per_layer: {pattern: number_of_clusters} overrides (first match wins).

    Raises:
        ClusteringError: naming the field that is wrong.
    """

    number_of_clusters: int = 16
    init: Any = "kmeans++"
    preserve_sparsity: bool = False
    per_channel: bool = False
    include: Sequence[Any] = ()
    exclude: Sequence[Any] = ()
    skip_first_and_last: bool = False
    per_layer: Mapping[Any, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for field in ("preserve_sparsity", "per_channel", "skip_first_and_last"):
            if not isinstance(getattr(self, field), bool):
                raise ClusteringError(f"{field} must be True or False, got "
                                      f"{getattr(self, field)!r}")
        self.number_of_clusters = _check_clusters(self.number_of_clusters, "number_of_clusters",
                                                  self.preserve_sparsity)
        if not isinstance(self.init, _Init) and self.init not in INITS:
            raise ClusteringError(f"unknown centroid init {self.init!r}; choose one of "
                                  f"{', '.join(INITS)}")
        self.include = _check_patterns(self.include, "include")
        self.exclude = _check_patterns(self.exclude, "exclude")
        self.per_layer = dict(self.per_layer)
        _check_patterns(list(self.per_layer), "per_layer")
        for pattern, clusters in self.per_layer.items():
            _check_clusters(clusters, f"per_layer[{pattern!r}]", self.preserve_sparsity)

    @property
    def centroid_init(self):
        """The TFMOT CentroidInitialization for `init`."""
        return self.init if isinstance(self.init, _Init) else INITS[self.init]


# --------------------------------------------------------------------------- layers


def _clusterable_weights(layer):
    """[(name, variable)] TFMOT clusters in `layer`; [] for none; None if TFMOT does not know it."""
    if isinstance(layer, tfmot.clustering.keras.ClusterableLayer):
        return list(layer.get_clusterable_weights())
    if not clustering_registry.ClusteringRegistry.supports(layer):
        return None
    # make_clusterable patches a method onto the object it gets: a shallow
    # copy (same variables) keeps reading a model free of side effects.
    return list(clustering_registry.ClusteringRegistry.make_clusterable(copy.copy(layer))
                .get_clusterable_weights())


def _per_channel(layer, config):
    # TFMOT clusters per channel only Conv2D kernels (and its subclasses).
    return config.per_channel and isinstance(layer, keras.layers.Conv2D)


def _too_small(layer, weights, clusters, config):
    """True when a kernel (or channel) has no more weights than clusters (TFMOT's rule)."""
    for _, weight in weights:
        size = int(np.prod(weight.shape))
        if _per_channel(layer, config):
            size //= int(weight.shape[-1])
        if size <= clusters:
            return True
    return False


def _select(model, config):
    """The layers to wrap, each with its number of clusters: [(layer, clusters)]."""
    layers = list(walk(model))
    names = ", ".join(layer.name for layer in layers)
    weights = {id(layer): _clusterable_weights(layer) for layer in layers}

    def wanted(layer):
        # Clusterable, or trainable weights TFMOT does not know (an error if
        # chosen). Layers whose weights TFMOT leaves alone (BatchNorm) are skipped.
        found = weights[id(layer)]
        return bool(found) or (found is None and bool(layer.trainable_weights))

    def check_used(patterns, field, among, what="layer"):
        missing = unmatched(patterns, among)
        if missing:
            pattern = getattr(missing[0], "__name__", missing[0])
            raise ClusteringError(f"{field} entry {pattern!r} matches no {what}; the model's "
                                  f"layers are: {names}")

    check_used(config.exclude, "exclude", layers)
    chosen = [layer for layer in layers if wanted(layer)]
    if config.include:
        check_used(config.include, "include", layers)
        chosen = [layer for layer in chosen if any(matches(p, layer) for p in config.include)]
        check_used(config.include, "include", chosen,
                   what="layer with weights TFMOT clusters (Conv, Dense, Embedding, RNN, "
                        "attention kernels; not DepthwiseConv2D or BatchNorm)")
    elif config.skip_first_and_last:
        known = [layer for layer in chosen if weights[id(layer)]]
        if known:
            chosen = [layer for layer in chosen
                      if layer is not known[0] and layer is not known[-1]]
    chosen = [layer for layer in chosen if not any(matches(p, layer) for p in config.exclude)]
    unknown = [layer for layer in chosen if weights[id(layer)] is None]
    if unknown:  # every one at once: following the advice once is enough
        names = [layer.name for layer in unknown]
        raise ClusteringError(
            f"{', '.join(describe(layer) for layer in unknown)} "
            f"{'has' if len(unknown) == 1 else 'have'} weights TFMOT does not know how to "
            "cluster: implement tfmot.clustering.keras.ClusterableLayer "
            "(get_clusterable_weights() returning its kernels) in the layer, or leave it alone "
            f"with exclude={names!r} (recipe: cluster: {{exclude: [{', '.join(names)}]}}; "
            f"tfcompress train: --cluster_exclude={','.join(names)})")
    check_used(config.per_layer, "per_layer", chosen,
               what="layer selected for clustering (see include, exclude, skip_first_and_last)")

    def clusters(layer):
        hits = [n for p, n in config.per_layer.items() if matches(p, layer)]
        return hits[0] if hits else config.number_of_clusters

    plan = [(layer, clusters(layer)) for layer in chosen]
    small = [(layer, n) for layer, n in plan if _too_small(layer, weights[id(layer)], n, config)]
    if small and len(small) == len(plan):
        raise ClusteringError(
            f"no layer of {model.name!r} can be clustered: every selected kernel has no more "
            "weights than clusters (" + ", ".join(f"{layer.name}: {n} clusters"
                                                  for layer, n in small)
            + "); lower number_of_clusters (16 is usual)")
    if small:
        warnings.warn(
            "left unclustered, their kernels (per channel with per_channel) have no more "
            "weights than clusters: " + ", ".join(f"{layer.name} ({n} clusters)"
                                                  for layer, n in small), stacklevel=3)
        plan = [item for item in plan if item not in small]
    if not plan:
        raise ClusteringError(f"no layer of {model.name!r} is selected for clustering; the "
                              f"model's layers are: {names}")
    return plan


def is_clustered_model(model):
    """True when `model` holds TFMOT clustering wrappers (not stripped yet)."""
    return any(isinstance(layer, cluster_wrapper.ClusterWeights) for layer in walk(model))


# ----------------------------------------------------------------------- public API


def cluster(model, config=None):
    """Wraps the selected layers of `model` for weight clustering during training.

    The original model is left untouched; the result holds copies of its
    weights and is not compiled. Fine-tune it with a small learning rate
    (e.g. 1e-4 with Adam): the centroids start where the trained weights are.

    Example:
        clustered = cluster(model, ClusteringConfig(16, exclude=["conv1"]))
        clustered.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        clustered.fit(x, y, epochs=1)
        plain = strip_clustering(clustered)

    Args:
        model: a built tf_keras Sequential or functional model.
        config: a ClusteringConfig, a dict of its fields, or None for the
            defaults (16 clusters, kmeans++).

    Returns:
        A new model whose selected layers are `ClusterWeights(layer)`, named
        `cluster_<layer>`.

    Raises:
        ClusteringError: a subclassed, unbuilt or already wrapped model, a
            layer TFMOT cannot cluster, or patterns that match nothing.
        TypeError: a Keras 3 model.
    """
    model = ensure_tf_keras_model(model)
    config = as_config(config, ClusteringConfig, ClusteringError)
    check_wrappable(model, ClusteringError, "clustering", advice="; build it functionally")
    for layer in walk(model):
        if isinstance(layer, cluster_wrapper.ClusterWeights):
            raise ClusteringError(f"model {model.name!r} is already clustered; "
                                  "strip_clustering it first")
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            raise ClusteringError(f"model {model.name!r} is still wrapped for pruning "
                                  f"({layer.name!r}); pruning.strip_pruning it first")
    if quantization.is_qat_model(model):
        raise ClusteringError(f"model {model.name!r} is quantization-aware; cluster before "
                              "QAT and use the cluster_preserving QAT scheme")
    # NaN weights make NaN centroids, and every clustered weight NaN with them.
    check_finite_weights(model, "the model to cluster")
    try:
        # Copying rebuilds layers from their configs; a Lambda layer of this
        # in-memory model is the caller's own code, so safe mode is off for it.
        with safe_mode_scope(False):
            clone = keras.models.clone_model(model)
    except NotImplementedError as e:  # a custom layer without get_config
        raise ClusteringError(f"cannot copy model {model.name!r} to cluster it: {e}; give "
                              "custom layers a get_config() (saving the model needs it too)") from e
    clone.set_weights(model.get_weights())
    plan = {id(layer): clusters for layer, clusters in _select(clone, config)}

    def wrap(layer):
        if is_graph_model(layer):
            return keras.models.clone_model(layer, clone_function=wrap)
        clusters = plan.get(id(layer))
        if clusters is None:
            return layer
        if isinstance(layer, keras.layers.Conv2D):
            # Directly: cluster_weights' size check would skip it (see the
            # module docstring); ours ran in _select.
            return cluster_wrapper.ClusterWeights(
                layer, clusters, config.centroid_init, config.preserve_sparsity,
                cluster_per_channel=config.per_channel)
        # cluster_weights picks the RNN / attention wrappers where needed.
        return experimental_cluster.cluster_weights(
            layer, clusters, config.centroid_init, preserve_sparsity=config.preserve_sparsity)

    return keras.models.clone_model(clone, clone_function=wrap)


def strip_clustering(model):
    """Removes the clustering wrappers: a plain model whose kernels are the centroids.

    Same layer names, order and weight shapes as the model before `cluster`;
    shares no variables with `model` (TFMOT's strip_clustering keeps the
    unclustered layers' objects) and is not compiled.

    Example:
        plain = strip_clustering(clustered)
        convert(plain, "int8_full", representative_data=calibration)
    """
    model = ensure_tf_keras_model(model)
    stripped = tfmot.clustering.keras.strip_clustering(model)
    with safe_mode_scope(False):  # the caller's own Lambda layers, as in cluster
        plain = keras.models.clone_model(stripped)
    plain.set_weights(stripped.get_weights())
    return plain


# --------------------------------------------------------------------------- report


def _row(layer, kind, weight, values):
    values = np.asarray(values)
    per_channel = (max(len(np.unique(values[..., c])) for c in range(values.shape[-1]))
                   if values.ndim >= 2 else None)
    return {"layer": layer, "type": kind, "weight": weight, "shape": list(values.shape),
            "size": int(values.size), "unique": int(len(np.unique(values))),
            "max_unique_per_channel": per_channel}


def _is_tflite(model):
    return isinstance(model, (bytes, bytearray)) or (
        isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".tflite"))


def unique_values_report(model):
    """Counts the distinct values of every kernel TFMOT clusters.

    Works on a plain (or stripped) model, a clustered one (read through
    `strip_clustering`), a QAT model (the fake-quantized kernels it computes
    with, `quantization.quantized_kernels`) and a `.tflite` file or its bytes
    (the stored int8 or float kernels, `quantization.tflite_kernels`; in a
    per-channel int8 file compare `max_unique_per_channel`).

    Example:
        report = unique_values_report(strip_clustering(clustered))
        report["kernels"][0]  # {"layer": "conv2", "type": "Conv2D", "weight": "kernel",
                              #  "shape": [3, 3, 16, 32], "size": 4608, "unique": 16,
                              #  "max_unique_per_channel": 16}

    Returns:
        {"source": "keras" | "qat" | "tflite", "kernels": [one dict a kernel],
         "max_unique": the largest "unique"}; plain JSON types. Channels are
        the last axis (output channels of Conv2D/Dense kernels).
    """
    if _is_tflite(model):
        source = "tflite"
        rows = [_row(k["layer"], k["op"], "kernel", k["values"])
                for k in quantization.tflite_kernels(model)]
    else:
        model = ensure_tf_keras_model(model)
        if is_clustered_model(model):
            model = strip_clustering(model)
        if quantization.is_qat_model(model):
            source = "qat"
            rows = [_row(k["layer"], k["type"], k["weight"], k["values"])
                    for k in quantization.quantized_kernels(model)]
        else:
            source = "keras"
            rows = [_row(layer.name, type(layer).__name__, name, variable.numpy())
                    for layer in walk(model) for name, variable in
                    (_clusterable_weights(layer) or [])]
    return {"source": source, "kernels": rows,
            "max_unique": max((row["unique"] for row in rows), default=0)}


def format_unique_values_report(report):
    """The report as a text table, one row a kernel.

    Example:
        print(format_unique_values_report(unique_values_report(model)))
    """
    header = ("layer", "type", "weight", "shape", "size", "unique", "max/channel")
    lines = [header] + [
        (row["layer"], row["type"], row["weight"], "x".join(map(str, row["shape"])),
         f"{row['size']:,}", f"{row['unique']:,}",
         "-" if row["max_unique_per_channel"] is None else f"{row['max_unique_per_channel']:,}")
        for row in report["kernels"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = (False, False, False, False, True, True, True)
    text = ["  ".join(cell.rjust(w) if r else cell.ljust(w)
                      for cell, w, r in zip(line, widths, right)).rstrip() for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.append(f"({report['source']} kernels; channels are the last axis)")
    return "\n".join(text)
