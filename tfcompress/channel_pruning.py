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
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tfcompress.checks import check_finite_weights
from tfcompress.errors import TfcompressError
from tfcompress.layer_selection import check_patterns, matches
from tfcompress.keras import ensure_tf_keras_model, keras, tf

__all__ = ["ChannelPruningError", "ChannelPruningConfig", "ChannelPlan", "ChannelMask",
           "prune_channels", "mask_channels", "format_plan", "fine_tune", "count_macs",
           "graph_nodes", "rebuild_model", "CRITERIA"]

CRITERIA = ("l1", "l2", "bn_scale", "taylor")


class ChannelPruningError(TfcompressError, ValueError):
    """A model or config that channel pruning cannot handle; the message says what to do."""


# ------------------------------------------------------------------------------ config


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
        criterion: "l1", "l2", "bn_scale" or "taylor" (see the module docstring).
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




# ------------------------------------------------------------------------------- graph


def _require_graph_model(model, error=ChannelPruningError):
    model = ensure_tf_keras_model(model)
    if not getattr(model, "_is_graph_network", False):
        raise error(f"{type(model).__name__} {model.name!r} is a subclassed (or unbuilt "
                    "Sequential) model, whose layer graph cannot be read: build it "
                    "functionally or give the Sequential an Input")
    return model


def graph_nodes(model):
    """The layer calls of a functional or Sequential model, in an order that runs it.

    Returns:
        A list of tf_keras `Node`s (node.layer, node.keras_inputs, node.outputs),
        model inputs left out.
    """
    model = _require_graph_model(model)
    return [node for depth in sorted(model._nodes_by_depth, reverse=True)
            for node in model._nodes_by_depth[depth] if not node.is_input]


class _Same:
    """A tensor_dict entry for Node.map_arguments, which pops one use per consumer."""

    def __init__(self, value):
        self.value = value

    def pop(self):
        return self.value


def clone_layer(layer, **changes):
    """A new, unbuilt layer with `layer`'s config (and `changes`)."""
    try:
        return layer.__class__.from_config(dict(layer.get_config(), **changes))
    except NotImplementedError as e:
        raise ChannelPruningError(f"cannot copy layer {layer.name!r} ({type(layer).__name__}): "
                                  f"{e}; give it a get_config()") from e


def rebuild_model(model, call_layer):
    """Rebuilds a functional / Sequential model node by node as a functional model.

    Args:
        model: the model.
        call_layer: `fn(node, args, kwargs) -> outputs`, called for every layer
            call in order with the new input tensors (node.layer is the
            original layer); returns the new outputs (same structure).

    Returns:
        A new functional model with the same inputs, outputs and name.
    """
    model = _require_graph_model(model)
    tensors, inputs = {}, []
    for tensor, layer in zip(model.inputs, model._input_layers):
        new = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=layer.name)
        tensors[str(id(tensor))] = _Same(new)
        inputs.append(new)
    for node in graph_nodes(model):
        args, kwargs = node.map_arguments(tensors)
        outputs = call_layer(node, args, kwargs)
        for ref, new in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
            tensors[ref] = _Same(new)
    outputs = [tensors[str(id(t))].value for t in model.outputs]
    return keras.Model(tf.nest.pack_sequence_as(model._nested_inputs, inputs),
                       tf.nest.pack_sequence_as(model._nested_outputs, outputs), name=model.name)


def _layer_classes(*names):
    return tuple(getattr(keras.layers, name) for name in names if hasattr(keras.layers, name))


# Exact classes (not isinstance): Conv2DTranspose subclasses Conv2D but keeps its
# kernel as [kh, kw, out, in], and a user subclass may compute anything.
_PRODUCERS = _layer_classes("Conv1D", "Conv2D", "Conv3D", "Dense")
_DEPTHWISE = _layer_classes("DepthwiseConv1D", "DepthwiseConv2D")
_BATCHNORM = _layer_classes("BatchNormalization")
_PER_CHANNEL = _layer_classes(  # keep channel positions: output channel c depends on input c only
    "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Activation", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise", "AlphaDropout",
    "ActivityRegularization", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "Resizing", "Rescaling", "CenterCrop", "RandomCrop", "RandomFlip", "RandomRotation",
    "RandomTranslation", "RandomZoom", "Identity")
