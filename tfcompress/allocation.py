"""Per-layer compression ratios from measured sensitivity: `greedy_allocate`.

Each layer has a sensitivity curve: the loss increase measured when that layer
alone is compressed to a few ratios (AIMET's compression-ratio selection
measures the same curves: "eval scores" per layer and candidate ratio,
aimet_common/comp_ratio_select.py). `greedy_allocate` then spends the
compression where it is cheapest: starting from nothing, it repeatedly raises
by `step` the layer whose next step costs the least predicted loss per unit
(weight or channel) removed, until the model's total reaches the target; the
last step is cut short so that the total is exact. This is the marginal-cost
rule for minimising the summed loss increases under a total budget (the
curves are taken as independent and additive, AIMET's assumption too).

Pure numpy: `tfcompress.pruning.sensitivity` and
`tfcompress.channel_pruning.sensitivity` measure the curves.

Example:
    curves = {"conv1": [(0.5, 0.2), (0.9, 1.5)], "dense": [(0.5, 0.0), (0.9, 0.1)]}
    greedy_allocate(curves, {"conv1": 100, "dense": 900}, target=0.8)
    # {'conv1': 0.0..., 'dense': 0.88...}: the big, insensitive layer takes it
"""

import dataclasses
import heapq
import re

import numpy as np

from tfcompress.errors import TfcompressError


class AllocationError(TfcompressError, ValueError):
    """The target cannot be reached with the layers and limits given."""


@dataclasses.dataclass
class Allocation:
    """What an allocation chose, and from what (the same for weights and channels).

    Attributes:
        per_layer: {layer name: ratio} for every layer (or channel group,
            by its first layer) to compress.
        sizes: {layer name: units} (its prunable weights, or channels).
        unit: "weights" or "channels".
        curves: {layer name: [(ratio, loss increase), ...]} as measured
            (layers set by the user have none).
        fixed: names of the layers whose ratio the user set (per_layer).
        target: the total ratio asked, over the layers compressed.
        baseline_loss: the loss on the slice before pruning.
        samples: rows of the slice.
        predicted_loss_increase: the summed curves at the chosen sparsities.
    """

    per_layer: dict
    sizes: dict
    unit: str
    curves: dict
    fixed: list
    target: float
    baseline_loss: float
    samples: int
    predicted_loss_increase: float

    @property
    def total_ratio(self):
        """The size-weighted mean of `per_layer`."""
        total = sum(self.sizes.values())
        return sum(self.per_layer[n] * self.sizes[n] for n in self.per_layer) / total

    def apply(self, config):
        """`config` (a PruningConfig or ChannelPruningConfig) with every layer's ratio set by
        name in its per_layer (the user's overrides are among them, unchanged)."""
        per_layer = {re.escape(name): value for name, value in self.per_layer.items()}
        return dataclasses.replace(config, per_layer=per_layer)

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["curves"] = {n: [[float(s), float(c)] for s, c in pts]
                          for n, pts in self.curves.items()}
        data["total_ratio"] = self.total_ratio
        return data


    def format(self):
        """A small table: layer, size, ratio (and whether the user set it), then the total."""
        width = max(5, max(len(n) for n in self.per_layer))
        lines = [f"{'layer':<{width}}  {self.unit:>9}  removed"]
        for name, value in self.per_layer.items():
            mark = "  (per_layer)" if name in self.fixed else ""
            lines.append(f"{name:<{width}}  {self.sizes[name]:>9,}  {value:7.1%}{mark}")
        lines.append(f"{'total':<{width}}  {sum(self.sizes.values()):>9,}  "
                     f"{self.total_ratio:7.1%}  (predicted loss +"
                     f"{self.predicted_loss_increase:.3f} on {self.samples:,} training samples)")
        return "\n".join(lines)


