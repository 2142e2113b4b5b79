"""Keras 3 models in: a Keras 3 file or model becomes an equivalent tf_keras model, verified.

TFMOT works on tf_keras (Keras 2) models only, and a Keras 3 file (`import keras`,
TF 2.16+) does not load in tf_keras: its config differs in many small ways. So
the Keras 3 model is loaded with Keras 3 (safe mode, after `saving.unsafe_reason`
scanned its config), and its graph is replayed in tf_keras layer by layer from
its own config:

    * each layer's config is translated (`_translate`): dtype-policy dicts become
      dtype names; serialized initializers/regularizers/constraints lose Keras 3
      keys tf_keras lacks (`input_axes`...) when they hold no value; renamed keys
      are renamed (InputLayer `batch_shape`, LeakyReLU `negative_slope` -> `alpha`);
      a Keras 3 key with a value tf_keras cannot honour (LayerNormalization
      `rms_scaling=True`, a Dense `quantization_config`, LoRA) refuses the import;
    * activations Keras 3 defines differently (`hard_sigmoid`) or that tf_keras
      lacks (`hard_silu`/`hard_swish`) map to `tfcompress.activations`;
    * Keras 3 op nodes (`x + 3.0`, `keras.ops.mean`...) become Keras layers where one
      computes the same (`x + 3.0` a Rescaling, `x * y` a Multiply, `ops.relu` an
      Activation, a spatial `ops.mean` a pooling layer: TFMOT can quantize those),
      else TF-op layers (`OPS`);
    * nested models are rebuilt the same way and called as layers; node indices
      follow Keras 3's own `functional_from_config` (in tf_keras a nested model's node
      0 is the model itself; in Keras 3 it is its first call);
    * a node's `training=False` is dropped: Keras 3 overrides it with the model's
      own `training` flag, tf_keras would keep it, freezing Dropout during fine-tuning.

The weights are then copied layer by layer, and the import is always verified
(`equivalence`): both models run on two fixed probe batches, and the import is
refused, naming the first layer or op whose output differs, unless every output and
every top-level layer's and op's output agree within `equivalence.TOLERANCE`
(relative to max(1, the largest value)). The op table is `keras3_ops`.

Example:
    model = tfcompress.load_model("keras3_model.keras")      # finds Keras 3 by itself
    model = keras3_import.import_model(keras3_model)          # an in-memory Keras 3 model
"""

import json
import os
import warnings
import zipfile

import numpy as np

from tfcompress import activations
from tfcompress.equivalence import check_same, copy_weights, short_name
from tfcompress.errors import ModelLoadError
from tfcompress.keras import keras, keras3_package, tf
from tfcompress.keras3_ops import OPS, Unsupported

# The Keras 3 versions whose configs this translation was tested on (major.minor).
TESTED_VERSIONS = ("3.15",)

_SUBCLASSED_WAY_OUT = (
    "it is a subclassed Keras 3 model, which has no graph config to import; build the same "
    "model with tf_keras (your class, with `import tf_keras as keras` and the same layer "
    "attributes), call it once, load the weights with "
    "tfcompress.keras3_import.load_weights(twin, PATH) (a .keras or .weights.h5 file), then "
    "save it with tfcompress.save_model")


def keras3_version(path):
    """The Keras version that saved a `.keras`/`.h5` file if it is 3.x, else None."""
    path = os.fspath(path)
    version = None
    try:
        if path.endswith(".keras") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                version = json.loads(archive.read("metadata.json")).get("keras_version")
        elif path.endswith((".h5", ".hdf5")):
            import h5py
            if h5py.is_hdf5(path):
                with h5py.File(path, "r") as f:
                    version = f.attrs.get("keras_version")
    except (KeyError, ValueError, OSError, AttributeError, zipfile.BadZipFile):
        return None
    version = version.decode() if isinstance(version, bytes) else version
    return version if isinstance(version, str) and version.startswith("3") else None


