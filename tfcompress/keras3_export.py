"""Keras 3 models out: a float or pruned tf_keras model as a Keras 3 `.keras` file, verified.

For users who keep training in Keras 3 (`import keras`, TF 2.16+). The reverse of
`keras3_import`: the tf_keras model's graph is replayed in Keras 3 from its own
config, layer by layer (configs translated: InputLayer `batch_input_shape` ->
`batch_shape`, LeakyReLU `alpha` -> `negative_slope`, tf_keras-only keys such as a
DepthwiseConv2D's `groups=1` dropped, tfcompress's hard-swish / hard-sigmoid back to
Keras 3's `hard_silu` / `hard_sigmoid`), the weights are copied, and the result must
compute what the tf_keras model computes on the probe batches
(`equivalence.check_same`) before it is written, and again after Keras 3 reads the
file back.

Not exported: QAT models (their TFMOT wrappers exist only in tf_keras), pruning
wrappers (strip them first), tf_keras's own `hard_sigmoid` (0.2x + 0.5: Keras 3 has
no such activation), and TF-op layers other than a few element-wise ones (`_OPS`).

Example:
    save_keras3(model, "runs/x/03-prune/03-prune_keras3.keras")
    # CLI: tfcompress export model.keras --keras3 --out DIR; recipe: export: {keras3: true}
"""

import inspect
import os
import warnings

from tfcompress.errors import TfcompressError
from tfcompress.keras import ensure_tf_keras_model, keras, keras3_package, tf
from tfcompress.equivalence import check_same, copy_weights
from tfcompress.keras3_import import replay_nodes


class Keras3ExportError(TfcompressError, ValueError):
    """The model cannot be written as a Keras 3 file; the message says why."""


# tfcompress's activations (serialized under their registered names) -> Keras 3's.
_ACTIVATIONS = {"tfcompress>hard_swish": "hard_silu", "tfcompress>hard_sigmoid": "hard_sigmoid"}
# tf_keras keys Keras 3 does not have, with the values that mean "not used" (dropped).
# (None: any value; `rng_type` is how tf_keras draws Dropout masks, Keras 3 has its own.)
_UNUSED = {"groups": (1,), "dynamic": (False,), "ragged": (False,), "sparse": (False,),
           "batch_size": (None,), "input_dim": (None,), "rng_type": None}
_RENAMED = {("LeakyReLU", "alpha"): "negative_slope",
            ("InputLayer", "batch_input_shape"): "batch_shape"}


def to_keras3(model, what=None):
    """The Keras 3 model equal to the tf_keras `model` (rebuilt, weights copied, verified).

    Raises:
        Keras3ExportError: a layer Keras 3 cannot hold, or outputs that differ.
    """
    model = ensure_tf_keras_model(model)
    what = what or f"model {model.name!r}"
    from tfcompress.quantization import is_qat_model
    if is_qat_model(model):
        raise Keras3ExportError(f"{what}: a QAT model has TFMOT wrappers that exist only in "
                                "tf_keras; export its int8 TFLite file, or the model before QAT")
    wrapped = [layer.name for layer in model.layers if type(layer).__name__ == "PruneLowMagnitude"]
    if wrapped:
        raise Keras3ExportError(f"{what}: layers {', '.join(wrapped[:5])} still have pruning "
                                "wrappers; strip them first (tfcompress.pruning.strip_pruning)")
    replay = _Replay(what)
    model3 = replay.model(type(model).__name__, model.get_config())
    try:
        copy_weights(model, model3, what)
        check_same(model, model3, _pairs(model, model3),
                   f"{what}: cannot write it as a Keras 3 model: the Keras 3 model differs")
    except TfcompressError as e:
        raise Keras3ExportError(str(e)) from e
    return model3


