"""tfcompress: distill, prune, quantize and export tf_keras models for mobile.

Example:
    import tfcompress
    model = tfcompress.load_model("model.keras")
"""

__version__ = "0.1.0"

from tfcompress.keras import ensure_tf_keras_model  # noqa: E402  (sets TF_USE_LEGACY_KERAS)
from tfcompress.saving import load_model, save_model  # noqa: E402

__all__ = ["__version__", "ensure_tf_keras_model", "load_model", "save_model"]
