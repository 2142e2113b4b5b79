"""Every private TFMOT and tf_keras name tfcompress uses, in one place.

Checked on tensorflow-model-optimization 0.8.1 and tf_keras 2.21.0 (the versions
setup.py pins). Public `tfmot.*` names are imported by their public paths in the
technique modules; what is here has no public name. On another version a name
that moved fails with a `CompatError` that says which name, which version was
checked and how to get it back; a version that differs but still has every name
only warns once.

Example:
    from tfcompress._compat import SafeModeScope, is_graph_network
    with SafeModeScope(True):
        ...
    from tfcompress._compat import prune_registry   # a private TFMOT module, imported lazily
"""

import importlib
import warnings

from tfcompress.errors import TfcompressError

CHECKED = {"tensorflow-model-optimization": "0.8.1", "tf_keras": "2.21.0"}
_TFMOT = "tensorflow_model_optimization.python.core."

# Private TFMOT modules (no public `tfmot.*` name), imported on first use so that
# `import tfcompress.saving` does not import TFMOT.
_TFMOT_MODULES = {
    "prune_registry": "sparsity.keras.prune_registry",
    "pruning_wrapper": "sparsity.keras.pruning_wrapper",
    "pruning_schedule": "sparsity.keras.pruning_schedule",
    "cluster_wrapper": "clustering.keras.cluster_wrapper",
    "clustering_registry": "clustering.keras.clustering_registry",
    "experimental_cluster": "clustering.keras.experimental.cluster",
    "quantize_annotate": "quantization.keras.quantize_annotate",
    "quantize_aware_activation": "quantization.keras.quantize_aware_activation",
    "quantize_layer": "quantization.keras.quantize_layer",
    "quantize_utils": "quantization.keras.utils",
    "cluster_preserve_quantize_registry":
        "quantization.keras.collab_opts.cluster_preserve.cluster_preserve_quantize_registry",
    "prune_preserve_quantize_registry":
        "quantization.keras.collab_opts.prune_preserve.prune_preserve_quantize_registry",
    "default_8bit_quantize_configs": "quantization.keras.default_8bit.default_8bit_quantize_configs",
    "default_8bit_quantize_registry":
        "quantization.keras.default_8bit.default_8bit_quantize_registry",
    # The public tfmot...default_8bit_transforms lacks the Dense + BatchNorm transforms.
    "default_8bit_transforms": "quantization.keras.default_8bit.default_8bit_transforms",
}


class CompatError(TfcompressError, RuntimeError):
    """A private TFMOT/tf_keras name tfcompress relies on is missing in this version."""


def _versions():
    from importlib import metadata
    out = {}
    for dist in CHECKED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _missing(what, dist, error):
    installed = _versions().get(dist)
    return CompatError(
        f"{what} is not in {dist} {installed}: tfcompress was checked on {dist} "
        f"{CHECKED[dist]} ({type(error).__name__}: {error}); reinstall the pinned version "
        f"with `pip install -e .` (or `make venv`)")


_warned = set()


def _warn_version(dist):
    installed = _versions().get(dist)
    if installed and installed != CHECKED[dist] and dist not in _warned:
        _warned.add(dist)
        warnings.warn(f"tfcompress was checked on {dist} {CHECKED[dist]}; {installed} is "
                      "installed: its private names are all present, results may differ",
                      stacklevel=3)


def __getattr__(name):
    """A private TFMOT module from `_TFMOT_MODULES`, imported on first use."""
    if name not in _TFMOT_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tfcompress.keras import tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TFMOT)
    path = _TFMOT + _TFMOT_MODULES[name]
    try:
        module = importlib.import_module(path)
    except ImportError as e:
        raise _missing(f"module {path}", "tensorflow-model-optimization", e) from None
    _warn_version("tensorflow-model-optimization")
    globals()[name] = module
    return module


# ----------------------------------------------------------------------------- tf_keras

def _tf_keras(module, name):
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise _missing(f"{module}.{name}", "tf_keras", e) from None
    _warn_version("tf_keras")
    return value


