"""tfcompress: distill, prune, quantize and export tf_keras models for mobile.

Example:
    import tfcompress as tfc
    model = tfc.load_model("model.keras")
    pruned = tfc.pruning.prune(model, tfc.pruning.PruningConfig(target_sparsity=0.8))
    distiller = tfc.distillation.Distiller(teacher, student)
    qat = tfc.quantization.quantize(model)
    report = tfc.pipeline.run(tfc.config.load_recipe("fashion_mnist"), "runs/demo")

The technique modules are attributes of the package, imported on first use
(`SUBMODULES`), so importing the package does not import TensorFlow: light
tools (the benchmark's child processes, `tfcompress recipes`) start in a
fraction of a second. `load_model` is the one loader.
"""

import importlib
import os

__version__ = "0.1.0"

# tf_keras (Keras 2) everywhere: must be set before TensorFlow is first imported,
# whoever imports it first. Only if unset: a deliberate user choice stays.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The public modules, each imported when first read as `tfcompress.NAME`.
SUBMODULES = ("activations", "channel_pruning", "clustering", "config", "data", "distillation",
              "distribute", "heads", "keras3_export", "keras3_import", "lowrank", "pipeline",
              "pruning", "quantization", "regularizers", "report", "schedules", "stages")

__all__ = ["__version__", "ensure_tf_keras_model", "load_model", "save_model", *SUBMODULES]


def __getattr__(name):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "ensure_tf_keras_model":
        from tfcompress.keras import ensure_tf_keras_model
        return ensure_tf_keras_model
    if name in ("load_model", "save_model"):
        from tfcompress import saving
        return getattr(saving, name)
    raise AttributeError(f"module 'tfcompress' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
