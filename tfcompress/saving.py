"""Loading and saving tf_keras models safely.

`load_model` never runs code stored in a file unless asked: the native `.keras`
format has Keras safe mode, but tf_keras's legacy loaders (`.h5`, SavedModel)
ignore `safe_mode`, and a Lambda layer's Python bytecode would be unmarshalled
and run. We switch safe mode on around those loaders too.

Example:
    model = tfcompress.load_model("runs/demo/model.keras")
    save_model(model, "out/model.keras")   # atomic: temp file, then rename
"""

import json
import os
import shutil
import tempfile

from tfcompress.errors import ModelLoadError
from tfcompress.keras import keras, ensure_tf_keras_model

# Private in tf_keras 2.21 (pinned); the public API has no scope for legacy loads.
from tf_keras.src.saving.serialization_lib import SafeModeScope

_FORMATS = ".keras file, .h5 file or SavedModel directory"


def load_model(path, allow_unsafe=False, custom_objects=None, compile=True):
    """Loads a `.keras`, `.h5` or SavedModel directory into a tf_keras model.

    Args:
        path: file or SavedModel directory.
        allow_unsafe: allow Lambda layers that hold Python code. Only for
            files you trust: loading them runs that code.
        custom_objects: dict of custom layer classes/functions, as in Keras.
        compile: restore the training config (optimizer, loss) if saved.

    Returns:
        A tf_keras Model.

    Raises:
        ModelLoadError: naming the file and the reason.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory (expected a {_FORMATS})")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ModelLoadError(f"{path}: directory has no saved_model.pb, so it is not a SavedModel")
    if os.path.isfile(path) and not path.endswith((".keras", ".h5", ".hdf5")):
        raise ModelLoadError(f"{path}: unknown model format (expected a {_FORMATS})")
    try:
        with SafeModeScope(not allow_unsafe):
            model = keras.models.load_model(
                path, custom_objects=custom_objects, compile=compile,
                safe_mode=not allow_unsafe)
    except Exception as e:  # Keras raises many types; all mean "cannot load".
        reason = " ".join(str(e).split()) or type(e).__name__
        if "safe_mode" in reason or "Lambda" in reason:
            reason = ("it holds a Lambda layer with Python code, which is refused "
                      "by default because loading it runs that code; pass "
                      "allow_unsafe=True (CLI: --allow_unsafe) only if you trust the file")
        raise ModelLoadError(f"{path}: cannot load model: {reason[:500]}") from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"{path}: loaded a {type(model).__name__}, not a Keras model; export "
            "it with tf_keras `model.save(...)` so its layers can be rebuilt")
    return ensure_tf_keras_model(model)


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


def write_bytes_atomic(path, data):
    """Writes `data` to `path` through a temp file in the same folder + rename."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
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
