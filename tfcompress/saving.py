"""Loading and saving tf_keras models safely.

`load_model` never runs code stored in a file unless asked: the native `.keras`
format has Keras safe mode, but tf_keras's legacy loaders (`.h5`, SavedModel)
ignore `safe_mode`, and a Lambda layer's Python bytecode would be unmarshalled
and run. We switch safe mode on around those loaders too.

Keras safe mode only refuses Python bytecode, so before Keras sees a file its
configs are scanned (`unsafe_reason`) and refused when they hold:
    * a Lambda layer (bytecode, or a function named by the file; in a
      SavedModel, a traced graph that ran `tf.io.write_file` on predict here);
    * a TFOpLambda calling a TF function outside the math namespaces: rebuilt
      with constant arguments, `tf.io.write_file` wrote a file chosen by the
      file during a safe-mode load here (tf_keras 2.21);
    * a class or function from a module other than tf_keras, TFMOT or
      tfcompress (Keras imports any module a config names), unless it is a
      custom object or registered with Keras.
A SavedModel whose layers Keras can only revive from the file's TF graph (no
config: subclassed models, `tf.saved_model.save` output) is refused too.
TF graphs are programs: a model you call runs its ops, so only load files you
trust with `allow_unsafe=True`.

Example:
    model = tfcompress.load_model("runs/demo/model.keras")
    save_model(model, "out/model.keras")   # atomic: temp file, then rename
"""

import builtins
import json
import os
import shutil
import tempfile
import zipfile

from tfcompress._compat import flatten_layers, revived_layer_class, safe_mode_scope
from tfcompress.errors import ModelLoadError
from tfcompress import activations  # noqa: F401 - registers the activations models use
from tfcompress import keras3_import
from tfcompress.keras import keras, ensure_tf_keras_model, is_keras3_model

_FORMATS = ".keras file, .h5 file or SavedModel directory"
_ALLOW_HINT = ("refused by default; pass allow_unsafe=True (CLI: --allow_unsafe) only if you "
               "trust the file")

# Modules whose classes and functions a safe load may import (plus custom objects).
_SAFE_MODULE_ROOTS = ("tf_keras", "keras", "tensorflow_model_optimization", "tfcompress")
# TF namespaces of pure tensor math a TFOpLambda may call (tf.math.add, tf.nn.relu6,
# x + 3.0 -> __operators__.add); top-level ops (tf.reshape) too, except these.
_SAFE_TF_OP_NAMESPACES = ("__operators__", "math", "nn", "linalg", "image", "signal", "bitwise",
                          "dtypes", "quantization", "random", "sparse", "ragged", "strings")
_UNSAFE_TF_OPS = {"print", "py_function", "numpy_function", "load_library", "load_op_library",
                  "function", "custom_gradient", "recompute_grad", "init_scope", "get_logger",
                  "register_tensor_conversion_function", "no_gradient"}