def save_keras3(model, path):
    """Writes `model` as a Keras 3 `.keras` file (atomically), checked after reading it
    back with Keras 3; returns the path."""
    from tfcompress.saving import save_model
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise Keras3ExportError(f"{path}: a Keras 3 file must end in .keras")
    model3 = to_keras3(model, f"model {model.name!r}")
    with warnings.catch_warnings():
        # Keras 3.15's save warns once per variable under NumPy 2 (its __array__ lacks
        # `copy`): its own noise, not the user's to fix.
        warnings.filterwarnings("ignore", message="__array__ implementation",
                                category=DeprecationWarning)
        save_model(model3, path)
    again = keras3_package().saving.load_model(path, compile=False)
    check_same(model, again, [], f"{path}: Keras 3 read back a model that differs")
    return path


def _pairs(model, model3):
    """(name, tf_keras output, Keras 3 output) of the top-level layers both have once."""
    keras3 = keras3_package()
    by_name = {layer.name: layer for layer in model3.layers}
    pairs = []
    for layer in model.layers:
        other = by_name.get(layer.name)
        if other is None or isinstance(layer, (keras.Model, keras.layers.InputLayer)) or \
                isinstance(other, keras3.Model) or len(layer._inbound_nodes) != 1 or \
                len(other._inbound_nodes) != 1:
            continue
        pairs.append((layer.name, tf.nest.flatten(layer.output)[0],
                      tf.nest.flatten(other.output)[0]))
    return pairs


