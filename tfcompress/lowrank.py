"""Low-rank factorization: one Dense (or 1x1 Conv2D) layer becomes two thinner ones.

A kernel W (inputs x outputs) is replaced by its truncated SVD,
W ~= U_r S_r V_r^T, split as A = U_r sqrt(S_r) and B = sqrt(S_r) V_r^T: the
layer `name_svd` (rank r, no bias, no activation) computes x A, and the layer
`name` (the original's units, bias and activation) computes (x A) B. The
parameters fall from in*out to r*(in + out); the square-root split keeps the
two factors' ranges alike, which int8 quantization prefers. At full rank the
outputs are the original's up to float rounding.

The rank comes from `rank_ratio` (a fraction of the full rank min(in, out)) or
from `energy` (the smallest rank keeping that fraction of the sum of squared
singular values). Layers whose factorization would save less than
`min_params_saving` of their parameters are left as they are.

Example:
    from tfcompress import lowrank
    factored, info = lowrank.factorize(model, lowrank.LowRankConfig(energy=0.9))
    print(lowrank.format_info(info))

Reference:
    Denton et al. 2014, "Exploiting Linear Structure Within Convolutional
    Networks for Efficient Evaluation", https://arxiv.org/abs/1404.0736; Xue
    et al. 2013, "Restructuring of deep neural network acoustic models with
    singular value decomposition".
"""

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from tfcompress.checks import as_config, check_finite_weights
from tfcompress.errors import TfcompressError
from tfcompress.keras import ensure_tf_keras_model, keras
from tfcompress.layer_selection import check_patterns, describe, matches, unmatched
from tfcompress.surgery import graph_nodes, require_graph_model, transform_model

__all__ = ["LowRankError", "LowRankConfig", "factorize", "format_info", "choose_rank"]


class LowRankError(TfcompressError, ValueError):
    """A model, layer or config low-rank factorization cannot handle; the message says why."""


@dataclasses.dataclass
class LowRankConfig:
    """Which layers to factor and at what rank.

    Example:
        LowRankConfig(energy=0.9)                       # keep 90% of the spectrum's energy
        LowRankConfig(rank_ratio=0.25, layers=["fc1"])  # a quarter of the full rank
        LowRankConfig(rank_ratio=1.0, min_params_saving=None)  # exact (for checks)

    Args:
        rank_ratio: rank as a fraction of the full rank min(in, out), in
            (0, 1]; rounded up. When set, `energy` is not used.
        energy: when `rank_ratio` is None, the smallest rank whose singular
            values keep this fraction of sum(s^2), in (0, 1]. Default 0.9.
        layers: patterns (names, regular expressions, class names) of the
            layers to factor; None means every Dense and 1x1 Conv2D layer.
        exclude: patterns of layers to leave alone.
        min_params_saving: factor a layer only if that removes at least this
            fraction of its parameters (default 0.1); None factors even when
            the two layers hold more parameters than the one.
        rank_multiple: round the rank up to a multiple of this (4 or 8 suit
            mobile kernels), at most the full rank.

    Raises:
        LowRankError: naming the field that is wrong.
    """

    rank_ratio: Optional[float] = None
    energy: Optional[float] = 0.9
    layers: Optional[Sequence[Any]] = None
    exclude: Sequence[Any] = ()
    min_params_saving: Optional[float] = 0.1
    rank_multiple: int = 1

    def __post_init__(self):
        for name in ("rank_ratio", "energy"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float))
                                          and not isinstance(value, bool) and 0 < value <= 1):
                raise LowRankError(f"{name} must be in (0, 1], got {value!r}")
        if self.rank_ratio is None and self.energy is None:
            raise LowRankError("set rank_ratio or energy: one of them chooses the rank")
        if self.min_params_saving is not None and not (
                isinstance(self.min_params_saving, (int, float)) and self.min_params_saving < 1):
            raise LowRankError(f"min_params_saving must be a fraction below 1 or None, got "
                               f"{self.min_params_saving!r}")
        if isinstance(self.rank_multiple, bool) or not isinstance(self.rank_multiple, int) \
                or self.rank_multiple < 1:
            raise LowRankError(f"rank_multiple must be an integer >= 1, got "
                               f"{self.rank_multiple!r}")
        if self.layers is not None:
            self.layers = check_patterns(self.layers, "layers", LowRankError)
        self.exclude = check_patterns(self.exclude, "exclude", LowRankError)


def choose_rank(singular_values, config):
    """The rank `config` asks for, given a kernel's singular values (descending)."""
    s = np.asarray(singular_values, dtype=np.float64)
    full = len(s)
    if config.rank_ratio is not None:
        rank = int(np.ceil(config.rank_ratio * full - 1e-9))
    else:
        energy = np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), np.finfo(float).tiny)
        rank = int(np.searchsorted(energy, config.energy - 1e-12) + 1)
    multiple = config.rank_multiple
    rank = int(np.ceil(rank / multiple) * multiple)
    return max(1, min(full, rank))


def _why_not(layer, calls):
    """None if `layer` can be factored, else the reason."""
    if calls > 1:
        return "it is called more than once (a shared layer)"
    if type(layer) is keras.layers.Dense:
        return None
    if type(layer) is keras.layers.Conv2D:
        if tuple(layer.kernel_size) != (1, 1):
            return (f"its kernel is {layer.kernel_size[0]}x{layer.kernel_size[1]}; only 1x1 "
                    "convolutions factor into two 1x1 convolutions")
        if layer.groups != 1:
            return "it is a grouped convolution"
        return None
    return "only Dense and 1x1 Conv2D layers can be factored"


