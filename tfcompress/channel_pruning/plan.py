"""The plan: how many channels each group keeps (a ratio, per-layer ratios or a
MACs target, optionally ranked globally), which ones, and the `ChannelPlan` that
records it; `format_plan` prints it."""

import dataclasses
from typing import Optional

import numpy as np

from tfcompress.channel_pruning.config import ChannelPruningError
from tfcompress.channel_pruning.importance import importance as criterion_scores
from tfcompress.layer_selection import describe, matches, unmatched


@dataclasses.dataclass
class ChannelPlan:
    """What `prune_channels` removed.

    Attributes:
        criterion: the importance criterion used.
        groups: one dict a prunable group: "layers" (names of the layers whose
            output channels are tied), "channels" and "kept" (classes of
            tied channels), "ratio" (asked), "pruned" (False when excluded),
            "importance" (the criterion's score of each class; for a group
            of one layer, in its channel order).
        layers: one dict a Conv/Depthwise/Dense layer: "layer", "type",
            "channels_before", "channels_after" (outputs), "inputs_before",
            "inputs_after", "macs_before", "macs_after", "params_before",
            "params_after".
        macs_before, macs_after, params_before, params_after: model totals
            (MACs of Conv/Depthwise/Dense layers for one sample).
        masks: {layer name: {"in": bool array or None, "out": bool array or
            None}}, the kept input positions / output channels of every layer
            that changes; what `mask_channels` and the rebuild read.
    """

    criterion: str
    groups: list
    layers: list
    macs_before: Optional[int]
    macs_after: Optional[int]
    params_before: int
    params_after: int
    masks: dict = dataclasses.field(repr=False, default_factory=dict)

    def to_dict(self):
        """Plain JSON types, masks left out."""
        data = dataclasses.asdict(self)
        data.pop("masks")
        return data


def _kept_count(size, ratio, round_to):
    keep = size - int(np.floor(ratio * size + 1e-9))
    if round_to > 1:
        keep = max(round_to, int(np.floor(keep / round_to + 0.5)) * round_to)
    return int(min(size, max(1, keep)))


def _choose(graph, groups, importance, ratios, config, common_ratio):
    """Boolean keep flag per root atom for a given common ratio."""
    keep_root = np.ones(len(graph.parent), dtype=bool)
    kept = {}
    global_groups = []
    for index, group in enumerate(groups):
        ratio = ratios[index]
        if ratio is None:
            kept[index] = len(group["classes"])
        elif ratio == "common" and config.global_ranking:
            global_groups.append(index)
        else:
            ratio = common_ratio if ratio == "common" else ratio
            kept[index] = _kept_count(len(group["classes"]), ratio, config.round_to)
    if global_groups:
        # Normalised by the group's mean: raw norms differ in scale between layers.
        scores, owners = [], []
        for index in global_groups:
            values = importance[groups[index]["classes"]]
            mean = values.mean()
            scores.append(values / mean if mean > 0 else values)
            owners.append(np.full(len(values), index))
        scores, owners = np.concatenate(scores), np.concatenate(owners)
        left = {i: len(groups[i]["classes"]) for i in global_groups}
        floor = {i: min(left[i], max(1, config.round_to)) for i in global_groups}
        to_remove = int(np.floor(common_ratio * len(scores) + 1e-9))
        for position in np.argsort(scores, kind="stable"):
            if to_remove == 0:
                break
            owner = int(owners[position])
            if left[owner] > floor[owner]:
                left[owner] -= 1
                to_remove -= 1
        for index in global_groups:
            size, keep = len(groups[index]["classes"]), left[index]
            if config.round_to > 1:
                keep = max(config.round_to,
                           int(np.floor(keep / config.round_to + 0.5)) * config.round_to)
            kept[index] = int(min(size, keep))
    for index, group in enumerate(groups):
        classes = group["classes"]
        if kept[index] < len(classes):
            # Stable sort on -importance: ties keep the earlier channel.
            order = np.argsort(-importance[classes], kind="stable")
            keep_root[classes[order[kept[index]:]]] = False
        # A layer whose channels all went (one input of a Concatenate) cannot be
        # built with 0 filters: it keeps its most important channel.
        for name in group["layers"]:
            roots = np.unique(graph.roots[graph.producers[name][1]])
            if not keep_root[roots].any():
                keep_root[roots[np.argmax(importance[roots])]] = True
                kept[index] += 1
    return keep_root, kept