def import_model(source, what=None, safe_mode=True):
    """A tf_keras model equal to the Keras 3 model `source` (a path or a Keras 3 model).

    Call `tfcompress.load_model` for files: it scans the config for unsafe content
    first and then calls this.

    Args:
        source: a Keras 3 `.keras`/`.h5` file, or an in-memory Keras 3 model.
        what: how to name the source in errors (default: the path or model name).
        safe_mode: Keras 3's safe mode while loading a file (`load_model` turns it
            off only with allow_unsafe=True).

    Raises:
        ModelLoadError: the model cannot be rebuilt in tf_keras, or the rebuilt
            model's outputs differ (naming the first layer that differs).
    """
    keras3 = keras3_package()
    if isinstance(source, (str, os.PathLike)):
        what = what or os.fspath(source)
        version = keras3_version(source) or keras3.__version__
        _check_version(version, what)
        if not _has_graph(source):
            raise ModelLoadError(f"{what}: cannot import: {_SUBCLASSED_WAY_OUT}")
        try:
            model3 = keras3.saving.load_model(os.fspath(source), compile=False,
                                              safe_mode=safe_mode)
        except Exception as e:  # Keras 3 raises many types; all mean "cannot load"
            raise ModelLoadError(f"{what}: cannot load the Keras 3 model with Keras "
                                 f"{keras3.__version__}: {_line(e)}") from e
    else:
        model3 = source
        what = what or f"Keras 3 model {getattr(model3, 'name', '?')!r}"
        _check_version(keras3.__version__, what)
    model, tensors = _rebuild(model3, what)
    copy_weights(model3, model, f"{what}: cannot import")
    verify(model3, model, what, tensors)
    return model


def _has_graph(path):
    """False for a file whose model config has no layers (a subclassed model)."""
    from tfcompress.saving import saved_configs
    configs = [c for c in saved_configs(os.fspath(path)) if isinstance(c, dict)
               and "class_name" in c and isinstance(c.get("config"), dict)]
    return not configs or "layers" in configs[0]["config"]


def _check_version(version, what):
    if ".".join(version.split(".")[:2]) not in TESTED_VERSIONS:
        warnings.warn(f"{what}: saved by Keras {version}; tfcompress's Keras 3 import was "
                      f"tested with Keras {', '.join(TESTED_VERSIONS)}; the imported model is "
                      "verified against the original all the same", stacklevel=3)


def _line(e):
    return " ".join(str(e).split())[:300] or type(e).__name__


# ----------------------------------------------------------------------------- rebuild

def _rebuild(model3, what):
    """The tf_keras model with model3's graph and fresh weights."""
    try:
        config = model3.get_config()
    except NotImplementedError:
        config = None
    kind = type(model3).__name__
    if not isinstance(config, dict) or "layers" not in config:
        raise ModelLoadError(f"{what}: cannot import: {_SUBCLASSED_WAY_OUT}")
    if kind not in ("Functional", "Sequential", "Model"):
        # A subclass of Functional (keras.applications models are plain Functional).
        kind = "Sequential" if "input_layers" not in config else "Functional"
    replay = _Replay(what)
    model = replay.model({"class_name": kind, "config": config})
    return model, replay.tensors