_ELEMENTWISE = _layer_classes("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
_CONCATENATE = _layer_classes("Concatenate")
_FLATTEN = _layer_classes("Flatten")
_CROSS_CHANNEL_ACTIVATIONS = ("softmax", "log_softmax")


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation))


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in ("channels_last", None)


def _kind(layer, node, shared):
    """How a layer call treats channels: (kind, why) with kind one of produce,
    depthwise, batchnorm, same, flatten, elementwise, concat, barrier; `why`
    says why a barrier is one."""
    cls = type(layer)
    single = len(node.keras_inputs) == 1 and len(tf.nest.flatten(node.outputs)) == 1
    if shared:
        return "barrier", "it is called more than once (a shared layer)"
    if isinstance(layer, keras.Model):
        return "barrier", "it is a nested model (flatten it into the outer model)"
    if not single and cls not in _ELEMENTWISE + _CONCATENATE:
        return "barrier", "it takes several inputs or gives several outputs"
    if not _channels_last(layer):
        return "barrier", "it is channels_first"
    if cls in _PRODUCERS:
        if getattr(layer, "groups", 1) != 1:
            return "barrier", "it is a grouped convolution"
        return "produce", None
    if cls in _DEPTHWISE:
        return "depthwise", None
    if cls in _BATCHNORM:
        rank = len(node.keras_inputs[0].shape)
        if [a % rank for a in tf.nest.flatten(layer.axis)] != [rank - 1]:
            return "barrier", "it normalizes along an axis other than the last"
        return "batchnorm", None
    if cls in _PER_CHANNEL:
        if cls.__name__ == "Activation" and _activation_name(layer) in _CROSS_CHANNEL_ACTIVATIONS:
            return "barrier", "its activation mixes channels"
        if cls.__name__ == "Rescaling" and (np.ndim(layer.scale) or np.ndim(layer.offset)):
            return "barrier", "it scales each channel differently"
        return "same", None
    if cls in _FLATTEN:
        return "flatten", None
    if cls in _ELEMENTWISE:
        return "elementwise", None
    if cls in _CONCATENATE:
        return "concat", None
    return "barrier", "channel pruning does not know how it uses channels"


def _describe(layer):
    return f"layer {layer.name!r} ({type(layer).__name__})"