def _interpolated(points, step):
    """(ratios, costs) on a grid of `step`, from 0 to the largest measured ratio.

    Costs are made non-decreasing (a loss that fell when a layer was pruned is
    noise, not a gain to chase) and start at 0 for ratio 0.
    """
    points = sorted((float(r), float(c)) for r, c in points)
    ratios = np.array([0.0] + [r for r, _ in points])
    costs = np.maximum.accumulate(np.maximum(0.0, np.array([0.0] + [c for _, c in points])))
    grid = np.arange(0.0, ratios[-1] + 1e-9, step)
    if grid[-1] < ratios[-1] - 1e-9:
        grid = np.append(grid, ratios[-1])
    return grid, np.interp(grid, ratios, costs)


def greedy_allocate(curves, sizes, target, fixed=None, step=0.01):
    """Per-layer ratios whose size-weighted mean is `target`, at the least summed cost.

    Args:
        curves: {name: [(ratio, cost), ...]}, the measured cost (loss
            increase) of compressing that layer alone to each ratio; the
            largest ratio measured is the layer's limit.
        sizes: {name: units} for every layer in `curves` and `fixed`
            (weights for sparsity, channels for channel pruning).
        target: the fraction of all those units to remove, in (0, 1).
        fixed: {name: ratio} for layers whose ratio is set by the user; they
            count toward the total and are not changed.
        step: the grid the greedy search moves on.

    Returns:
        {name: ratio} for every layer of `curves` and `fixed`, in their order.

    Raises:
        AllocationError: the fixed layers alone exceed the target, or the
            free layers at their limits cannot reach it.
    """
    fixed = dict(fixed or {})
    names = list(curves) + [n for n in fixed if n not in curves]
    missing = [n for n in names if n not in sizes]
    if missing:
        raise ValueError(f"no size for {missing}")
    total = float(sum(sizes[n] for n in names))
    removed_by_fixed = sum(fixed[n] * sizes[n] for n in fixed)
    need = target * total - removed_by_fixed
    free = [n for n in curves if n not in fixed]
    if need < -1e-9:
        raise AllocationError(
            f"the per-layer overrides alone remove {removed_by_fixed / total:.1%} of the total, "
            f"more than the {target:.1%} asked: lower them or raise the target")
    grids = {n: _interpolated(curves[n], step) for n in free}
    reachable = sum(grids[n][0][-1] * sizes[n] for n in free)
    if need > reachable + 1e-9:
        raise AllocationError(
            f"a total of {target:.1%} is out of reach: at most "
            f"{(removed_by_fixed + reachable) / total:.1%} with each layer up to the largest "
            "ratio its sensitivity was measured at; lower the target or free more layers")
    position = {n: 0 for n in free}
    ratio = {n: 0.0 for n in free}

    def entry(index, name):
        grid, cost = grids[name]
        i = position[name]
        per_unit = (cost[i + 1] - cost[i]) / ((grid[i + 1] - grid[i]) * sizes[name])
        # Ties go to the bigger layer, then to the earlier one: deterministic.
        return (per_unit, -sizes[name], index, name)

    heap = [entry(i, n) for i, n in enumerate(free) if len(grids[n][0]) > 1]
    heapq.heapify(heap)
    done = 0.0
    while done < need - 1e-9 and heap:
        _, _, index, name = heapq.heappop(heap)
        grid = grids[name][0]
        i = position[name]
        gain = (grid[i + 1] - grid[i]) * sizes[name]
        if done + gain >= need:  # the last step, cut to land on the target exactly
            ratio[name] = grid[i] + (need - done) / sizes[name]
            done = need
            break
        done += gain
        position[name] = i + 1
        ratio[name] = grid[i + 1]
        if i + 2 < len(grid):
            heapq.heappush(heap, entry(index, name))
    return {n: float(fixed[n]) if n in fixed else float(ratio[n]) for n in names}


def predicted_cost(curves, ratios, step=0.01):
    """The summed interpolated cost of `ratios` on `curves` (layers without a curve cost 0)."""
    total = 0.0
    for name, points in curves.items():
        grid, cost = _interpolated(points, step)
        total += float(np.interp(ratios.get(name, 0.0), grid, cost))
    return total