class _Replay:
    """Rebuilds tf_keras model configs in Keras 3 (see the module docstring)."""

    def __init__(self, what):
        self.what = what
        self.keras3 = keras3_package()

    def fail(self, message):
        raise Keras3ExportError(f"{self.what}: cannot write it as a Keras 3 model: {message}")

    def model(self, kind, config):
        if kind == "Sequential":
            layers = [self.layer(c) for c in config["layers"]]
            model = self.keras3.Sequential(layers, name=config.get("name"))
        elif "input_layers" in config:
            model = self.functional(config)
        else:
            self.fail(f"{kind} is a subclassed model: only functional and sequential models "
                      "can be written as Keras 3 files here")
        if config.get("trainable") is False:
            model.trainable = False
        return model

    def layer(self, layer_config):
        kind = layer_config["class_name"]
        config = layer_config["config"]
        if kind in ("Functional", "Sequential", "Model") and "layers" in config:
            return self.model(kind, config)
        cls = getattr(self.keras3.layers, kind, None)
        if cls is None:
            self.fail(f"layer {config.get('name')!r} is a {kind}, which Keras 3 has no class for")
        return cls.from_config(self.translate(kind, config))

    def translate(self, kind, config):
        cls = getattr(self.keras3.layers, kind)
        accepted = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                accepted |= {p.name for p in inspect.signature(init).parameters.values()}
            if klass is self.keras3.layers.Layer:
                break
        out = {}
        for key, value in config.items():
            key = _RENAMED.get((kind, key), key)
            if key == "activation":
                value = self.activation(value, config.get("name"))
            if kind == "BatchNormalization" and key == "axis" and isinstance(value, list) \
                    and len(value) == 1:
                value = value[0]  # tf_keras keeps a list, Keras 3 wants the int
            if key not in accepted:
                if key in _UNUSED and (_UNUSED[key] is None or value in _UNUSED[key]):
                    continue
                self.fail(f"layer {config.get('name')!r} ({kind}) sets {key}={value!r}, which "
                          "Keras 3 has no equivalent for")
            out[key] = value
        return out

    def activation(self, value, layer):
        name = value.get("config") if isinstance(value, dict) else value
        if name in _ACTIVATIONS:
            return _ACTIVATIONS[name]
        if name == "hard_sigmoid":
            self.fail(f"layer {layer!r} uses tf_keras's hard_sigmoid (0.2x + 0.5), which "
                      "Keras 3 does not have (its hard_sigmoid is relu6(x + 3) / 6)")
        try:
            self.keras3.activations.get(name)
        except (ValueError, TypeError):
            self.fail(f"layer {layer!r} uses the activation {name!r}, which Keras 3 has not")
        return name

    def functional(self, config):
        nodes, pending = {}, []
        for layer_config in config["layers"]:
            name, kind = layer_config["name"], layer_config["class_name"]
            if kind == "InputLayer":
                inner = self.translate(kind, layer_config["config"])
                nodes[name] = [self.keras3.Input(batch_shape=inner.get("batch_shape"),
                                                 dtype=inner.get("dtype"), name=name)]
                continue
            target = layer_config if kind in _OPS_CLASSES else self.layer(layer_config)
            # tf_keras counts a nested network's own node as its node 0.
            nodes[name] = [None] if _is_network(layer_config) else []
            pending += [(name, target, node) for node in layer_config["inbound_nodes"]]
        replay_nodes(pending, nodes, self.arguments, self.call, self.fail)

        def tensor(entry):
            return tf.nest.flatten(nodes[entry[0]][entry[1]])[entry[2]]

        inputs = [tensor(e) for e in config["input_layers"]]
        outputs = [tensor(e) for e in config["output_layers"]]
        return self.keras3.Model(inputs if len(inputs) > 1 else inputs[0],
                                 outputs if len(outputs) > 1 else outputs[0],
                                 name=config.get("name"))

    def arguments(self, node, nodes):
        """(tensors, kwargs) of a tf_keras node: [[name, node, tensor, kwargs], ...]."""
        def tensor(entry):
            name, index, which = entry[:3]
            if name not in nodes or len(nodes[name]) <= index or nodes[name][index] is None:
                raise LookupError(name)
            return tf.nest.flatten(nodes[name][index])[which]

        def resolve(value):  # a kwarg naming another layer's output: [name, node, tensor]
            if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
                return tensor(value)
            return value

        entries = [node] if node and isinstance(node[0], str) else node
        tensors = [tensor(entry) for entry in entries]
        kwargs = dict(entries[0][3]) if entries and len(entries[0]) > 3 else {}
        return tensors, {k: resolve(v) for k, v in kwargs.items()}

    def call(self, name, target, tensors, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if not (k in ("training", "mask", "name")
                                                          and v in (None, True, False))}
        if isinstance(target, dict):
            function = target["config"].get("function")
            build = _OPS.get(function)
            if build is None:
                self.fail(f"{name!r} calls tf.{function}, which has no Keras 3 translation "
                          f"here (supported: {', '.join(sorted(_OPS))})")
            return build(self.keras3.ops, tensors, kwargs)
        return target(tensors[0] if len(tensors) == 1 else tensors, **kwargs)


def _is_network(layer_config):
    """tf_keras gives a nested Functional model (or a Sequential with an Input) a node 0 of
    its own, so its first call in the outer model is node 1."""
    kind, config = layer_config["class_name"], layer_config["config"]
    if kind in ("Functional", "Model"):
        return True
    layers = config.get("layers") or []
    return kind == "Sequential" and bool(layers) and layers[0]["class_name"] == "InputLayer"


def _binary(name):
    def build(ops, tensors, kwargs):
        return getattr(ops, name)(tensors[0], kwargs["y"])
    return build


_OPS_CLASSES = ("TFOpLambda",)
_OPS = {
    "__operators__.add": _binary("add"), "math.add": _binary("add"),
    "math.subtract": _binary("subtract"), "math.multiply": _binary("multiply"),
    "math.truediv": _binary("divide"), "math.maximum": _binary("maximum"),
    "math.minimum": _binary("minimum"),
    "nn.relu": lambda ops, t, kw: ops.relu(t[0]), "nn.relu6": lambda ops, t, kw: ops.relu6(t[0]),
    "math.reduce_mean": lambda ops, t, kw: ops.mean(t[0], axis=kw.get("axis"),
                                                    keepdims=kw.get("keepdims", False)),
}