class _Graph:
    """The channel dependencies of a model.

    Every output channel of a Conv/Dense layer is an *atom*; model inputs and
    barrier outputs get atoms too, fixed (never pruned). Each tensor's last
    axis is described by its *layout*: the atom at every position. Atoms that
    are added together are joined (union-find); a joined set is a class,
    pruned as one.
    """

    def __init__(self, model):
        self.model = model
        self.nodes = graph_nodes(model)
        self.parent = []
        self.fixed = {}                  # atom -> why it is kept
        self.layout = {}                 # str(id(keras tensor)) -> atom per channel position
        self.producers = {}              # layer name -> (node, its atoms)
        self.calls = []                  # (node, kind) for produce / depthwise / batchnorm
        self.barriers = {}               # layer name -> why it is a barrier
        calls = {}
        for node in self.nodes:
            calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
        for tensor, layer in zip(model.inputs, model._input_layers):
            self.layout[str(id(tensor))] = self._new(
                tensor.shape[-1], f"they come straight from model input {layer.name!r}")
        for node in self.nodes:
            self._visit(node, calls[id(node.layer)] > 1)
        for tensor in model.outputs:
            layer = tensor._keras_history.layer
            self._fix(self.layout[str(id(tensor))], f"they are model output {layer.name!r}")
        self.roots = np.array([self._find(a) for a in range(len(self.parent))], dtype=np.int64)
        fixed_roots = {}
        for atom, reason in self.fixed.items():
            fixed_roots.setdefault(self.roots[atom], reason)
        self.fixed_roots = fixed_roots
        self._group()

    # -- union-find over atoms
    def _new(self, count, fixed_reason=None):
        start = len(self.parent)
        self.parent.extend(range(start, start + int(count)))
        atoms = np.arange(start, start + int(count), dtype=np.int64)
        if fixed_reason:
            self._fix(atoms, fixed_reason)
        return atoms

    def _fix(self, atoms, reason):
        for atom in np.unique(atoms):
            self.fixed.setdefault(int(atom), reason)

    def _find(self, atom):
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def _union(self, a, b):
        ra, rb = self._find(int(a)), self._find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    # -- walking the graph
    def _visit(self, node, shared):
        layer = node.layer
        ins = [self.layout[str(id(t))] for t in node.keras_inputs]
        outs = tf.nest.flatten(node.outputs)
        kind, why = _kind(layer, node, shared)
        out = None
        if kind == "produce":
            out = self._new(outs[0].shape[-1])
            if _activation_name(layer) in _CROSS_CHANNEL_ACTIVATIONS:
                self._fix(out, f"{_describe(layer)} applies softmax across them")
            self.producers[layer.name] = (node, out)
        elif kind == "depthwise":
            out = np.repeat(ins[0], layer.depth_multiplier)  # output c*m + j reads input c
        elif kind in ("batchnorm", "same"):
            out = ins[0]
        elif kind == "flatten":
            spatial = node.keras_inputs[0].shape[1:-1]
            if None not in spatial:  # NHWC flattens with the channel fastest
                out = np.tile(ins[0], int(np.prod(spatial, dtype=np.int64)))
        elif kind == "elementwise" and len({len(a) for a in ins}) == 1:
            for other in ins[1:]:
                for a, b in zip(ins[0], other):
                    self._union(a, b)
            out = ins[0]
        elif kind == "concat":
            rank = len(outs[0].shape)
            if layer.axis % rank == rank - 1:
                out = np.concatenate(ins)
            elif len({len(a) for a in ins}) == 1:  # joined along another axis: channels meet
                for other in ins[1:]:
                    for a, b in zip(ins[0], other):
                        self._union(a, b)
                out = ins[0]
        # A layout that disagrees with the real width means a layer we misread: keep it whole.
        if out is None or len(outs) != 1 or outs[0].shape[-1] != len(out):
            why = why or "its input and output channels do not line up"
            self.barriers[layer.name] = why
            for atoms in ins:
                self._fix(atoms, f"they feed {_describe(layer)}, which channel pruning cannot "
                                 f"see through: {why}")
            for tensor in outs:
                self.layout[str(id(tensor))] = self._new(
                    tensor.shape[-1] or 0, f"they come from {_describe(layer)}, which channel "
                                           f"pruning cannot see through: {why}")
            return
        self.layout[str(id(outs[0]))] = out
        if kind in ("produce", "depthwise", "batchnorm"):
            self.calls.append((node, kind))

    def input_layout(self, node):
        return self.layout[str(id(node.keras_inputs[0]))]

    def _group(self):
        """Joins producers that share a class into groups; lists each group's classes."""
        names = list(self.producers)
        owner = {}
        parent = list(range(len(names)))

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i

        for i, name in enumerate(names):
            for root in np.unique(self.roots[self.producers[name][1]]):
                if root in self.fixed_roots:
                    continue
                j = owner.setdefault(int(root), i)
                if find(i) != find(j):
                    parent[max(find(i), find(j))] = min(find(i), find(j))
        members = {}
        for i, name in enumerate(names):
            members.setdefault(find(i), []).append(name)
        self.groups = []
        for root_index in sorted(members):
            layers = members[root_index]
            roots = np.unique(np.concatenate([self.roots[self.producers[n][1]] for n in layers]))
            classes = np.array([r for r in roots if r not in self.fixed_roots], dtype=np.int64)
            if len(classes):
                self.groups.append({"layers": layers, "classes": classes})

    # -- costs
    def macs(self, keep_atom):
        """{layer name: MACs for one sample} of the Conv/Depthwise/Dense calls."""
        result = {}
        for node, kind in self.calls:
            if kind == "batchnorm":
                continue
            layer = node.layer
            out_shape = tf.nest.flatten(node.outputs)[0].shape
            spatial = out_shape[1:-1]
            if None in spatial:
                result[layer.name] = None
                continue
            positions = int(np.prod(spatial, dtype=np.int64))
            kernel = int(np.prod(getattr(layer, "kernel_size", ()), dtype=np.int64))
            kept_in = int(keep_atom[self.input_layout(node)].sum())
            if kind == "produce":
                kept_out = int(keep_atom[self.producers[layer.name][1]].sum())
                result[layer.name] = positions * kernel * kept_in * kept_out
            else:
                result[layer.name] = positions * kernel * kept_in * layer.depth_multiplier
        return result


def count_macs(model):
    """Multiply-accumulates of one sample, {layer name: MACs}, for Conv/Depthwise/Dense layers.

    Layers that channel pruning treats as barriers (grouped or channels_first
    convs, custom layers) are not counted. None where spatial sizes are unknown.

    Example:
        sum(count_macs(model).values())
    """
    graph = _Graph(_require_graph_model(model))
    return graph.macs(np.ones(len(graph.parent), dtype=bool))