def _params(fan_in, fan_out, rank, bias):
    before = fan_in * fan_out + (fan_out if bias else 0)
    after = rank * (fan_in + fan_out) + (fan_out if bias else 0)
    return before, after


def _select(model, config):
    nodes = graph_nodes(model, LowRankError)
    calls = {}
    for node in nodes:
        calls[node.layer.name] = calls.get(node.layer.name, 0) + 1
    layers = [node.layer for node in nodes]
    names = ", ".join(layer.name for layer in model.layers)
    for field, patterns in (("layers", config.layers or ()), ("exclude", config.exclude)):
        missing = unmatched(patterns, model.layers)
        if missing:
            raise LowRankError(f"{field} entry {missing[0]!r} matches no layer; the model's "
                               f"layers are: {names}")
    chosen, seen = [], set()
    for layer in layers:
        if layer.name in seen:
            continue
        seen.add(layer.name)
        if any(matches(p, layer) for p in config.exclude):
            continue
        why = _why_not(layer, calls[layer.name])
        if config.layers is None:
            if why is None:
                chosen.append(layer)
        elif any(matches(p, layer) for p in config.layers):
            if why is not None and layer.name in config.layers:
                raise LowRankError(f"{describe(layer)} cannot be factored: {why}; remove it "
                                   "from layers")
            if why is None:
                chosen.append(layer)
    if not chosen:
        raise LowRankError(f"no layer of {model.name!r} can be factored (Dense and 1x1 Conv2D "
                           f"layers, not excluded); the model's layers are: {names}")
    return chosen


def factorize(model, config=None):
    """Replaces Dense / 1x1 Conv2D layers by two low-rank layers (truncated SVD).

    Example:
        factored, info = factorize(model, LowRankConfig(rank_ratio=0.25))
        info["params_before"], info["params_after"]

    Args:
        model: a built functional or Sequential tf_keras model (left untouched).
        config: a `LowRankConfig`, a dict of its fields, or None (energy 0.9).

    Returns:
        (factored, info): a new, uncompiled functional model in which each
        factored layer `name` is `name_svd` followed by `name`; and info, a
        dict of plain types: "layers", one entry a considered layer ("layer",
        "type", "shape" [in, out], "full_rank", "rank", "energy_kept",
        "params_before", "params_after", "factored", "reason" when not), and
        the model's "params_before" / "params_after".

    Raises:
        LowRankError: a subclassed model, a named layer that cannot be
            factored, a pattern that matches nothing, nothing to factor.
        TypeError: a Keras 3 model.
    """
    model = ensure_tf_keras_model(model)
    config = as_config(config, LowRankConfig, LowRankError)
    model = require_graph_model(model, LowRankError)
    # np.linalg.svd fails on NaN/Inf with a bare "SVD did not converge".
    check_finite_weights(model, "the model to factorize")
    rows, factors = [], {}
    for layer in _select(model, config):
        kernel = layer.kernel.numpy()
        matrix = kernel.reshape(kernel.shape[-2], kernel.shape[-1]).astype(np.float64)
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        rank = choose_rank(s, config)
        before, after = _params(*matrix.shape, rank, layer.use_bias)
        row = {"layer": layer.name, "type": type(layer).__name__, "shape": list(matrix.shape),
               "full_rank": int(len(s)), "rank": rank,
               "energy_kept": float(np.sum(s[:rank] ** 2) / max(np.sum(s ** 2), 1e-30)),
               "params_before": before, "params_after": after, "factored": True}
        if config.min_params_saving is not None and after > before * (
                1 - config.min_params_saving):
            row.update(factored=False, params_after=before,
                       reason=f"rank {rank} saves {1 - after / before:.1%} of the parameters, "
                              f"less than min_params_saving {config.min_params_saving:.0%}")
        else:
            root = np.sqrt(s[:rank])
            first = (u[:, :rank] * root).astype(kernel.dtype)
            second = (root[:, None] * vt[:rank]).astype(kernel.dtype)
            shape = kernel.shape[:-2]
            factors[layer.name] = (first.reshape(shape + first.shape),
                                   second.reshape(shape + second.shape), rank)
        rows.append(row)

    def replace(layer, copy):
        if layer.name not in factors:
            return None
        first_kernel, second_kernel, rank = factors[layer.name]
        width = {"units": rank} if type(layer) is keras.layers.Dense else {"filters": rank}
        first = copy(layer, [first_kernel], name=f"{layer.name}_svd", use_bias=False,
                     activation="linear", activity_regularizer=None, **width)
        stride = {}
        if type(layer) is keras.layers.Conv2D:  # the stride is taken by the first conv
            stride = {"strides": (1, 1), "padding": "valid"}
        second = copy(layer, [second_kernel] + layer.get_weights()[1:], **stride)
        return lambda *args, **kwargs: second(first(*args, **kwargs))

    factored = transform_model(model, replace, LowRankError)
    info = {"layers": rows, "params_before": int(model.count_params()),
            "params_after": int(factored.count_params())}
    return factored, info


def format_info(info):
    """The factorization info as a text table.

    Example:
        print(format_info(info))
    """
    header = ("layer", "type", "shape", "rank", "energy", "params")
    lines = [header]
    for row in info["layers"]:
        rank = f"{row['rank']}/{row['full_rank']}" + ("" if row["factored"] else " (kept)")
        lines.append((row["layer"], row["type"], "x".join(map(str, row["shape"])), rank,
                      f"{row['energy_kept']:.1%}",
                      f"{row['params_before']:,} -> {row['params_after']:,}"))
    lines.append(("total", "", "", "", "",
                  f"{info['params_before']:,} -> {info['params_after']:,}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.insert(len(text) - 1, "-" * len(text[0]))
    return "\n".join(text)
