"""TFMOT's pruning wrapper as tfcompress uses it: the class, its structures, its counters.

`PruneLowMagnitude` is TFMOT's wrapper with its `sparsity_m_by_n` kept in
the config; `parse_structure` reads the structures a `PruningConfig` can
ask for; `prunable_weights` says which weights TFMOT would prune in a layer;
`wrappers` / `start_step_counters` find the wrappers of a model and start
their step counters (which makes the UpdatePruningStep callback optional,
see `tfcompress.pruning`).

Example:
    label, m_by_n, block_size = parse_structure("2:4")     # ("2:4", (2, 4), None)
    [weight.name for weight in prunable_weights(dense)]   # ["dense/kernel:0"]
"""

import copy
import re

from tfcompress._compat import prune_registry, pruning_wrapper

__all__ = ["PruneLowMagnitude", "CUSTOM_OBJECTS", "parse_structure", "prunable_weights",
           "wrappers", "is_pruned_model", "start_step_counters"]


class PruneLowMagnitude(pruning_wrapper.PruneLowMagnitude):
    """TFMOT's wrapper, with `sparsity_m_by_n` kept in its config.

    TFMOT 0.8.1's `get_config` drops `sparsity_m_by_n`, so a "2:4" model
    saved mid-training loads as unstructured pruning and the next mask update
    loses the structure. Its `__init__` does take the argument, so keeping it
    in the config is the whole fix. The class keeps TFMOT's name: layer names
    stay `prune_low_magnitude_<layer>` and files load with
    `tfmot.sparsity.keras.prune_scope()` as well as with `load_pruned_model`.
    """

    def get_config(self):
        return dict(super().get_config(), sparsity_m_by_n=self.sparsity_m_by_n)


CUSTOM_OBJECTS = {"PruneLowMagnitude": PruneLowMagnitude}


def parse_structure(structure):
    """None | "M:N" | "HxW" | (H, W) -> (label, m_by_n, block_size)."""
    if structure is None:
        return None, None, None
    if isinstance(structure, str):
        m_by_n = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", structure)
        block = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", structure)
        if m_by_n:
            m, n = int(m_by_n[1]), int(m_by_n[2])
            if not 0 < m < n:
                raise ValueError(f"structure {structure!r}: M:N means M zeros in every N "
                                 "consecutive weights, so 0 < M < N (e.g. '2:4')")
            return f"{m}:{n}", (m, n), None
        if block:
            structure = (int(block[1]), int(block[2]))
        else:
            raise ValueError(f"structure {structure!r} is not 'M:N' (e.g. '2:4') or a block "
                             "'HxW' (e.g. '1x4')")
    try:
        height, width = (int(v) for v in structure)
    except (TypeError, ValueError):
        raise ValueError(f"structure must be None, 'M:N' or a block (height, width), got "
                         f"{structure!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"block structure {structure!r} needs sides >= 1")
    if (height, width) == (1, 1):
        return None, None, None
    return f"{height}x{width}", None, (height, width)


def prunable_weights(layer):
    """The weights TFMOT prunes in `layer`; [] for none; None when TFMOT does not know it."""
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
        return [weight for weight, _, _ in layer.pruning_vars]
    if hasattr(layer, "get_prunable_weights"):  # a PrunableLayer, or patched by TFMOT
        return list(layer.get_prunable_weights())
    if not prune_registry.PruneRegistry.supports(layer):
        return None
    # make_prunable patches a method onto the object it gets: give it a shallow
    # copy (same variables) so that reading a model never changes it.
    return list(prune_registry.PruneRegistry.make_prunable(copy.copy(layer))
                .get_prunable_weights())


def wrappers(model):
    """The `PruneLowMagnitude` wrappers of `model` (TFMOT's own or ours), nested models included."""
    return pruning_wrapper.collect_prunable_layers(model)


def is_pruned_model(model):
    """True when `model` holds TFMOT pruning wrappers (prune was applied, not stripped)."""
    return bool(wrappers(model))


def start_step_counters(model):
    # TFMOT's counter starts at -1 and UpdatePruningStep sets it to 0 when
    # training begins; without the callback the first batch fails an assert.
    # Starting it at 0 here makes the callback optional (tfcompress.pruning's
    # docstring says what the callback still adds).
    for layer in wrappers(model):
        if int(layer.pruning_step.numpy()) < 0:
            layer.pruning_step.assign(0)