class _Replay:
    """Rebuilds Keras 3 model configs in tf_keras (see the module docstring)."""

    def __init__(self, what):
        self.what = what
        self.tensors = {}  # the outer model's {layer or op name: first output tensor}

    def fail(self, message):
        raise ModelLoadError(f"{self.what}: cannot import: {message}")

    def model(self, layer_config):
        kind, config = layer_config["class_name"], layer_config["config"]
        if kind == "Sequential":
            return self.sequential(config)
        if kind in ("Functional", "Model"):
            return self.functional(config)
        self.fail(f"model class {kind} is not a Functional or Sequential model; "
                  f"{_SUBCLASSED_WAY_OUT}")

    def sequential(self, config):
        layers = list(config["layers"])
        model = keras.Sequential(name=config.get("name"))
        if layers and layers[0]["class_name"] == "InputLayer":
            model.add(self.input(layers.pop(0)["config"]))
        elif config.get("build_input_shape"):
            model.add(keras.Input(batch_shape=config["build_input_shape"]))
        for layer_config in layers:
            if _is_op(layer_config):
                self.fail(f"{layer_config['name']} is a Keras 3 op inside a Sequential model")
            model.add(self.layer(layer_config))
        if config.get("trainable") is False:  # True would unfreeze every layer inside
            model.trainable = False
        return model

    def input(self, config):
        if config.get("ragged") or config.get("sparse"):
            self.fail(f"input {config.get('name')!r} is ragged or sparse")
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        return keras.Input(batch_shape=shape, dtype=_dtype(config.get("dtype")),
                           name=config.get("name"))

    def layer(self, layer_config):
        """A tf_keras layer (or nested model) for one Keras 3 layer config."""
        kind = layer_config["class_name"]
        module = layer_config.get("module") or ""
        name = layer_config.get("name") or layer_config["config"].get("name")
        if kind in ("Functional", "Sequential", "Model") and "layers" in layer_config["config"]:
            return self.model(layer_config)
        cls = getattr(keras.layers, kind, None)
        if not module.startswith("keras") or cls is None:
            self.fail(f"layer {name!r} is a {module}.{kind}, which tf_keras has no class "
                      "for (a custom Keras 3 layer); " + _SUBCLASSED_WAY_OUT.split("; ", 1)[1])
        config = _translate(kind, layer_config["config"], self.fail)
        try:
            return cls.from_config(config)
        except Exception as e:  # tf_keras refuses a config in many ways
            self.fail(f"layer {name!r} ({kind}): tf_keras cannot build it from the translated "
                      f"config: {_line(e)}")

    def functional(self, config):
        nodes = {}    # layer name -> outputs of its calls, in Keras 3's node order
        functional = set()  # names of nested Functional models
        pending = []  # (layer name, layer or op config, node data), in config order
        for layer_config in config["layers"]:
            name = layer_config["name"]
            if layer_config["class_name"] == "InputLayer":
                nodes[name] = [self.input(layer_config["config"])]
                continue
            target = layer_config if _is_op(layer_config) else self.layer(layer_config)
            nodes[name] = []
            if layer_config["class_name"] in ("Functional", "Model"):
                functional.add(name)
            pending += [(name, target, node) for node in layer_config["inbound_nodes"]]
        replay_nodes(pending, nodes, self.arguments, self.call, self.fail)

        def tensor(name, node_index, tensor_index):
            # As Keras 3.15's functional_from_config.get_tensor, which subtracts one for a
            # nested Functional model (its node 0 is then its last call, Python-style).
            if name in functional:
                node_index -= 1
            return tf.nest.flatten(nodes[name][node_index])[tensor_index]

        inputs = _map_leaves(config["input_layers"], tensor)
        outputs = _map_leaves(config["output_layers"], tensor)
        model = keras.Model(inputs, outputs, name=config.get("name"))
        if config.get("trainable") is False:  # True would unfreeze every layer inside
            model.trainable = False
        # Kept last, so the outermost model's survive the nested models' replays.
        self.tensors = {name: tf.nest.flatten(outputs[0])[0] for name, outputs in nodes.items()
                        if len(outputs) == 1}
        return model

    def arguments(self, node, nodes):
        """(args, kwargs) of a Keras 3 node, with tf_keras tensors in place."""
        def convert(value):
            if isinstance(value, (list, tuple)):  # tuples: an in-memory model's config
                return type(value)(convert(v) for v in value)
            if not isinstance(value, dict):
                return value
            kind = value.get("class_name")
            inner = value.get("config")
            if kind == "__keras_tensor__":
                name, node_index, tensor_index = inner["keras_history"]
                if name not in nodes or len(nodes[name]) <= node_index:
                    raise _NotYet()
                return tf.nest.flatten(nodes[name][node_index])[tensor_index]
            if kind == "__tuple__":
                return tuple(convert(v) for v in inner["value"])
            if kind == "__slice__":
                return slice(inner.get("start"), inner.get("stop"), inner.get("step"))
            if kind in ("__numpy__", "__tensor__"):
                return np.asarray(inner["value"], dtype=inner.get("dtype"))
            if kind is None:
                return {k: convert(v) for k, v in value.items()}
            self.fail(f"a node argument of type {kind} is not supported")

        if isinstance(node, list):  # the legacy form: [[name, node, tensor, kwargs], ...]
            tensors = [convert({"class_name": "__keras_tensor__",
                                "config": {"keras_history": entry[:3]}}) for entry in node]
            kwargs = node[0][3] if node and len(node[0]) > 3 else {}
            return [tensors[0] if len(tensors) == 1 else tensors], dict(kwargs)
        return list(convert(node.get("args", []))), convert(node.get("kwargs", {}))

    def call(self, name, target, args, kwargs):
        # Keras 3 lets the model's own `training` override a node's; tf_keras would not.
        kwargs = {k: v for k, v in kwargs.items()
                  if not (k == "training" and isinstance(v, bool)) and
                  not (k == "mask" and v is None)}
        if isinstance(target, dict):
            return self.op(name, target, args, kwargs)
        return target(*args, **kwargs)

    def op(self, name, layer_config, args, kwargs):
        """A Keras 3 op node (`x + 3.0`, keras.ops.mean...) as a tf_keras layer."""
        kind = layer_config["class_name"]
        config = dict(layer_config.get("config") or {})
        config.pop("name", None)
        build = OPS.get(kind)
        if build is None:
            self.fail(f"{name!r} is the Keras 3 op {kind} ({layer_config.get('module')}), "
                      f"which tfcompress cannot import yet; supported ops: "
                      f"{', '.join(sorted(OPS))}; replace it with a Keras layer")
        try:
            return build(name, args, kwargs, config)
        except Unsupported as e:
            self.fail(f"{name!r} (Keras 3 op {kind}): {e}")