def load_model(path, allow_unsafe=False, custom_objects=None, compile=True):
    """Loads a `.keras`, `.h5` or SavedModel directory into a tf_keras model.

    A Keras 3 file (or in-memory Keras 3 model) is imported: rebuilt in tf_keras
    and verified against the original (`keras3_import`).

    Args:
        path: file or SavedModel directory, or a Keras 3 model.
        allow_unsafe: allow what safe mode refuses (see the module docstring):
            Lambda layers, file-I/O TF ops, other modules' code, layers run
            from the file's TF graph. Only for files you trust: loading or
            calling the model runs that code.
        custom_objects: dict of custom layer classes/functions, as in Keras.
        compile: restore the training config (optimizer, loss) if saved.

    Returns:
        A tf_keras Model.

    Raises:
        ModelLoadError: naming the file and the reason.
    """
    if is_keras3_model(path):  # an in-memory Keras 3 model
        return keras3_import.import_model(path)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory (expected a {_FORMATS})")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ModelLoadError(f"{path}: directory has no saved_model.pb, so it is not a SavedModel")
    if os.path.isfile(path) and not path.endswith((".keras", ".h5", ".hdf5")):
        raise ModelLoadError(f"{path}: unknown model format (expected a {_FORMATS})")
    if not allow_unsafe:
        reason = unsafe_reason(saved_configs(path), custom_objects)
        if reason:
            raise ModelLoadError(f"{path}: cannot load model: {reason}; {_ALLOW_HINT}")
    if keras3_import.keras3_version(path):
        return keras3_import.import_model(path, safe_mode=not allow_unsafe)
    try:
        # tf_keras's scope (private; the public API has none for legacy loads).
        with safe_mode_scope(not allow_unsafe):
            model = keras.models.load_model(
                path, custom_objects=custom_objects, compile=compile,
                safe_mode=not allow_unsafe)
    except Exception as e:  # Keras raises many types; all mean "cannot load".
        reason = " ".join(str(e).split()) or type(e).__name__
        if not allow_unsafe and "safe_mode" in reason:
            reason = ("it holds a Lambda layer with Python code, which is refused "
                      "by default because loading it runs that code; pass "
                      "allow_unsafe=True (CLI: --allow_unsafe) only if you trust the file")
        reason = _file_problem(path) or _missing_class(reason) or reason
        raise ModelLoadError(f"{path}: cannot load model: {reason[:500]}") from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"{path}: loaded a {type(model).__name__}, not a Keras model; export "
            "it with tf_keras `model.save(...)` so its layers can be rebuilt")
    if not allow_unsafe:
        revived = _revived_layers(model)
        if revived:
            raise ModelLoadError(
                f"{path}: cannot load model: layer(s) {', '.join(revived[:5])} have no Keras "
                "config and would run the file's own TF graph (a subclassed model, or "
                f"tf.saved_model.save output); {_ALLOW_HINT}")
    return ensure_tf_keras_model(model)


def _missing_class(reason):
    """Keras's words for a class it cannot find, turned into the fix, or None."""
    import re
    patterns = (r"Unknown (?:layer|object|activation|loss|metric)[^:]*: '?([\w>.]+)'?",
                r"[Cc]ould not (?:locate|deserialize) class '?([\w>.]+)'?",
                r"layer=(\w+) of type (?:<class ')?str")
    found = next((m for m in (re.search(p, reason) for p in patterns) if m), None)
    if not found:
        return None
    return (f"Keras does not know the class {found.group(1)!r}: it is custom code; import the "
            "module that defines it with --custom_objects MODULE (a module name or a .py path), "
            "or in Python pass custom_objects={name: class}")


def saved_compile(path):
    """How a model file was compiled, in words ("loss categorical_crossentropy, metrics
    [...]"), or None for a file saved uncompiled. tfcompress ignores it: the log says so."""
    try:
        configs = saved_configs(os.fspath(path))
    except ModelLoadError:
        return None
    for config in configs:
        if not isinstance(config, dict):
            continue
        # .keras: "compile_config"; .h5 attrs and SavedModel metadata: "training_config"
        # (an .h5 file keeps it as its own JSON document, with the loss at the top level).
        compiled = config.get("compile_config") or config.get("training_config")
        if compiled is None and "loss" in config and "optimizer_config" in config:
            compiled = config
        if isinstance(compiled, dict) and (compiled.get("loss") or compiled.get("metrics")):
            return f"loss {_names(compiled.get('loss'))}, metrics {_names(compiled.get('metrics'))}"
    return None


def _names(value):
    """Short names of serialized losses/metrics ("categorical_crossentropy", "[a, b]")."""
    if isinstance(value, dict):
        inner = value.get("config")
        if isinstance(inner, dict) and inner.get("name"):
            return str(inner["name"])
        return str(value.get("class_name") or value.get("name") or "?")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_names(v) for v in value) + "]"
    return "none" if value is None else str(value)


