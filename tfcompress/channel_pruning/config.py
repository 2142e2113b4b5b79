"""Channel pruning's settings: `ChannelPruningConfig`, its error class and the criteria names."""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.layer_selection import check_patterns

CRITERIA = ("l1", "l2", "bn_scale", "taylor")


class ChannelPruningError(TfcompressError, ValueError):
    """A model or config that channel pruning cannot handle; the message says what to do."""


def _check_ratio(value, name):
    try:
        ok = 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ChannelPruningError(f"{name} must be a fraction of channels to remove in [0, 1), "
                                  f"got {value!r} (0.5 removes half)")
    return float(value)


@dataclasses.dataclass
class ChannelPruningConfig:
    """What to prune, by which criterion, and how much.

    Example:
        ChannelPruningConfig(ratio=0.5, criterion="taylor", round_to=8)
        ChannelPruningConfig(target_macs=0.4)            # keep ~40% of the MACs
        ChannelPruningConfig(ratio=0.3, per_layer={"block_1.*": 0.6}, exclude=["Conv1"])

    Args:
        ratio: fraction of the channels of every prunable group to remove, in
            [0, 1). Default 0.5. Leave unset when giving `target_macs`.
        criterion: "l1", "l2", "bn_scale" or "taylor" (see the package docstring).
        per_layer: {pattern: ratio} for the groups holding a matching layer
            (name, regular expression or class name; the first pattern that
            matches a member wins).
        round_to: kept channel counts are rounded to the nearest multiple of
            this (ties up, at least `round_to`), which mobile int8 kernels
            prefer (4 or 8). 1 rounds nothing. (A layer that would lose all
            its channels, e.g. one input of a Concatenate, keeps its best
            one, which can leave its group one off the multiple.)
        target_macs: instead of a ratio, the multiply-accumulates (of Conv,
            DepthwiseConv and Dense layers, one sample) to end at or below: an
            absolute count (>= 1) or a fraction of the model's MACs in (0, 1).
            The smallest common ratio that reaches it is searched for.
        exclude: patterns of layers whose groups keep all their channels.
        skip_first_and_last: keep the groups of the model's first and last
            prunable layers whole (the stem, and the last layer before the
            classifier, whose channels often carry most of the accuracy).
        global_ranking: rank channels across groups (importance divided by
            its group's mean) and remove the `ratio` least important of all
            prunable channels, rather than `ratio` of every group; each group
            keeps at least max(1, round_to).
        taylor_batches: batches of `data` the "taylor" criterion averages over.
        batch_size: their size.

    Raises:
        ChannelPruningError: naming the field that is wrong.
    """

    ratio: Optional[float] = None
    criterion: str = "l1"
    per_layer: Mapping[Any, float] = dataclasses.field(default_factory=dict)
    round_to: int = 1
    target_macs: Optional[float] = None
    exclude: Sequence[Any] = ()
    skip_first_and_last: bool = False
    global_ranking: bool = False
    taylor_batches: int = 8
    batch_size: int = 64

    def __post_init__(self):
        if self.ratio is not None:
            self.ratio = _check_ratio(self.ratio, "ratio")
        if self.criterion not in CRITERIA:
            raise ChannelPruningError(f"unknown criterion {self.criterion!r}; choose one of "
                                      f"{', '.join(CRITERIA)}")
        self.per_layer = dict(self.per_layer)
        check_patterns(list(self.per_layer), "per_layer", ChannelPruningError)
        for pattern, ratio in self.per_layer.items():
            _check_ratio(ratio, f"per_layer[{pattern!r}]")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, (int, np.integer)) \
                or self.round_to < 1:
            raise ChannelPruningError(f"round_to must be an integer >= 1 (4 or 8 suit mobile "
                                      f"kernels), got {self.round_to!r}")
        if self.target_macs is not None:
            if self.ratio is not None:
                raise ChannelPruningError("set ratio or target_macs, not both: target_macs "
                                          "searches for the ratio")
            try:
                ok = float(self.target_macs) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ChannelPruningError(f"target_macs must be a MAC count >= 1 or a fraction "
                                          f"of the model's MACs in (0, 1), got "
                                          f"{self.target_macs!r}")
        self.exclude = check_patterns(self.exclude, "exclude", ChannelPruningError)
        for name in ("taylor_batches", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ChannelPruningError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def effective_ratio(self):
        """The ratio applied to groups without a per_layer entry (0.5 when unset)."""
        return 0.5 if self.ratio is None else self.ratio