class _NotYet(LookupError):
    """A node's input is produced by a node not replayed yet."""


def replay_nodes(pending, nodes, arguments, call, fail):
    """Calls each pending node once its inputs exist, as Keras's own `from_config` does
    (a layer shared at several depths has nodes that must wait for later ones).

    Args:
        pending: [(layer name, layer or op, node data)], in config order.
        nodes: {layer name: [outputs of its nodes so far]}; appended to.
        arguments: node data, nodes -> (args, kwargs); raises LookupError when an
            input is not there yet.
        call: (name, layer or op, args, kwargs) -> the node's outputs.
        fail: called with the message when some nodes can never run.
    """
    while pending:
        waiting, blocked = [], set()
        for name, target, node in pending:
            try:
                if name in blocked:  # a layer's nodes run in order: node k is its k-th call
                    raise LookupError(name)
                args, kwargs = arguments(node, nodes)
            except LookupError:
                waiting.append((name, target, node))
                blocked.add(name)
                continue
            nodes[name].append(call(name, target, args, kwargs))
        if len(waiting) == len(pending):
            fail("its graph has nodes whose inputs never appear: "
                 + ", ".join(sorted({name for name, _, _ in waiting})[:5]))
        pending = waiting


def _is_op(layer_config):
    return (layer_config.get("module") or "").startswith("keras.src.ops")


def _map_leaves(structure, tensor):
    """Keras 3's `input_layers`/`output_layers`: [name, node, tensor] leaves, nested."""
    if isinstance(structure, (list, tuple)) and len(structure) == 3 and \
            isinstance(structure[0], str):
        return tensor(*structure)
    if isinstance(structure, dict):
        return {k: _map_leaves(v, tensor) for k, v in structure.items()}
    return [_map_leaves(v, tensor) for v in structure]


# ---------------------------------------------------------------------- config translation

# Keras 3 keys tf_keras does not have, with the values that mean "not used" (dropped).
_UNUSED = {"quantization_config": (None,), "lora_rank": (None,), "lora_alpha": None,
           "optional": (False,), "synchronized": (False,), "rms_scaling": (False,),
           "input_axes": (None,), "output_axes": (None,), "gradient_checkpointing": (False,),
           "flash_attention": (None,), "seed": (None,)}
_RENAMED = {("LeakyReLU", "negative_slope"): "alpha",
            ("InputLayer", "batch_shape"): "batch_input_shape"}