def import_custom_objects(spec):
    """Imports the user's module `spec` (a module name, found from the current folder
    too, or a `.py` path) so the custom layers it defines and registers load.

    Its Keras classes (layers, losses, metrics...) are added to Keras's global custom
    objects, so unregistered ones load too. It runs the module's code: the user's own.

    Returns:
        {name: class} of the Keras classes found in the module.

    Raises:
        ModelLoadError: the module or file cannot be found or fails to import.

    Example:
        import_custom_objects("my_layers")            # ./my_layers.py or an installed module
        import_custom_objects("src/my_layers.py")
    """
    import importlib
    import importlib.util
    import inspect
    import sys
    try:
        if spec.endswith(".py"):
            if not os.path.isfile(spec):
                raise ModelLoadError(f"--custom_objects {spec}: no such file")
            name = os.path.splitext(os.path.basename(spec))[0]
            module_spec = importlib.util.spec_from_file_location(name, spec)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # Keras finds classes through their module
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -c "import my_layers"` would
            module = importlib.import_module(spec)
    except ModelLoadError:
        raise
    except ModuleNotFoundError as e:
        raise ModelLoadError(f"--custom_objects {spec}: no module named {e.name!r} (give a "
                             "module importable from the current folder, or the path of its "
                             ".py file)") from e
    except Exception as e:  # the user's module failed while importing
        raise ModelLoadError(f"--custom_objects {spec}: importing it failed: "
                             f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    found = {name: obj for name, obj in vars(module).items()
             if inspect.isclass(obj) and obj.__module__ == module.__name__
             and issubclass(obj, (keras.layers.Layer, keras.losses.Loss, keras.metrics.Metric,
                                  keras.constraints.Constraint, keras.initializers.Initializer,
                                  keras.regularizers.Regularizer))}
    keras.saving.get_custom_objects().update(found)
    return found


def _file_problem(path):
    """Why a model file Keras failed on is unusable, in words, or None.

    Keras's own reasons mislead here: a truncated .keras file is reported as
    an HDF5 "file signature not found".
    """
    if os.path.isdir(path):
        return None
    resave = "save the model again (tfcompress.save_model or tf_keras model.save)"
    if path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            return f"it is not a .keras archive (a zip file): empty, truncated or corrupt; {resave}"
        return None
    import h5py
    if not h5py.is_hdf5(path):
        return f"it is not an HDF5 file: empty, truncated or corrupt; {resave}"
    try:
        h5py.File(path, "r").close()  # a truncated file fails to open
    except OSError as e:
        return f"truncated or corrupt HDF5 file ({' '.join(str(e).split())[:200]}); {resave}"
    return None


def saved_configs(path):
    """The JSON configs stored in a model file, for `unsafe_reason`.

    Returns [] where there are none to read (Keras then says what is wrong).

    Raises:
        ModelLoadError: a config that is there but unreadable (not JSON, a
            corrupt protobuf).
    """
    texts = []
    try:
        if os.path.isdir(path):
            texts += _savedmodel_metadata(path)
        elif path.endswith(".keras"):
            if not zipfile.is_zipfile(path):
                return []
            with zipfile.ZipFile(path) as archive:
                if "config.json" in archive.namelist():
                    texts.append(archive.read("config.json"))
        else:
            import h5py
            try:
                f = h5py.File(path, "r")
            except OSError:
                return []  # not HDF5; Keras names the problem
            with f:
                texts += [f.attrs[key] for key in ("model_config", "training_config")
                          if key in f.attrs]
        return [json.loads(t.decode() if isinstance(t, bytes) else t) for t in texts]
    except (ValueError, TypeError, OSError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"{path}: cannot load model: its config is unreadable "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from e


def _savedmodel_metadata(path):
    """The Keras metadata JSON strings of a SavedModel (both places Keras reads)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2
    from tf_keras.protobuf import saved_metadata_pb2

    def parse(proto, name):
        with open(os.path.join(path, name), "rb") as f:
            try:
                proto.ParseFromString(f.read())
            except DecodeError as e:
                raise ValueError(f"{name} is not a valid protobuf: {e}") from e
        return proto

    texts = []
    if os.path.exists(os.path.join(path, "keras_metadata.pb")):
        proto = parse(saved_metadata_pb2.SavedMetadata(), "keras_metadata.pb")
        texts += [node.metadata for node in proto.nodes if node.metadata]
    # Files saved before TF 2.5 (or by tf.saved_model.save) keep it in the object graph.
    saved = parse(saved_model_pb2.SavedModel(), "saved_model.pb")
    for graph in saved.meta_graphs:
        texts += [node.user_object.metadata for node in graph.object_graph_def.nodes
                  if node.WhichOneof("kind") == "user_object" and node.user_object.metadata]
    return texts


def unsafe_reason(configs, custom_objects=None):
    """Why a safe load must refuse these saved configs, or None (see the module docstring).

    Args:
        configs: JSON values (dicts/lists) from a model file.
        custom_objects: the caller's {name: class or function}; they are trusted.

    Example:
        unsafe_reason([{"class_name": "Lambda", "config": {"name": "double"}}])
        # "layer 'double' is a Lambda layer, whose Python function ..."
    """
    stack = list(configs)
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        stack.extend(item.values())
        kind = item.get("class_name")
        if not isinstance(kind, str):
            continue
        inner = item.get("config") if isinstance(item.get("config"), dict) else {}
        name = inner.get("name", item.get("name", "?"))
        if kind in ("Lambda", "__lambda__"):
            return (f"layer {name!r} is a Lambda layer, whose Python function comes from the "
                    "file and runs when the model is rebuilt or called")
        if kind in ("TFOpLambda", "SlicingOpLambda"):
            function = str(inner.get("function", ""))
            if not _safe_tf_op(function):
                return (f"layer {name!r} calls tf.{function}, which can touch files or run "
                        "Python while the model is rebuilt or called")
        module = item.get("module")
        if isinstance(module, str) and not _safe_reference(module, item, custom_objects):
            target = item.get("config") if kind == "function" else kind
            return (f"it refers to {module}.{target}, outside Keras, TFMOT and tfcompress (Keras "
                    f"would import it); if it is your code, import it first: CLI --custom_objects "
                    f"{module} (a module name, or the path of its .py file), Python "
                    f"custom_objects={{{target!r}: ...}} or `import {module}` before loading")
    return None


def _safe_tf_op(function):
    parts = function.split(".")
    if any(not p or (p.startswith("_") and p != "__operators__") for p in parts):
        return False
    if len(parts) == 1:
        return function not in _UNSAFE_TF_OPS
    return parts[0] in _SAFE_TF_OP_NAMESPACES


def _safe_reference(module, item, custom_objects):
    kind = item["class_name"]
    names = {kind, item.get("registered_name")}
    if kind == "function":
        names.add(item.get("config"))
    names = {n for n in names if isinstance(n, str) and n != "function"}
    if any(n in (custom_objects or {}) or keras.saving.get_registered_object(n) is not None
           for n in names):
        return True
    if module == "builtins":
        # Keras resolves its own built-ins ("relu", "mse") by name; Python's (exec,
        # open, eval) would be imported from the builtins module.
        return not any(hasattr(builtins, n) for n in names)
    target = item.get("config") if kind == "function" else kind
    # Keras's own switch for turning safe mode off must not be reachable from a file.
    return (module.split(".")[0] in _SAFE_MODULE_ROOTS
            and target not in ("enable_unsafe_deserialization", "SafeModeScope"))


def _revived_layers(model):
    """Names of the layers Keras revived from the file's TF graph, not from a config."""
    revived = revived_layer_class()
    return [layer.name for layer in flatten_layers(model) if isinstance(layer, revived)]


def save_model(model, path):
    """Saves `model` to `path` (`.keras`/`.h5`/directory) atomically.

    The model is written next to `path` under a temporary name and renamed, so
    `path` never holds a half-written model.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    suffix = os.path.splitext(base)[1]
    remove_stale_temps(path)
    tmp_dir = tempfile.mkdtemp(prefix=f".{base}.", dir=parent)
    try:
        # Keras picks the format from the extension, so keep it on the temp name.
        tmp = os.path.join(tmp_dir, "model" + suffix)
        model.save(tmp)
        if os.path.isdir(path) and not os.path.isdir(tmp):
            shutil.rmtree(path)
        if os.path.isdir(tmp) and os.path.exists(path):
            old = path + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def remove_stale_temps(path):
    """Removes temp files/folders an earlier, killed write of `path` left beside it.

    A SIGKILL cannot be caught, so `.NAME.xxxx` temps can survive one; the next
    write of the same path clears them. Assumes one writer per path at a time.
    """
    parent = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        stale = os.path.join(parent, name)
        if os.path.isdir(stale) and not os.path.islink(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            try:
                os.unlink(stale)
            except OSError:
                pass


def write_bytes_atomic(path, data):
    """Writes `data` to `path` through a temp file in the same folder + rename."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        # mkstemp makes the file 0600; give it the mode open() would have (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path, obj):
    """Writes `obj` as indented JSON to `path` atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
