"""Sensitivity-driven channel ratios: each group its own ratio, the model removes `ratio` of all.

`allocate_ratios` ranks channels once by the config's criterion, then for
every prunable group builds the thinner model with only that group pruned to
each of `RATIOS` and measures the loss increase on a slice of the training
data (after adaptive BatchNorm, `tfcompress.adaptive_bn`);
`tfcompress.allocation.greedy_allocate` then chooses per-group ratios whose
channel-weighted mean is the config's ratio at the least summed loss. Groups
set by `per_layer` keep their ratio and count toward the total; excluded
groups keep every channel and do not count.

Example:
    config = ChannelPruningConfig(ratio=0.5)
    allocation = allocate_ratios(model, config, x_train, y_train)
    thin, plan = prune_channels(model, allocation.apply(config))
"""


from tfcompress import heads
from tfcompress.adaptive_bn import adapted_loss, batchnorms
from tfcompress.allocation import Allocation, AllocationError, greedy_allocate, predicted_cost
from tfcompress.channel_pruning.config import ChannelPruningConfig, ChannelPruningError
from tfcompress.channel_pruning.graph import ChannelGraph
from tfcompress.channel_pruning.importance import importance as criterion_scores
from tfcompress.channel_pruning.plan import _choose, _group_ratios, _masks
from tfcompress.channel_pruning.rebuild import thin_model
from tfcompress.checks import as_config
from tfcompress.surgery import require_graph_model

__all__ = ["RATIOS", "allocate_ratios"]

RATIOS = (0.25, 0.5, 0.625, 0.75, 0.875)  # the last is the most any group loses


def allocate_ratios(model, config, x, y, head=None, ratios=RATIOS, samples=2000, seed=0,
                    data=None, log=None):
    """Per-group channel ratios removing `config.ratio` of the channels at the least loss.

    Args:
        model: the trained tf_keras model (left as it was).
        config: a `ChannelPruningConfig` (or dict) with `ratio` (not
            target_macs, not global_ranking); exclude, skip_first_and_last
            and per_layer are respected.
        x, y: training data; `samples` rows (fixed by `seed`) measure the loss.
        head: the model's `heads.Head` (detected when None).
        data: (x, y) for the "taylor" criterion.
        log: a print-like callable for progress, or None.

    Returns:
        A `tfcompress.allocation.Allocation` keyed by each group's first
        layer; `.apply(config)` gives the config to prune with.
    """
    from tfcompress.data import subsample
    model = require_graph_model(model, ChannelPruningError)
    config = as_config(config, ChannelPruningConfig, ChannelPruningError)
    if config.target_macs is not None or config.global_ranking:
        raise ChannelPruningError("sensitivity allocation chooses each group's ratio for a "
                                  "total ratio; it replaces target_macs and global_ranking: "
                                  "unset them")
    head = head or heads.detect(model)
    x, y = subsample(x, y, samples, seed)
    graph = ChannelGraph(model)
    group_ratios = _group_ratios(graph, config)
    groups = graph.groups
    active = [i for i, r in enumerate(group_ratios) if r is not None]
    if not active:
        raise ChannelPruningError("every prunable group is excluded (exclude, "
                                  "skip_first_and_last): nothing left to prune")
    scores = criterion_scores(graph, config, [groups[i] for i in active], data)
    name = {i: groups[i]["layers"][0] for i in active}
    sizes = {name[i]: len(groups[i]["classes"]) for i in active}
    fixed = {name[i]: group_ratios[i] for i in active if group_ratios[i] != "common"}
    baseline = adapted_loss(model, x, y, head, batchnorms(model))
    curves = {}
    for i in active:
        if name[i] in fixed:
            continue
        points = []
        for ratio in ratios:
            alone = [ratio if j == i else (None if r is None else 0.0)
                     for j, r in enumerate(group_ratios)]
            keep_root, _ = _choose(graph, groups, scores, alone, config, 0.0)
            thin = thin_model(model, _masks(graph, keep_root)[1])
            points.append((float(ratio), adapted_loss(thin, x, y, head) - baseline))
        curves[name[i]] = points
        if log:
            log(f"    sensitivity {name[i]}: " + ", ".join(f"{r:.0%} {c:+.3f}"
                                                        for r, c in points))
    try:
        per_layer = greedy_allocate(curves, sizes, config.effective_ratio, fixed=fixed)
    except AllocationError as e:
        raise ChannelPruningError(f"ratio {config.effective_ratio:g}: {e}") from None
    per_layer = {name[i]: per_layer[name[i]] for i in active}
    return Allocation(per_layer=per_layer, sizes=sizes, unit="channels", curves=curves,
                      fixed=list(fixed), target=config.effective_ratio,
                      baseline_loss=float(baseline), samples=len(x),
                      predicted_loss_increase=predicted_cost(curves, per_layer))