def _group_ratios(graph, config):
    """Per group: "common", a per_layer ratio, or None (kept whole); checks patterns."""
    layers = {layer.name: layer for layer in graph.model.layers}
    names = ", ".join(layers)
    missing = unmatched(config.exclude, layers.values())
    if missing:
        raise ChannelPruningError(f"exclude entry {missing[0]!r} matches no layer; the "
                                  f"model's layers are: {names}")
    prunable_layers = {name for group in graph.groups for name in group["layers"]}
    for pattern in config.per_layer:
        hits = [layer for layer in layers.values() if matches(pattern, layer)]
        if not hits:
            raise ChannelPruningError(f"per_layer entry {pattern!r} matches no layer; the "
                                      f"model's layers are: {names}")
        if not any(layer.name in prunable_layers for layer in hits):
            layer = hits[0]
            if layer.name in graph.producers:
                atoms = graph.producers[layer.name][1]
                reason = graph.fixed_roots.get(graph.roots[atoms[0]], "")
                why = f"its output channels are kept because {reason}"
            elif layer.name in graph.barriers:
                why = graph.barriers[layer.name]
            else:
                why = ("only the output channels of Conv1D/2D/3D and Dense layers (with groups=1, "
                       "channels_last) can be pruned")
            raise ChannelPruningError(f"per_layer entry {pattern!r} matches {describe(layer)}, "
                                      f"which cannot be pruned: {why}")
    skipped = set()
    if config.skip_first_and_last and graph.groups:
        order = [name for name in graph.producers if name in prunable_layers]
        skipped = {order[0], order[-1]}
    ratios = []
    for group in graph.groups:
        members = [layers[name] for name in group["layers"]]
        if skipped & set(group["layers"]) or any(
                matches(p, layer) for p in config.exclude for layer in members):
            ratios.append(None)
            continue
        ratio = "common"
        for pattern, value in config.per_layer.items():
            if any(matches(pattern, layer) for layer in members):
                ratio = value
                break
        ratios.append(ratio)
    return ratios


def _masks(graph, keep_root):
    keep_atom = keep_root[graph.roots]
    masks = {}
    for node, kind in graph.calls:
        name = node.layer.name
        entry = {"in": keep_atom[graph.input_layout(node)].copy(), "out": None}
        if kind == "produce":
            entry["out"] = keep_atom[graph.producers[name][1]].copy()
        masks[name] = entry
    return keep_atom, masks