# -------------------------------------------------------------------------- importance


def _class_sum(graph, atom_values):
    """Per-class sums of per-atom values, as an array indexed by root atom."""
    return np.bincount(graph.roots, weights=atom_values, minlength=len(graph.parent))


def _norm_importance(graph, order):
    values = np.zeros(len(graph.parent))
    for name, (node, atoms) in graph.producers.items():
        kernel = node.layer.kernel.numpy()
        flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
        values[atoms] += flat.sum(0) if order == 1 else np.sqrt((flat ** 2).sum(0))
    return _class_sum(graph, values)


def _bn_importance(graph, groups):
    values = np.zeros(len(graph.parent))
    covered = np.zeros(len(graph.parent), dtype=bool)
    for node, kind in graph.calls:
        if kind == "batchnorm" and node.layer.gamma is not None:
            layout = graph.input_layout(node)
            np.add.at(values, layout, np.abs(node.layer.gamma.numpy()))
            covered[layout] = True
    covered_roots = np.zeros(len(graph.parent), dtype=bool)
    covered_roots[graph.roots[covered]] = True
    for group in groups:
        missing = [c for c in group["classes"] if not covered_roots[c]]
        if missing:
            raise ChannelPruningError(
                f"criterion 'bn_scale' needs a BatchNormalization (with scale=True) on the "
                f"channels of layer {group['layers'][0]!r}, and {len(missing)} of them have "
                f"none: use criterion 'l1' or 'taylor', or exclude={[group['layers'][0]]!r}")
    return _class_sum(graph, values)


def _loss_for(model, y, outputs, loss):
    if loss is not None:
        return keras.losses.get(loss)
    out = outputs.numpy()
    probabilities = bool(np.all(out >= 0) and np.allclose(out.sum(-1), 1.0, atol=1e-3))
    if np.ndim(y) == out.ndim and np.shape(y)[-1] == out.shape[-1] and out.shape[-1] > 1:
        return keras.losses.CategoricalCrossentropy(from_logits=not probabilities)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)


def _check_data(model, data, what):
    try:
        x, y = data
        x, y = np.asarray(x), np.asarray(y)
    except (TypeError, ValueError):
        raise ChannelPruningError(f"{what} needs data=(x, y) arrays, got {type(data).__name__}"
                                  ) from None
    if len(x) != len(y) or len(x) == 0:
        raise ChannelPruningError(f"data: x has {len(x)} samples but y has {len(y)}; give "
                                  "matching, non-empty arrays")
    want = tuple(model.inputs[0].shape[1:])
    if len(model.inputs) != 1 or tuple(x.shape[1:]) != want:
        raise ChannelPruningError(f"data: x has samples of shape {tuple(x.shape[1:])} but model "
                                  f"{model.name!r} takes {want}")
    return x, y


def _taylor_importance(graph, config, data, loss):
    """(sum over the class's gates of dL/dgate)^2, averaged over batches."""
    model = graph.model
    x, y = _check_data(model, data, "criterion 'taylor'")
    prunable = np.ones(len(graph.parent), dtype=bool)
    prunable[list(graph.fixed_roots)] = False
    gates = {node.layer.name: np.ones(len(graph.input_layout(node)), np.float32)
             for node, kind in graph.calls
             if kind == "produce" and prunable[graph.roots[graph.input_layout(node)]].any()}
    gated, masks = _masked_model(model, gates)
    variables = [masks[name].mask for name in gates]
    layouts = [graph.roots[graph.input_layout(graph.producers[name][0])] for name in gates]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    batches = [order[i:i + config.batch_size]
               for i in range(0, len(x), config.batch_size)][:config.taylor_batches]
    total = np.zeros(len(graph.parent))
    loss_fn = None
    for index in batches:
        xb = tf.convert_to_tensor(x[index], model.inputs[0].dtype)
        with tf.GradientTape() as tape:
            tape.watch(variables)
            outputs = gated(xb, training=False)
            if loss_fn is None:
                loss_fn = _loss_for(model, y, outputs, loss)
            value = loss_fn(y[index], outputs)
        grads = tape.gradient(value, variables)
        per_class = np.zeros(len(graph.parent))
        for grad, roots in zip(grads, layouts):
            if grad is not None:
                np.add.at(per_class, roots, grad.numpy())
        total += per_class ** 2
    return total / max(len(batches), 1)