_BASE_LAYER_KEYS = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape",
                    "batch_input_shape", "batch_size", "weights", "activity_regularizer",
                    "autocast", "input_spec"}


def _translate(kind, config, fail):
    """A Keras 3 layer config as the tf_keras config of the same layer."""
    cls = getattr(keras.layers, kind)
    accepted = _accepted_keys(cls) | _BASE_LAYER_KEYS
    out = {}
    for key, value in config.items():
        key = _RENAMED.get((kind, key), key)
        if key == "dtype":
            out[key] = _dtype(value, fail)
        elif key == "activation" or key == "recurrent_activation":
            out[key] = _activation(value, config.get("name"), fail)
        elif key not in accepted:
            if key in _UNUSED and (_UNUSED[key] is None or value in _UNUSED[key]):
                continue
            fail(f"layer {config.get('name')!r} ({kind}) sets {key}={value!r}, which tf_keras "
                 f"{keras.__version__} has no equivalent for")
        else:
            out[key] = _object(value, f"layer {config.get('name')!r} ({kind}) {key}", fail)
    return out


def _accepted_keys(cls):
    import inspect
    keys = set()
    for klass in cls.__mro__:
        if klass is keras.layers.Layer:
            break
        init = klass.__dict__.get("__init__")
        if init is not None:
            keys |= {p.name for p in inspect.signature(init).parameters.values()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return keys - {"self"}


def _dtype(value, fail=None):
    """A Keras 3 dtype (a string or a DTypePolicy dict) as a tf_keras dtype/policy name."""
    if isinstance(value, dict):
        kind = value.get("class_name")
        name = (value.get("config") or {}).get("name")
        if kind not in ("DTypePolicy", "FloatDTypePolicy") or not isinstance(name, str):
            message = (f"dtype policy {kind} ({name}) is a Keras 3 quantized policy; "
                       "import the float model (before keras quantize())")
            if fail:
                fail(message)
            raise ModelLoadError(message)
        return name
    return value


def _activation(value, layer, fail):
    if isinstance(value, dict):  # {"class_name": "function", "config": "relu", ...}
        value = value.get("config") if isinstance(value.get("config"), str) else \
            value.get("registered_name") or value.get("class_name")
    if value is None:
        return None
    if value in activations.KERAS3_ACTIVATIONS:
        return activations.KERAS3_ACTIVATIONS[value]
    try:
        keras.activations.get(value)
    except (ValueError, TypeError):
        fail(f"layer {layer!r} uses the activation {value!r}, which tf_keras has not")
    return value


def _object(value, where, fail):
    """A nested Keras 3 serialized object (an initializer...) in tf_keras's form."""
    if isinstance(value, list):
        return [_object(v, where, fail) for v in value]
    if not isinstance(value, dict) or "class_name" not in value:
        return value
    module = value.get("module") or ""
    kind = value["class_name"]
    config = value.get("config")
    if not module.startswith("keras"):
        fail(f"{where} is {module}.{kind}, custom Keras 3 code tfcompress cannot import")
    namespace = {"keras.initializers": keras.initializers, "keras.regularizers":
                 keras.regularizers, "keras.constraints": keras.constraints}.get(module)
    if namespace is None or not isinstance(config, dict):
        return value
    cls = getattr(namespace, kind, None)
    if cls is None:
        fail(f"{where} is the Keras 3 {module}.{kind}, which tf_keras has not")
    accepted = _accepted_keys_of(cls)
    kept = {}
    for key, item in config.items():
        if key in accepted:
            kept[key] = item
        elif not (key in _UNUSED and (_UNUSED[key] is None or item in _UNUSED[key])):
            fail(f"{where} {kind} sets {key}={item!r}, which tf_keras has not")
    return {"class_name": kind, "config": kept}


def _accepted_keys_of(cls):
    import inspect
    return {p.name for p in inspect.signature(cls.__init__).parameters.values()} - {"self"}


def verify(model3, model, what, tensors=None):
    """Refuses the import unless both models agree on the probe batches (`equivalence`).

    Compares the outputs, and with `tensors` ({Keras 3 op/layer name: tf_keras
    tensor}, from the rebuild) the output of every top-level layer and op called once,
    so a difference is found where it starts.

    Returns:
        The largest relative difference seen.
    """
    keras3 = keras3_package()
    pairs = []
    for operation in model3.operations if tensors else []:
        # A nested model's `.output` is its own inner tensor, not its call's: skipped.
        if operation.name in tensors and len(operation._inbound_nodes) == 1 and \
                not isinstance(operation, (keras3.Model, keras3.layers.InputLayer)):
            pairs.append((operation.name, tf.nest.flatten(operation.output)[0],
                          tensors[operation.name]))
    return check_same(model3, model, pairs, f"{what}: cannot import: the tf_keras model "
                      "differs from the Keras 3 model")



# --------------------------------------------------------------------- subclassed models

def load_weights(model, path):
    """Loads a Keras 3 model's weights into `model`, a tf_keras twin you built.

    For subclassed Keras 3 models, which have no graph config to import: build the same
    model with tf_keras (the same class with `import tf_keras as keras`: the file keeps
    the weights under the layer attribute names, `d1/vars/0`), call it once, then load
    the weights from the Keras 3 `.weights.h5` file or from the `.keras` file (its
    weights are read from inside). The same works for a tf_keras functional twin of a
    functional model. tf_keras's own `load_weights` reads the file.

    Example:
        twin = build_my_model_with_tf_keras()
        keras3_import.load_weights(twin, "my_model.keras")

    Raises:
        ModelLoadError: the file is missing, or its weights do not fit `model`.
    """
    import shutil
    import tempfile
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such file (expected a Keras 3 .keras or "
                             ".weights.h5 file)")
    tmp = None
    try:
        if path.endswith(".keras"):
            tmp = tempfile.mkdtemp(prefix="tfcompress-keras3-")
            with zipfile.ZipFile(path) as archive:
                archive.extract("model.weights.h5", tmp)
            weights = os.path.join(tmp, "model.weights.h5")
        else:
            weights = path
        if not model.built:
            raise ModelLoadError("the tf_keras twin is not built: give it an Input or call "
                                 "it once before loading weights")
        import h5py
        with h5py.File(weights, "r") as f:
            if "layers" in f:  # a functional/sequential model: the layout tf_keras writes
                model.load_weights(weights)
            else:  # a subclassed model: weights under its layer attribute names
                _assign_by_attribute(model, f, "")
    except ModelLoadError:
        raise
    except Exception as e:  # zip, HDF5 and Keras errors all mean "does not fit"
        raise ModelLoadError(f"{path}: cannot load its Keras 3 weights into the tf_keras "
                             f"model: {_line(e)}") from e
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return model


def _assign_by_attribute(obj, group, where):
    """Assigns `group[".../vars/i"]` to `obj`'s own variables, then recurses into the
    sub-groups by attribute name (`d1` -> obj.d1), as Keras 3 wrote them."""
    from tfcompress._compat import flatten_layers
    inner = {id(v) for layer in list(flatten_layers(obj))[1:] for v in layer.weights} \
        if isinstance(obj, keras.layers.Layer) else set()
    own = [v for v in getattr(obj, "weights", []) if id(v) not in inner]
    stored = group["vars"] if "vars" in group else {}
    if len(stored) != len(own):
        raise ValueError(f"{where or 'the model'} has {len(stored)} weights in the file and "
                             f"{len(own)} in the tf_keras model")
    for i, variable in enumerate(own):
        value = np.asarray(stored[str(i)])
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{where}{short_name(variable)} has shape {value.shape} in the "
                                 f"file and {tuple(variable.shape)} in the tf_keras model")
        variable.assign(value)
    for key in group:
        if key == "vars" or not len(group[key]):
            continue
        child = getattr(obj, key, None)
        if child is None:
            raise ValueError(f"the file has weights for {where}{key}, and the tf_keras "
                                 f"model has no attribute {key!r}: give its layers the same "
                                 "attribute names as the Keras 3 class")
        _assign_by_attribute(child, group[key], f"{where}{key}/")
