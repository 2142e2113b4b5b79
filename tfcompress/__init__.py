"""tfcompress: distill, prune, quantize and export tf_keras models for mobile.

Example:
    import tfcompress
    model = tfcompress.load_model("model.keras")

Importing the package does not import TensorFlow: `load_model`, `save_model`
and `ensure_tf_keras_model` load it on first use, so light tools (the benchmark's
child processes, `tfcompress recipes`) start in a fraction of a second.
"""

import os

__version__ = "0.1.0"

# tf_keras (Keras 2) everywhere: must be set before TensorFlow is first imported,
# whoever imports it first. Only if unset: a deliberate user choice stays.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__all__ = ["__version__", "ensure_tf_keras_model", "load_model", "save_model"]


def __getattr__(name):
    if name == "ensure_tf_keras_model":
        from tfcompress.keras import ensure_tf_keras_model
        return ensure_tf_keras_model
    if name in ("load_model", "save_model"):
        from tfcompress import saving
        return getattr(saving, name)
    raise AttributeError(f"module 'tfcompress' has no attribute {name!r}")
