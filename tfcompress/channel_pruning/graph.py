"""Channel dependencies: which output channels of which layers must be pruned together.

Every output channel of a Conv/Dense layer is an *atom*; layers that keep
channel positions (BatchNorm, activations, pooling, depthwise convs...) carry a
tensor's atoms through, residual adds join them into *classes* (pruned as one),
and layers whose producers share a class form a *group*. Barriers (layers
channel pruning cannot see through) and model inputs / outputs fix their atoms.
See the package docstring for the rules.
"""

import numpy as np

from tfcompress._compat import input_layers, keras_history_layer
from tfcompress.channel_pruning.config import ChannelPruningError
from tfcompress.keras import keras, tf
from tfcompress.layer_selection import describe
from tfcompress.surgery import graph_nodes, require_graph_model


def _layer_classes(*names):
    return tuple(getattr(keras.layers, name) for name in names if hasattr(keras.layers, name))


# Exact classes (not isinstance): Conv2DTranspose subclasses Conv2D but keeps its
# kernel as [kh, kw, out, in], and a user subclass may compute anything.
_PRODUCERS = _layer_classes("Conv1D", "Conv2D", "Conv3D", "Dense")
DEPTHWISE = _layer_classes("DepthwiseConv1D", "DepthwiseConv2D")
BATCHNORM = _layer_classes("BatchNormalization")
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
    if cls in DEPTHWISE:
        return "depthwise", None
    if cls in BATCHNORM:
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


class ChannelGraph:
    """The channel dependencies of a model.

    Every output channel of a Conv/Dense layer is an *atom*; model inputs and
    barrier outputs get atoms too, fixed (never pruned). Each tensor's last
    axis is described by its *layout*: the atom at every position. Atoms that
    are added together are joined (union-find); a joined set is a class,
    pruned as one.
    """

    def __init__(self, model):
        self.model = model
        self.nodes = graph_nodes(model, ChannelPruningError)
        self.parent = []
        self.fixed = {}                  # atom -> why it is kept
        self.layout = {}                 # str(id(keras tensor)) -> atom per channel position
        self.producers = {}              # layer name -> (node, its atoms)
        self.calls = []                  # (node, kind) for produce / depthwise / batchnorm
        self.barriers = {}               # layer name -> why it is a barrier
        calls = {}
        for node in self.nodes:
            calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
        for tensor, layer in zip(model.inputs, input_layers(model)):
            self.layout[str(id(tensor))] = self._new(
                tensor.shape[-1], f"they come straight from model input {layer.name!r}")
        for node in self.nodes:
            self._visit(node, calls[id(node.layer)] > 1)
        for tensor in model.outputs:
            layer = keras_history_layer(tensor)
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
                self._fix(out, f"{describe(layer)} applies softmax across them")
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
                self._fix(atoms, f"they feed {describe(layer)}, which channel pruning cannot "
                                 f"see through: {why}")
            for tensor in outs:
                self.layout[str(id(tensor))] = self._new(
                    tensor.shape[-1] or 0, f"they come from {describe(layer)}, which channel "
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
    graph = ChannelGraph(require_graph_model(model, ChannelPruningError))
    return graph.macs(np.ones(len(graph.parent), dtype=bool))
