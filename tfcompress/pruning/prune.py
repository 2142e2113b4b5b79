"""`prune`, `strip_pruning`, `load_pruned_model`: the pruning entry points, and the config.

`PruningConfig` says what to prune, how far and in which pattern; `prune`
selects the layers (`tfcompress.layer_selection` patterns, TFMOT's registry
for what it can prune) and wraps each in `PruneLowMagnitude`. See
`tfcompress.pruning` for the whole flow.

Example:
    pruned = prune(model, PruningConfig(0.8), steps_per_epoch=469, total_epochs=4)
    pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(x, y, batch_size=128, epochs=4, callbacks=pruning_callbacks())
    final = strip_pruning(pruned)
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from tfcompress import schedules
from tfcompress.checks import as_config, check_finite_weights, check_wrappable
from tfcompress.errors import TfcompressError
from tfcompress.keras import ensure_tf_keras_model, keras, tf
from tfcompress.layer_selection import (check_patterns_or_classes, describe, is_graph_model,
                                        matches, unmatched, walk)
from tfcompress.pruning.wrapper import (CUSTOM_OBJECTS, PruneLowMagnitude, is_pruned_model,
                                        parse_structure, prunable_weights, start_step_counters,
                                        wrappers)
from tfcompress.saving import load_model
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress.keras)

__all__ = ["PruningError", "PruningConfig", "prune", "pruning_callbacks", "strip_pruning",
           "load_pruned_model"]


class PruningError(TfcompressError, ValueError):
    """A model or layer cannot be pruned as asked; the message says what to do."""


_POLICIES = {"xnnpack": tfmot.sparsity.keras.PruneForLatencyOnXNNPack}


def _check_patterns(patterns, name):
    """Validates layer patterns: names/regexes (str or compiled) or layer classes."""
    return check_patterns_or_classes(patterns, name, ValueError)


@dataclasses.dataclass
class PruningConfig:
    """What to prune, how far, and in which pattern.

    Layers are matched by name (a string is a regular expression matched
    against the whole layer name, so a plain name matches itself), by class
    name ("Dense") or by class (`keras.layers.Conv2D`).

    Example:
        PruningConfig(target_sparsity=0.8)                    # polynomial, 0 -> 75% of training
        PruningConfig(structure="2:4")                        # 2 zeros in every 4 weights
        PruningConfig(0.9, exclude=["classifier"], per_layer={"conv3": 0.7})
        PruningConfig(0.8, include=["Dense"], structure=(1, 4))

    Args:
        target_sparsity: fraction of each pruned layer's weights set to zero,
            in [0, 1). Default 0.5 (TFMOT's default), or M/N for an "M:N"
            structure, which fixes it.
        schedule: a `tfcompress.schedules` name, dict or object. Default
            "polynomial" (Zhu & Gupta's cubic ramp over the first 75% of
            training; give `prune` steps_per_epoch and total_epochs). A
            schedule without a sparsity takes `target_sparsity`. Must be unset
            for "M:N": TFMOT computes that mask once, at the first training
            step, whatever the schedule (pruning_impl.py
            `conditional_mask_update`).
        structure: None (unstructured); "M:N" such as "2:4", M zeros in every
            N consecutive weights along the input-channel axis (TFMOT's
            `sparsity_m_by_n`; Conv2D and Dense); or a block (height, width)
            or "HxW" such as (1, 4), whole blocks of a 2-D kernel pruned
            together (TFMOT's `block_size`; Dense only).
        include: patterns of the layers to prune; None means every layer with
            weights TFMOT can prune (kernels of Conv, Dense, ...).
        exclude: patterns of layers to leave dense; wins over `include`.
        skip_first_and_last: leave the model's first and last prunable layers
            (the stem convolution and the classifier) dense. Default True, the
            common practice and the accuracy-safe choice: the stem sees raw
            pixels through few weights, and its 1 or 3 input channels leave
            2:4 nothing or little to prune (TFMOT pads each group along that
            axis to 4); the classifier maps straight to the logits. Measured
            on Fashion-MNIST (small_cnn width 8 trained 3 epochs to 88.0%,
            then 2 epochs of pruning; one seed), at 0.8 / 0.9: also pruning
            the 72-weight stem cost 1.7 / 3.5 points of accuracy; also
            pruning the classifier cost 0.9 / 1.9 points, but that classifier
            holds 73% of the weights, so total sparsity rose from 21% / 24%
            to 80% / 90%. When size matters more, set it False and exclude
            the stem by name; models ending in global pooling have small
            classifiers anyway. Only applies when `include` is None.
        per_layer: {pattern: sparsity} overrides for selected layers (the
            first matching pattern wins).
        policy: None, "xnnpack" (`tfmot.sparsity.keras.PruneForLatencyOnXNNPack`:
            prune only 1x1 convolutions of a model XNNPACK's sparse inference
            can run; note that XNNPACK's sparse kernels are float-only and off
            on x86 with AVX, so measure before claiming speed), or a TFMOT
            `PruningPolicy`.
        block_pooling: "AVG" or "MAX", how a block's magnitude is measured.

    Raises:
        ValueError: naming the field that is wrong.
    """

    target_sparsity: Optional[float] = None
    schedule: Any = None
    structure: Any = None
    include: Optional[Sequence[Any]] = None
    exclude: Sequence[Any] = ()
    skip_first_and_last: bool = True
    per_layer: Mapping[Any, float] = dataclasses.field(default_factory=dict)
    policy: Any = None
    block_pooling: str = "AVG"

    def __post_init__(self):
        # Fields keep what the user gave (normalised in form only), so that
        # dataclasses.replace(config, target_sparsity=...) works; the
        # effective values are the properties below.
        self.structure = parse_structure(self.structure)[0]
        self.target_sparsity = schedules.check_sparsity(self.target_sparsity, "target_sparsity")
        self.schedule = schedules.get(self.schedule)
        if self.m_by_n:
            implied = self.m_by_n[0] / self.m_by_n[1]
            if self.target_sparsity is not None and abs(self.target_sparsity - implied) > 1e-9:
                raise ValueError(f"target_sparsity {self.target_sparsity} contradicts structure "
                                 f"{self.structure!r}, which fixes the sparsity at {implied:g}")
            if self.schedule is not None:
                raise ValueError(f"schedule must be unset with structure {self.structure!r}: "
                                 "TFMOT computes an M:N mask once, at the first training step, "
                                 "and ignores the schedule")
            if self.per_layer:
                raise ValueError(f"per_layer cannot change the sparsity of structure "
                                 f"{self.structure!r}, which fixes it at {implied:g}")
        elif self.schedule is not None and None not in (self.schedule.sparsity,
                                                        self.target_sparsity) \
                and self.schedule.sparsity != self.target_sparsity:
            raise ValueError(f"target_sparsity {self.target_sparsity} contradicts the "
                             f"schedule's sparsity {self.schedule.sparsity}; set only one")
        if self.include is not None:
            self.include = _check_patterns(self.include, "include")
        self.exclude = _check_patterns(self.exclude, "exclude")
        self.per_layer = dict(self.per_layer)
        _check_patterns(list(self.per_layer), "per_layer")
        for pattern, sparsity in self.per_layer.items():
            schedules.check_sparsity(sparsity, f"per_layer[{pattern!r}]", allow_none=False)
        if isinstance(self.policy, str):
            if self.policy not in _POLICIES:
                raise ValueError(f"unknown policy {self.policy!r}; choose None or "
                                 f"{', '.join(map(repr, _POLICIES))}")
        elif self.policy is not None and not isinstance(self.policy,
                                                        tfmot.sparsity.keras.PruningPolicy):
            raise ValueError(f"policy must be None, 'xnnpack' or a TFMOT PruningPolicy, got "
                             f"{self.policy!r}")
        if self.block_pooling not in ("AVG", "MAX"):
            raise ValueError(f"block_pooling must be 'AVG' or 'MAX', got {self.block_pooling!r}")

    @property
    def m_by_n(self):
        """(M, N) for an "M:N" structure, else None."""
        return parse_structure(self.structure)[1]

    @property
    def block_size(self):
        """(height, width) for a block structure, else None."""
        return parse_structure(self.structure)[2]

    @property
    def sparsity(self):
        """The sparsity every selected layer ends at, unless per_layer overrides it."""
        if self.m_by_n:
            return self.m_by_n[0] / self.m_by_n[1]
        if self.schedule is not None and self.schedule.sparsity is not None:
            return self.schedule.sparsity
        return 0.5 if self.target_sparsity is None else self.target_sparsity

    def layer_schedule(self, sparsity=None):
        """The tfcompress schedule of a layer pruned to `sparsity` (default: `self.sparsity`)."""
        schedule = self.schedule or schedules.PolynomialDecay()
        return schedule.with_sparsity(self.sparsity if sparsity is None else sparsity)


# ------------------------------------------------------------------------- selection


def _cannot_prune(layers):
    """One error for every layer TFMOT cannot prune: following its advice once is enough."""
    names = [layer.name for layer in layers]
    return PruningError(
        f"{', '.join(describe(layer) for layer in layers)} "
        f"{'has' if len(layers) == 1 else 'have'} weights TFMOT does not know how to prune: "
        "implement tfmot.sparsity.keras.PrunableLayer (a get_prunable_weights() method "
        f"returning its kernels) in the layer, or leave it dense with exclude={names!r} "
        f"(recipe: prune: {{exclude: [{', '.join(names)}]}}; tfcompress train: "
        f"--prune_exclude={','.join(names)})")


def _select(model, config):
    """The layers to wrap, each with its sparsity: [(layer, sparsity)]."""
    layers = list(walk(model))
    names = ", ".join(layer.name for layer in layers)
    prunable = {id(layer): prunable_weights(layer) for layer in layers}

    def wanted(layer):
        # Prunable, or trainable weights TFMOT does not know (an error if
        # chosen). Unknown layers with only statistics (Normalization) are skipped.
        weights = prunable[id(layer)]
        return bool(weights) or (weights is None and bool(layer.trainable_weights))

    def check_used(patterns, field, among, what="layer"):
        missing = unmatched(patterns, among)
        if missing:
            raise PruningError(f"{field} entry {missing[0]!r} matches no {what}; the model's "
                               f"layers are: {names}")

    check_used(config.exclude, "exclude", layers)
    if config.include is None:
        chosen = [layer for layer in layers if wanted(layer)]
        known = [layer for layer in chosen if prunable[id(layer)]]
        if config.skip_first_and_last and known:
            chosen = [layer for layer in chosen
                      if layer is not known[0] and layer is not known[-1]]
    else:
        check_used(config.include, "include", layers)
        for layer in layers:
            if prunable[id(layer)] == [] and layer.name in config.include:
                raise PruningError(
                    f"{describe(layer)} has no weights TFMOT can prune (it prunes the kernels "
                    "of Conv, Dense, ... layers); remove it from include")
        chosen = [layer for layer in layers
                  if wanted(layer) and any(matches(p, layer) for p in config.include)]
        check_used(config.include, "include", chosen, what="layer with weights TFMOT can prune")
    chosen = [layer for layer in chosen if not any(matches(p, layer) for p in config.exclude)]
    if config.policy is not None:
        chosen = [layer for layer in chosen if _policy(config).allow_pruning(layer)]
    unknown = [layer for layer in chosen if prunable[id(layer)] is None]
    if unknown:
        raise _cannot_prune(unknown)
    for layer in chosen:
        _check_structure(layer, prunable[id(layer)], config)
    if not chosen:
        raise PruningError(f"no layer of {model.name!r} is selected for pruning; the model's "
                           f"layers are: {names}")
    check_used(config.per_layer, "per_layer", chosen,
               what="layer selected for pruning (see include, exclude and skip_first_and_last)")

    overrides = [override(config, layer) for layer in chosen]
    return [(layer, config.sparsity if value is None else value)
            for layer, value in zip(chosen, overrides)]


def override(config, layer):
    """The sparsity `config.per_layer` sets for `layer` (the first matching pattern), or None."""
    hits = [s for p, s in config.per_layer.items() if matches(p, layer)]
    return hits[0] if hits else None


def select_layers(model, config):
    """The layers `prune(model, config)` would wrap, each with its sparsity: [(layer, sparsity)]."""
    return _select(ensure_tf_keras_model(model), as_config(config, PruningConfig, PruningError))


def _check_structure(layer, weights, config):
    # TFMOT fails late and without the layer's name: M:N at the first training
    # step (pruning_utils.weights_rearrange), blocks when the wrapper is built.
    ranks = {len(weight.shape) for weight in weights}
    if config.m_by_n and not ranks <= {2, 4}:
        raise PruningError(f"{describe(layer)} has {sorted(ranks)}-D kernels; TFMOT's "
                           f"{config.structure} pruning handles Conv2D (4-D) and Dense (2-D) "
                           f"kernels only: exclude it")
    if config.block_size and ranks != {2}:
        raise PruningError(f"{describe(layer)} has {sorted(ranks)}-D kernels; block "
                           f"{config.structure} pruning needs 2-D kernels (Dense): exclude it, "
                           "or include only Dense layers (include=['Dense'])")
    if not config.block_size:
        return
    for weight in weights:
        # pruning_utils.factorized_pool squeezes the pooled kernel, so one
        # block across (or a size-1 axis) leaves a 1-D mask that expand_tensor
        # rejects at the first training step.
        if any(-(-size // block) < 2 for size, block in zip(weight.shape, config.block_size)):
            raise PruningError(f"{describe(layer)}: its kernel {tuple(weight.shape)} is less "
                               f"than two {config.structure} blocks along an axis, which TFMOT's "
                               "block pruning cannot handle; exclude it or use a smaller block")


def _policy(config):
    policy = config.policy
    return _POLICIES[policy]() if isinstance(policy, str) else policy


def _zero_fraction(layer):
    """The fraction of `layer`'s prunable weights that are exactly zero (an earlier pruning)."""
    weights = [weight.numpy() for weight in prunable_weights(layer) or []]
    size = sum(weight.size for weight in weights)
    return sum(int((weight == 0).sum()) for weight in weights) / size if size else 0.0


def _wrapper_params(config, sparsity, steps_per_epoch, total_epochs, start=0.0):
    if config.m_by_n:
        # Ignored by TFMOT for M:N (the mask is made at step 1); stated anyway
        # so that PruningSummaries logs the truth.
        schedule = tfmot.sparsity.keras.ConstantSparsity(
            config.sparsity, begin_step=1, end_step=1, frequency=1)
    else:
        schedule = config.layer_schedule(sparsity)
        if isinstance(schedule, schedules.PolynomialDecay) and start > schedule.initial_sparsity:
            # An already sparse layer (an earlier pruning step) continues from
            # its sparsity: a ramp from 0 would let its pruned weights grow back.
            schedule = schedule.from_config(dict(schedule.get_config(),
                                                 initial_sparsity=min(start, sparsity)))
        schedule = schedule.to_tfmot(steps_per_epoch, total_epochs)
    return {"pruning_schedule": schedule, "block_size": config.block_size or (1, 1),
            "block_pooling_type": config.block_pooling, "sparsity_m_by_n": config.m_by_n}


# ----------------------------------------------------------------------- public API


def prune(model, config=None, *, steps_per_epoch=None, total_epochs=None):
    """Wraps the selected layers of `model` for magnitude pruning during training.

    The original model is left untouched (TFMOT's `prune_low_magnitude` shares
    the original's layers, so training the pruned model would change the
    baseline too); the result holds copies of its weights and is not
    compiled. A layer that is already sparse (an earlier pruning step)
    continues from there: a polynomial ramp starts at its sparsity, and its
    zero weights stay masked until the schedule's first mask update.

    Example:
        pruned = prune(model, PruningConfig(0.8), steps_per_epoch=469, total_epochs=4)
        pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        pruned.fit(x, y, batch_size=128, epochs=4, callbacks=pruning_callbacks())
        final = strip_pruning(pruned)

    Args:
        model: a tf_keras Sequential or functional model, built.
        config: a `PruningConfig`, a dict of its fields, or None for the
            defaults.
        steps_per_epoch: batches per epoch, to convert a schedule stated in
            epochs or fractions of training into steps.
        total_epochs: epochs of the training run (for fractions).

    Returns:
        A new tf_keras model whose selected layers are
        `PruneLowMagnitude(layer)`, named `prune_low_magnitude_<layer>`.

    Raises:
        PruningError: a subclassed or unbuilt model, an already pruned model, a
            requested layer TFMOT cannot prune, a pattern that matches nothing,
            or a structure a layer cannot hold; the message names the layer and
            what to do.
        ValueError: a bad config, or a schedule that needs steps_per_epoch /
            total_epochs.
        TypeError: a Keras 3 model.
    """
    model = ensure_tf_keras_model(model)
    config = as_config(config, PruningConfig, PruningError)
    check_wrappable(model, PruningError, "pruning", advice=(
        ". Build it functionally, or wrap its layers inside the class with "
        "tfmot.sparsity.keras.prune_low_magnitude(layer, ...)"))
    if is_pruned_model(model):
        raise PruningError(f"model {model.name!r} is already pruned; strip_pruning it first")
    # NaN magnitudes would make TFMOT's thresholds NaN and the masks meaningless.
    check_finite_weights(model, "the model to prune")
    # Detach from the caller's model first: clone_function returns the very
    # layer objects it is given, which would otherwise be shared.
    try:
        clone = keras.models.clone_model(model)
    except NotImplementedError as e:  # a custom layer without get_config
        raise PruningError(f"cannot copy model {model.name!r} to prune it: {e}; give custom "
                           "layers a get_config() (saving the model needs it too)") from e
    clone.set_weights(model.get_weights())
    if config.policy is not None:
        try:
            _policy(config).ensure_model_supports_pruning(clone)
        except ValueError as e:
            raise PruningError(
                f"model {model.name!r} does not suit the {config.policy!r} pruning policy: {e}. "
                "XNNPACK's sparse inference needs a 3x3 stride-2 VALID stem convolution on 3 "
                "channels after ZeroPadding2D(1) and a GlobalAveragePooling2D(keepdims=True) "
                "head; use policy=None otherwise") from e
    plan = {id(layer): _wrapper_params(config, sparsity, steps_per_epoch, total_epochs,
                                       _zero_fraction(layer))
            for layer, sparsity in _select(clone, config)}

    def wrap(layer):
        if is_graph_model(layer):
            return keras.models.clone_model(layer, clone_function=wrap)
        params = plan.get(id(layer))
        return layer if params is None else PruneLowMagnitude(layer, **params)

    pruned = keras.models.clone_model(clone, clone_function=wrap)
    if not config.m_by_n:
        # TFMOT's masks start all ones until the schedule's first update
        # (`frequency` steps in); weights an earlier pruning zeroed stay masked
        # (a dense layer's mask stays all ones).
        for layer in wrappers(pruned):
            for weight, mask, _ in layer.pruning_vars:
                mask.assign(tf.cast(tf.not_equal(weight, 0), mask.dtype))
    start_step_counters(pruned)
    return pruned


def pruning_callbacks(log_dir=None):
    """The callbacks to train a pruned model with.

    `UpdatePruningStep` re-applies the masks at every epoch end, so that
    checkpoints hold exactly sparse weights (training itself works without
    it, see the module docstring); `PruningSummaries` writes per-layer
    sparsity and thresholds for TensorBoard under `log_dir`.

    Example:
        model.fit(x, y, epochs=3, callbacks=pruning_callbacks("runs/prune/logs"))
    """
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    if log_dir is not None:
        callbacks.append(tfmot.sparsity.keras.PruningSummaries(log_dir=str(log_dir)))
    return callbacks


def strip_pruning(model):
    """Removes the pruning wrappers: a plain tf_keras model with the pruned weights zero.

    Same layer names, order and weight shapes as the model before `prune`.
    Unlike TFMOT's `strip_pruning` the masks are applied first: after the last
    optimizer step the pruned weights hold small non-zero values again until
    the next forward pass or UpdatePruningStep's epoch-end re-mask. The
    result shares no variables with `model` and is not compiled.

    Example:
        final = strip_pruning(pruned)
        tflite_bytes = convert(final, "float32")

    Raises:
        TypeError: not a tf_keras model.
    """
    model = ensure_tf_keras_model(model)
    masked = {weight.ref(): (weight * mask).numpy()
              for layer in wrappers(model) for weight, mask, _ in layer.pruning_vars}
    stripped = tfmot.sparsity.keras.strip_pruning(model)  # shares model's layers
    plain = keras.models.clone_model(stripped)
    plain.set_weights([masked.get(weight.ref(), weight.numpy()) for weight in stripped.weights])
    return plain


def load_pruned_model(path, allow_unsafe=False, compile=True):
    """Loads a model saved mid-pruning (or after stripping) to continue training.

    `tfcompress.load_model` with the pruning wrapper as a custom object; the
    step counters, masks and optimizer state come back, so `fit` continues
    where it stopped (pass `initial_epoch` to keep epoch numbers).

    Example:
        tfcompress.save_model(pruned, "run/pruned.keras")
        pruned = load_pruned_model("run/pruned.keras")
        pruned.fit(x, y, initial_epoch=1, epochs=3, callbacks=pruning_callbacks())

    Raises:
        ModelLoadError: naming the file and the reason.
    """
    model = load_model(path, allow_unsafe=allow_unsafe, custom_objects=CUSTOM_OBJECTS,
                       compile=compile)
    start_step_counters(model)
    return model
