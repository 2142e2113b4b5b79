"""Channel pruning: remove whole filters and rebuild a thinner model that runs faster.

Unstructured sparsity shrinks files but not latency on CPUs (XNNPACK's sparse
kernels are float-only and off on x86). Removing whole output channels of
Conv2D / Dense layers (and the matching depthwise channels, BatchNorm entries
and input rows of the next layers) gives a smaller dense model whose speed-up
shows up on any runtime.

`prune_channels` ranks channels by an importance criterion, decides how many
to keep (a ratio, per-layer ratios, or a MACs target), and rebuilds the model
with the surviving channels' weights copied exactly.

Example:
    from tfcompress import channel_pruning
    config = channel_pruning.ChannelPruningConfig(ratio=0.5, criterion="l1", round_to=8)
    thin, plan = channel_pruning.prune_channels(model, config)
    print(channel_pruning.format_plan(plan))
    channel_pruning.fine_tune(thin, x_train, y_train, epochs=2)

Channel dependencies. Output channels of layers that are added (or
multiplied, averaged, ...) together must be pruned together: such channels
form one *class*, and the layers whose channels are tied form a *group*
(e.g. all project convolutions of one MobileNetV2 stage with the residual
`Add`s between them). BatchNorm, activations, pooling, padding, dropout,
resizing and depthwise convolutions keep channel positions, so they just carry
the pruning along; Concatenate places its inputs' channels side by side;
Flatten repeats them at every spatial position. Any other layer (Reshape,
Softmax, a custom layer, a nested model, a layer used twice) is a barrier: the
channels it reads or writes are kept. Model inputs and outputs are kept too.

Pruned in place. `mask_channels(model, plan)` returns the equivalent of the
thin model at full width: the original model, with the input of every layer
that mixes channels (Conv, Dense) multiplied by a 0/1 vector that zeroes the
pruned channels. Zeroing a filter's weights would not do: a BatchNorm after
it adds beta - mean * scale, so the channel is not zero where it is consumed.
Between the producer and the mixing layer a pruned channel keeps flowing
through BatchNorm, ReLU, depthwise convs and residual adds, which act per
channel and so never mix it into a kept channel. The thin model reproduces
the masked one up to float rounding (tests check 1e-5).

Criteria:
    "l1" / "l2": norm of each filter (Li et al. 2017, "Pruning Filters for
        Efficient ConvNets", https://arxiv.org/abs/1608.08710); a class
        spanning several layers sums its filters' norms.
    "bn_scale": |gamma| of the BatchNorm layers on the channel (network
        slimming, Liu et al. 2017, https://arxiv.org/abs/1708.06519); train
        with `tfcompress.regularizers` L1 on the BN scales first.
    "taylor": first-order Taylor estimate of the loss change when the channel
        is removed, (sum of dL/dgate over the channel's gates)^2 averaged over
        a few batches, with a gate of 1 on the channel wherever a layer mixes
        it (Molchanov et al. 2019, "Importance Estimation for Neural Network
        Pruning", https://arxiv.org/abs/1906.10771). Needs data=(x, y).

Modules: `config` (ChannelPruningConfig), `graph` (channel dependencies, MACs),
`importance` (the criteria), `plan` (how many channels go, and which; the
ChannelPlan), `rebuild` (the thin and masked models) and `prune` (the entry
points). The layer-graph walking they share with `tfcompress.lowrank` is in
`tfcompress.surgery`.
"""

from tfcompress.channel_pruning.config import CRITERIA, ChannelPruningConfig, ChannelPruningError
from tfcompress.channel_pruning.graph import count_macs
from tfcompress.channel_pruning.plan import ChannelPlan, format_plan
from tfcompress.channel_pruning.prune import fine_tune, mask_channels, prune_channels
from tfcompress.channel_pruning.rebuild import ChannelMask
from tfcompress import surgery

__all__ = ["ChannelPruningError", "ChannelPruningConfig", "ChannelPlan", "ChannelMask",
           "prune_channels", "mask_channels", "format_plan", "fine_tune", "count_macs",
           "graph_nodes", "rebuild_model", "CRITERIA"]


# tfcompress.surgery's helpers, raising ChannelPruningError as they did when they lived here.
def graph_nodes(model):
    """The layer calls of a functional or Sequential model, in an order that runs it
    (`tfcompress.surgery.graph_nodes`)."""
    return surgery.graph_nodes(model, ChannelPruningError)


def rebuild_model(model, call_layer):
    """Rebuilds a model node by node as a functional model (`tfcompress.surgery.rebuild_model`)."""
    return surgery.rebuild_model(model, call_layer, ChannelPruningError)


def clone_layer(layer, **changes):
    """A new, unbuilt layer with `layer`'s config and `changes`
    (`tfcompress.surgery.clone_layer`)."""
    return surgery.clone_layer(layer, ChannelPruningError, **changes)
