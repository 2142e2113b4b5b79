"""Is a rebuilt model the same model? Copy weights across, then compare on probe batches.

Used both ways between Keras 3 and tf_keras (`keras3_import`, `keras3_export`): the
rebuilt model gets the original's weights layer by layer (`copy_weights`), then both
run on two fixed probe batches (`probe_batches`) and every output, and every named pair
of inner tensors given, must agree within `TOLERANCE` relative to max(1, the largest
value) (`check_same`), or the error names the first pair that differs.

Example:
    copy_weights(model3, model, "k3.keras: cannot import")
    check_same(model3, model, [("conv", t3, t)], "k3.keras: cannot import: it differs")
"""

import numpy as np

from tfcompress.errors import ModelLoadError
from tfcompress.keras import is_keras3_model, keras, keras3_package, tf

TOLERANCE = 1e-4
_PROBE_SEED = 20261205
_PROBE_BATCH = 2
_FREE_DIM = 32  # a None spatial/time dimension in the probe batch


def layers_by_path(model, prefix=""):
    """{"outer/inner/layer": layer} for every layer of `model`, nested models included."""
    found = {}
    for layer in model.layers:
        path = prefix + layer.name
        found[path] = layer
        if hasattr(layer, "layers") and layer.layers and isinstance(getattr(layer, "layers"),
                                                                     list):
            found.update(layers_by_path(layer, path + "/"))
    return found


def short_name(variable):
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0]


def copy_weights(source, target, what):
    """Copies each layer's weights from `source` to the layer of the same path in `target`
    (Keras 3 to tf_keras on import, tf_keras to Keras 3 on export).

    Raises:
        ModelLoadError: `what`, then the layer whose weights do not fit.
    """
    targets_by_path = layers_by_path(target)
    for path, layer in layers_by_path(source).items():
        if hasattr(layer, "layers") and isinstance(getattr(layer, "layers"), list):
            continue  # a nested model: its layers are copied one by one
        given = {short_name(v): v for v in layer.weights}
        if not given:
            continue
        twin = targets_by_path.get(path)
        if twin is None:
            raise ModelLoadError(f"{what}: layer {path!r} has weights but no counterpart in "
                                 "the rebuilt model")
        wanted = twin.weights
        if len(wanted) != len(given):
            raise ModelLoadError(
                f"{what}: layer {path!r} has {len(given)} weights ({', '.join(given)}) and "
                f"{len(wanted)} in the rebuilt model ({', '.join(short_name(v) for v in wanted)})")
        # By name where the names agree (kernel, bias, gamma...), else in order.
        names_agree = {short_name(v) for v in wanted} == set(given)
        values = [given[short_name(v)] for v in wanted] if names_agree else list(layer.weights)
        for variable, value in zip(wanted, values):
            value = np.asarray(value.numpy())
            if tuple(variable.shape) != value.shape:
                raise ModelLoadError(
                    f"{what}: layer {path!r} weight {short_name(variable)} has shape {value.shape} "
                    f"and {tuple(variable.shape)} in the rebuilt model")
            variable.assign(value.astype(np.asarray(variable.numpy()).dtype))


def probe_batches(model):
    """Fixed inputs for `model`: standard-normal values, and pixel-like values in
    [0, 255] (a model with `Rescaling(1/255)` inside sees near-constant features on the
    first); integer inputs get small integers. Seeded, so every import sees the same."""
    rng = np.random.default_rng(_PROBE_SEED)
    batches = []
    for draw in (lambda shape: rng.standard_normal(shape),
                 lambda shape: rng.uniform(0.0, 255.0, shape)):
        batch = []
        for tensor in model.inputs:
            shape = [_PROBE_BATCH] + [d if d is not None else _FREE_DIM
                                      for d in tensor.shape[1:]]
            dtype = tensor.dtype.as_numpy_dtype
            if np.issubdtype(dtype, np.integer):
                batch.append(rng.integers(0, 2, size=shape).astype(dtype))
            else:
                batch.append(draw(shape).astype(dtype))
        batches.append(batch)
    return batches


def _difference(reference, output):
    """Largest |reference - output| relative to max(1, max |reference|): absolute for
    outputs of unit scale or less, relative for larger ones."""
    reference = np.asarray(reference, np.float64)
    output = np.asarray(output, np.float64)
    if reference.shape != output.shape:
        return float("inf")
    both_nan = np.isnan(reference) & np.isnan(output)  # e.g. log of a negative probe value
    if np.any(np.isnan(reference) != np.isnan(output)):
        return float("inf")
    reference, output = reference[~both_nan], output[~both_nan]
    if reference.size == 0:
        return 0.0
    finite = np.isfinite(reference)
    if np.any(reference[~finite] != output[~finite]):
        return float("inf")
    reference, output = reference[finite], output[finite]
    if reference.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(reference))))
    return float(np.max(np.abs(reference - output))) / scale


def check_same(reference, candidate, pairs, failure):
    """Raises ModelLoadError(`failure` + where) unless `candidate` computes what
    `reference` does on the probe batches: their outputs, and each (name, reference
    tensor, candidate tensor) of `pairs` (models of either Keras, in any order).

    Returns:
        The largest relative difference seen.
    """
    def probe(model, tensors):
        model_class = keras3_package().Model if is_keras3_model(model) else keras.Model
        return model_class(model.inputs, tensors)

    names = [name for name, _, _ in pairs]
    probe_ref = probe(reference, list(reference.outputs) + [t for _, t, _ in pairs])
    probe_cand = probe(candidate, list(tf.nest.flatten(candidate.outputs)) +
                       [t for _, _, t in pairs])
    differences = np.zeros(len(names) + len(reference.outputs))
    for batch in probe_batches(candidate if not is_keras3_model(candidate) else reference):
        references = tf.nest.flatten(probe_ref(batch, training=False))
        outputs = tf.nest.flatten(probe_cand(batch, training=False))
        differences = np.maximum(differences, [_difference(np.asarray(r), np.asarray(o))
                                               for r, o in zip(references, outputs)])
    worst = float(np.max(differences, initial=0.0))
    if worst <= TOLERANCE:
        return worst
    where = next((f", first at {name!r} ({d:.2g})" for name, d in
                  zip(names, differences[len(reference.outputs):]) if d > TOLERANCE), "")
    raise ModelLoadError(f"{failure} by {worst:.2g} (relative; at most {TOLERANCE:g} allowed) "
                         f"on a probe batch{where}; please report it with the model file")