def safe_mode_scope(enabled):
    """tf_keras's `SafeModeScope(enabled)`: refuses Lambda bytecode while enabled."""
    return _tf_keras("tf_keras.src.saving.serialization_lib", "SafeModeScope")(enabled)


def revived_layer_class():
    """The class tf_keras gives layers of a SavedModel it cannot rebuild from config."""
    return _tf_keras("tf_keras.src.saving.legacy.saved_model.load", "RevivedLayer")


def _attribute(obj, name, default=AttributeError):
    try:
        return getattr(obj, name)
    except AttributeError as e:
        if default is not AttributeError:
            return default
        raise _missing(f"{type(obj).__name__}.{name}", "tf_keras", e) from None


def is_graph_network(model):
    """True for a functional model (one with a layer graph); False for a subclassed one."""
    return bool(_attribute(model, "_is_graph_network", False))


def is_compiled(model):
    """Whether `compile` was called on `model`."""
    return bool(_attribute(model, "_is_compiled"))


def nodes_by_depth(model):
    """{depth: [node]} of a functional model (depth 0 produces the outputs)."""
    return _attribute(model, "_nodes_by_depth")


def input_layers(model):
    """The InputLayer of each of a functional model's inputs, in order."""
    return _attribute(model, "_input_layers")


def flatten_layers(model):
    """`model` and every layer inside it, nested models included."""
    return _attribute(model, "_flatten_layers")(include_self=True, recursive=True)


def initial_epoch_from_backup(model, steps_per_epoch):
    """The epoch `BackupAndRestore` resumes `model` at (the counter Keras's `fit` uses)."""
    epoch, _ = _attribute(model, "_maybe_load_initial_counters_from_ckpt")(steps_per_epoch, 0)
    return epoch


def quantizer_weight_vars(layer):
    """[(weight, quantizer, quantizer variables)] of a TFMOT QuantizeWrapper; [] otherwise."""
    return list(getattr(layer, "_weight_vars", []))


def inbound_nodes(layer):
    """The nodes that call `layer`, one per call (what TFMOT's layout transforms read)."""
    return _attribute(layer, "_inbound_nodes")


def own_trainable_weights(layer):
    """The list behind `layer.trainable_weights`, without its sublayers' ones."""
    return _attribute(layer, "_trainable_weights")


def set_own_trainable_weights(layer, variables):
    """Replaces the list `own_trainable_weights(layer)` returns."""
    _attribute(layer, "_trainable_weights")  # a version without it fails here, clearly
    layer._trainable_weights = variables


def _tfmot_attribute(obj, name):
    try:
        return getattr(obj, name)
    except AttributeError as e:
        owner = getattr(obj, "__name__", type(obj).__name__)
        raise _missing(f"{owner}.{name}", "tensorflow-model-optimization", e) from None


def quantizable_activation_names():
    """Names of the activations TFMOT's QAT quantizes inside a layer (QuantizeAwareActivation)."""
    cls = __getattr__("quantize_aware_activation").QuantizeAwareActivation
    return frozenset().union(*(_tfmot_attribute(cls, name) for name in (
        "_PRE_QUANT_ACTIVATIONS", "_POST_QUANT_ACTIVATIONS", "_NO_QUANTIZE_ACTIVATIONS")))


def preserving_weight_quantizers(registry):
    """{QuantizeConfig class name: weight quantizer} of a TFMOT prune/cluster-preserving
    QAT registry; each registry makes quantizers of its own."""
    return _tfmot_attribute(registry, "_config_quantizer_map")


def preserved_weight_attrs(registry):
    """{layer class: weight attribute names} whose weights a TFMOT prune/cluster-preserving
    QAT registry preserves."""
    return {cls: config.weight_attrs
            for cls, config in _tfmot_attribute(registry, "_LAYERS_CONFIG_MAP").items()}


def nested_inputs(model):
    """A functional model's inputs in the structure it was built with (list, dict, tensor)."""
    return _attribute(model, "_nested_inputs")


def nested_outputs(model):
    """A functional model's outputs in the structure it was built with."""
    return _attribute(model, "_nested_outputs")


def keras_history_layer(tensor):
    """The layer whose call made the symbolic tensor `tensor`."""
    return _attribute(tensor, "_keras_history").layer