# ----------------------------------------------------------------------------- the plan


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
    for pattern in config.exclude:
        if not any(matches(pattern, layer) for layer in layers.values()):
            raise ChannelPruningError(f"exclude entry {pattern!r} matches no layer; the "
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
            raise ChannelPruningError(f"per_layer entry {pattern!r} matches {_describe(layer)}, "
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


def _plan(graph, config, data, loss):
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
    if config.criterion in ("l1", "l2"):
        importance = _norm_importance(graph, 1 if config.criterion == "l1" else 2)
    elif config.criterion == "bn_scale":
        importance = _bn_importance(graph, active)
    else:
        importance = _taylor_importance(graph, config, data, loss)
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


# ---------------------------------------------------------------------- rebuild & mask


def _slice_weights(layer, mask):
    """The weights of `layer` cut down to the kept channels in `mask` (in / out)."""
    cut_in, cut_out = mask["in"], mask["out"]
    weights = []
    for weight in layer.weights:
        value = weight.numpy()
        cls = type(layer)
        if cls in _BATCHNORM:
            value = value[cut_in]
        elif cls in _DEPTHWISE:
            value = value[..., cut_in, :] if value.ndim > 1 else value[
                np.repeat(cut_in, layer.depth_multiplier)]
        elif value.ndim > 1:  # a Conv / Dense kernel: [..., in, out]
            value = value[..., cut_in, :][..., cut_out]
        else:  # its bias
            value = value[cut_out]
        weights.append(value)
    return weights


def _thin_model(model, plan):
    new_layers, weights = {}, {}

    def call(node, args, kwargs):
        layer = node.layer
        if id(layer) not in new_layers:
            mask = plan.masks.get(layer.name)
            if mask is not None and mask["out"] is not None:
                key = "units" if type(layer).__name__ == "Dense" else "filters"
                new_layers[id(layer)] = clone_layer(layer, **{key: int(mask["out"].sum())})
            else:
                new_layers[id(layer)] = clone_layer(layer)
            weights[id(layer)] = (_slice_weights(layer, mask) if mask is not None
                                  else layer.get_weights())
        return new_layers[id(layer)](*args, **kwargs)

    thin = rebuild_model(model, call)
    for layer in model.layers:
        if id(layer) in new_layers:
            new_layers[id(layer)].set_weights(weights[id(layer)])
    return thin


@keras.utils.register_keras_serializable(package="tfcompress")
class ChannelMask(keras.layers.Layer):
    """Multiplies its input by a constant vector along the last axis (0/1: drop/keep).

    What `mask_channels` puts before every Conv/Dense layer that reads pruned
    channels; its `mask` is a non-trainable weight (the "taylor" criterion
    differentiates the loss with respect to it).
    """

    def __init__(self, mask, **kwargs):
        super().__init__(**kwargs)
        self.mask_values = np.asarray(mask, dtype=np.float32).reshape(-1)
        # Made here, not in build(): its shape is known, and Keras runs build()
        # through AutoGraph, which re-reads the source file.
        self.mask = self.add_weight(
            name="mask", shape=self.mask_values.shape, trainable=False,
            initializer=keras.initializers.Constant(self.mask_values))

    def call(self, inputs):
        return inputs * tf.cast(self.mask, inputs.dtype)

    def get_config(self):
        return dict(super().get_config(), mask=self.mask_values.tolist())


def _masked_model(model, masks):
    """The model with ChannelMask(masks[name]) before each named layer's input."""
    new_layers, mask_layers = {}, {}

    def call(node, args, kwargs):
        layer = node.layer
        if id(layer) not in new_layers:
            new_layers[id(layer)] = clone_layer(layer)
        if layer.name in masks:
            mask_layers[layer.name] = ChannelMask(masks[layer.name],
                                                  name=f"{layer.name}_channel_mask")
            args = (mask_layers[layer.name](args[0]),) + tuple(args[1:])
        return new_layers[id(layer)](*args, **kwargs)

    masked = rebuild_model(model, call)
    for layer in model.layers:
        if id(layer) in new_layers:
            new_layers[id(layer)].set_weights(layer.get_weights())
    return masked, mask_layers


def _check_plan(model, plan):
    if not isinstance(plan, ChannelPlan):
        raise ChannelPruningError(f"expected the ChannelPlan that prune_channels returned, got "
                                  f"{type(plan).__name__}")
    layers = {layer.name: layer for layer in model.layers}
    for name, mask in plan.masks.items():
        layer = layers.get(name)
        ok = layer is not None and (mask["out"] is None or (
            layer.output_shape[-1] == mask["out"].size))
        if not ok:
            raise ChannelPruningError(f"the plan does not fit model {model.name!r} (layer "
                                      f"{name!r} is missing or has another width); use the plan "
                                      "made for this model")


def mask_channels(model, plan):
    """The pruned-in-place equivalent of `plan`: full width, pruned channels zeroed.

    Every Conv/Dense layer that reads a pruned channel gets a `ChannelMask`
    layer in front (named `<layer>_channel_mask`) that zeroes it; the weights
    are copies of `model`'s. See the module docstring for why the mask sits
    there and not on the producer's weights.

    Example:
        thin, plan = prune_channels(model, config)
        masked = mask_channels(model, plan)
        np.testing.assert_allclose(masked(x), thin(x), atol=1e-5)
    """
    model = _require_graph_model(model)
    _check_plan(model, plan)
    masks = {name: mask["in"] for name, mask in plan.masks.items()
             if plan.masks[name]["out"] is not None and not mask["in"].all()}
    return _masked_model(model, masks)[0]


# -------------------------------------------------------------------------- public API


def prune_channels(model, config=None, data=None, loss=None):
    """Removes the least important channels and rebuilds a thinner model.

    Example:
        thin, plan = prune_channels(model, ChannelPruningConfig(0.5, "taylor"),
                                    data=(x_train[:512], y_train[:512]))
        print(format_plan(plan))

    Args:
        model: a built functional or Sequential tf_keras model (left untouched).
        config: a `ChannelPruningConfig`, a dict of its fields, or None (0.5, "l1").
        data: (x, y) arrays; needed by the "taylor" criterion.
        loss: the loss "taylor" differentiates; default sparse (or one-hot)
            categorical cross-entropy, from logits unless the model's outputs
            are probabilities.

    Returns:
        (thin, plan): a new, uncompiled functional model with the same layer
        names, and the `ChannelPlan`.

    Raises:
        ChannelPruningError: a subclassed or unbuilt model, a model with
            nothing to prune, a pattern that matches nothing or names a layer
            that cannot be pruned, missing data for "taylor", no BatchNorm
            for "bn_scale", an unreachable target_macs.
        TypeError: a Keras 3 model.
    """
    model = _require_graph_model(model)
    if config is None:
        config = ChannelPruningConfig()
    elif isinstance(config, dict):
        config = ChannelPruningConfig(**config)
    elif not isinstance(config, ChannelPruningConfig):
        raise ChannelPruningError(f"config must be a ChannelPruningConfig, a dict or None, got "
                                  f"{type(config).__name__}")
    if config.criterion == "taylor" and data is None:
        raise ChannelPruningError("criterion 'taylor' needs data=(x, y): a few batches of "
                                  "training samples to take gradients on")
    # NaN filter norms sort arbitrarily: the wrong channels would be removed.
    check_finite_weights(model, "the model to channel-prune")
    plan = _plan(_Graph(model), config, data, loss)
    thin = _thin_model(model, plan)
    params = {layer.name: layer.count_params() for layer in model.layers}
    thin_params = {layer.name: layer.count_params() for layer in thin.layers}
    for row in plan.layers:
        row["params_before"] = int(params[row["layer"]])
        row["params_after"] = int(thin_params[row["layer"]])
    plan.params_after = int(thin.count_params())
    return thin, plan


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


def fine_tune(model, x, y, epochs=1, batch_size=128, learning_rate=1e-3, validation_data=None,
              loss=None, verbose=0):
    """Compiles (Adam, cosine-decayed rate, cross-entropy, accuracy) and fits `model`.

    A convenience for recovering accuracy after `prune_channels`; for
    distillation from the unpruned model use `tfcompress.distillation`.

    Example:
        history = fine_tune(thin, x_train, y_train, epochs=2)

    Returns:
        The Keras History.
    """
    model = ensure_tf_keras_model(model)
    steps = int(np.ceil(len(x) / batch_size)) * epochs
    if loss is None:
        loss = _loss_for(model, y, model(np.asarray(x[:8]), training=False), None)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(steps, 1), alpha=0.01)), loss=loss, metrics=["accuracy"])
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True,
                     validation_data=validation_data, verbose=verbose)