def _search_common_ratio(graph, groups, importance, ratios, config, target):
    """The smallest common ratio whose MACs reach `target` (MACs fall as the ratio rises)."""

    def total(ratio):
        keep_root, _ = _choose(graph, groups, importance, ratios, config, ratio)
        return sum(graph.macs(keep_root[graph.roots]).values())

    high = 0.99
    if total(0.0) <= target:
        return 0.0
    if total(high) > target:
        raise ChannelPruningError(
            f"target_macs {target:,} cannot be reached: removing 99% of the channels of every "
            f"prunable group still leaves {total(high):,} MACs (layers kept whole, inputs and "
            "outputs count); raise target_macs or prune more layers (per_layer, exclude)")
    low = 0.0
    for _ in range(40):
        middle = (low + high) / 2
        if total(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def make_plan(graph, config, data=None, loss=None):
    """The `ChannelPlan` of `config` for a model's `ChannelGraph` (params_after left 0)."""
    if not graph.groups:
        raise ChannelPruningError(
            f"model {graph.model.name!r} has no channels channel pruning can remove: only "
            "output channels of Conv1D/2D/3D and Dense layers that do not feed a model output "
            "or a layer it cannot see through (Reshape, custom layers) can go")
    ratios = _group_ratios(graph, config)
    groups = graph.groups
    active = [g for g, r in zip(groups, ratios) if r is not None]
    if not active:
        raise ChannelPruningError("every prunable group is excluded (exclude, "
                                  "skip_first_and_last): nothing left to prune")
    importance = criterion_scores(graph, config, active, data, loss)
    all_macs = graph.macs(np.ones(len(graph.parent), dtype=bool))
    macs_before = None if None in all_macs.values() else sum(all_macs.values())
    common = config.effective_ratio
    if config.target_macs is not None:
        if macs_before is None:
            raise ChannelPruningError("target_macs needs fixed spatial sizes; give the model's "
                                      "Input a full shape")
        target = config.target_macs
        target = int(target * macs_before) if target < 1 else int(target)
        common = _search_common_ratio(graph, groups, importance, ratios, config, target)
    keep_root, kept = _choose(graph, groups, importance, ratios, config, common)
    keep_atom, masks = _masks(graph, keep_root)
    macs_after = graph.macs(keep_atom)
    rows = []
    for node, kind in graph.calls:
        if kind == "batchnorm":
            continue
        name = node.layer.name
        mask = masks[name]
        out = mask["out"] if mask["out"] is not None else np.repeat(
            mask["in"], node.layer.depth_multiplier)
        rows.append({"layer": name, "type": type(node.layer).__name__,
                     "channels_before": int(out.size), "channels_after": int(out.sum()),
                     "inputs_before": int(mask["in"].size), "inputs_after": int(mask["in"].sum()),
                     "macs_before": all_macs[name], "macs_after": macs_after[name]})
    group_rows = [{"layers": list(g["layers"]), "channels": int(len(g["classes"])),
                   "kept": int(kept[i]),
                   "ratio": None if ratios[i] is None else float(
                       common if ratios[i] == "common" else ratios[i]),
                   "pruned": ratios[i] is not None,
                   "importance": [float(v) for v in importance[g["classes"]]]}
                  for i, g in enumerate(groups)]
    return ChannelPlan(
        criterion=config.criterion, groups=group_rows, layers=rows, macs_before=macs_before,
        macs_after=None if None in macs_after.values() else sum(macs_after.values()),
        params_before=int(graph.model.count_params()), params_after=0, masks=masks)


def _fmt(value):
    return "?" if value is None else f"{value:,}"


def format_plan(plan):
    """The plan as a text table: per layer, channels and MACs before -> after, plus totals.

    Example:
        print(format_plan(plan))
    """
    header = ("layer", "type", "channels", "MACs", "params")
    lines = [header]
    for row in plan.layers:
        lines.append((row["layer"], row["type"],
                      f"{row['channels_before']} -> {row['channels_after']}",
                      f"{_fmt(row['macs_before'])} -> {_fmt(row['macs_after'])}",
                      f"{_fmt(row.get('params_before'))} -> {_fmt(row.get('params_after'))}"))
    lines.append(("total", "", "", f"{_fmt(plan.macs_before)} -> {_fmt(plan.macs_after)}",
                  f"{plan.params_before:,} -> {plan.params_after:,}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.insert(len(text) - 1, "-" * len(text[0]))
    if plan.macs_before and plan.macs_after is not None:
        text.append(f"criterion {plan.criterion}: MACs x{plan.macs_after / plan.macs_before:.3f}, "
                    f"params x{plan.params_after / max(plan.params_before, 1):.3f}; "
                    f"{sum(g['pruned'] for g in plan.groups)} of {len(plan.groups)} groups pruned")
    return "\n".join(text)
