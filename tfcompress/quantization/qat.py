"""The QAT entry points: `quantize` a model, tell a QAT model (`is_qat_model`), load one.

`quantize` checks the model, selects its layers (`selection`), annotates them
and hands them to TFMOT's `quantize_apply` with our `schemes.Scheme`, then
applies the `repairs`; `load_qat_model` loads a saved QAT model with the same
classes and repairs.

Example:
    qat = quantize(model, QATConfig(scheme="prune_preserving"))
    tfcompress.save_model(qat, "run/qat.keras")
    qat = load_qat_model("run/qat.keras")
"""

import contextlib

import numpy as np

from tfcompress.checks import as_config, check_finite_weights, check_wrappable
from tfcompress.keras import ensure_tf_keras_model, keras
from tfcompress.quantization import repairs, schemes
from tfcompress.quantization.config import (CLUSTER_SCHEMES, QATConfig, QuantizationError,
                                            registered_config_classes)
from tfcompress.quantization.selection import select, warn_float_folds
from tfcompress.saving import load_model
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)
from tfcompress._compat import (  # noqa: E402
    cluster_wrapper, preserved_weight_attrs, pruning_wrapper, quantize_annotate, quantize_layer,
    safe_mode_scope)


def is_qat_model(model):
    """True when `model` holds TFMOT quantization wrappers (`quantize` was applied)."""
    return any(isinstance(layer, (tfmot.quantization.keras.QuantizeWrapper,
                                  quantize_layer.QuantizeLayer, quantize_annotate.QuantizeAnnotate))
               for layer in model.layers)


def _check_model(model):
    check_wrappable(model, QuantizationError, "quantizing", what="quantize the layers",
                    advice="; build it functionally")
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
    preserved = preserved_weight_attrs(schemes.preserve_registry(config.scheme))
    kernels = [weight.numpy() for layer in model.layers
               if type(layer) in preserved
               and not isinstance(layer, keras.layers.DepthwiseConv2D)
               for weight in (getattr(layer, name) for name in preserved[type(layer)])]
    if config.scheme.startswith("prune") and not any(np.any(k == 0) for k in kernels):
        raise QuantizationError(
            f"scheme {config.scheme!r} preserves zero weights, but no Conv2D or Dense kernel "
            f"of {model.name!r} has any: prune it and strip_pruning it first, or use "
            "scheme='default'")
    if config.scheme in CLUSTER_SCHEMES:
        many = [k for k in kernels if len(np.unique(k)) > 1024]
        if kernels and len(many) == len(kernels):
            raise QuantizationError(
                f"scheme {config.scheme!r} preserves clusters, but every Conv2D and Dense "
                f"kernel of {model.name!r} has more than 1,024 unique values (TFMOT's limit "
                "for a clustered kernel): cluster it and strip_clustering it first, or use "
                "scheme='default'")


def _scope_objects():
    return {**schemes.scope_objects(), **registered_config_classes()}


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
    config = as_config(config, QATConfig, QuantizationError)
    _check_model(model)
    # NaN weights would give NaN quantization ranges: nothing converts sensibly.
    check_finite_weights(model, "the model to quantize")
    scheme = schemes.Scheme(config.scheme, config.per_tensor)
    selected = select(model, config, scheme.get_quantize_registry())
    _check_something_to_preserve(model, config)
    warn_float_folds(selected, config)
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
        granularity = (repairs.cluster_granularity_from_weights()
                       if config.scheme in CLUSTER_SCHEMES else contextlib.nullcontext())
        # quantize_apply rebuilds every layer from its config; a Lambda layer of
        # this in-memory model is the caller's own code, not a file's, so safe
        # mode (which refuses to rebuild it) is off for the copy.
        with tfmot.quantization.keras.quantize_scope(objects), granularity, \
                safe_mode_scope(False):
            annotated = keras.models.clone_model(model, clone_function=annotate)
            qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
        repairs.tidy_wrapper_variables(qat)
        schemes.record_clusters(qat)
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


def load_qat_model(path, custom_objects=None, allow_unsafe=False, compile=True):
    """Loads a QAT model saved with `tfcompress.save_model` (`.keras` or `.h5`).

    `tfcompress.load_model` inside TFMOT's `quantize_scope`, with three
    repairs: TFMOT's QuantizeLayer is marked built (`repairs.QuantizeLayer`),
    so a `.keras` file does not build it twice; cluster-preserving layers are
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
    objects = {**_scope_objects(), "QuantizeLayer": repairs.QuantizeLayer,
               **(custom_objects or {})}
    # A scope of our own inside TFMOT's: its QuantizeLayer would win otherwise.
    with tfmot.quantization.keras.quantize_scope(), keras.utils.custom_object_scope(objects), \
            repairs.cluster_granularity_from_weights():
        model = load_model(path, allow_unsafe=allow_unsafe, custom_objects=objects,
                           compile=compile)
    repairs.restore_masks(model)
    return model
