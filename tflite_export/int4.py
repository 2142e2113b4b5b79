"""int4 export modes, through Google's AI Edge Quantizer (AEQ) on the float32 `.tflite`.

AEQ (PyPI `ai-edge-quantizer` 0.10.0, pinned) rewrites a float TFLite file without
TensorFlow. The modes (rows of `convert.MODES` with `int4=True`):

    int4_weights  CONV_2D and FULLY_CONNECTED weights int4 per output channel,
                  DEPTHWISE_CONV_2D weights int8; dequantized to float before each op
                  (weight-only: the smallest file, float compute).
    int4_dynamic  the same weights; the ops quantize their float activations at run
                  time (dynamic range), so CONV_2D/FULLY_CONNECTED compute in integers.
    int4_w4a8     int4 CONV_2D / FULLY_CONNECTED weights, int8 everywhere else: int8
                  activations from calibration, int8 input/output, no float tensor
                  (full integer; whether an NPU runs int4 weights is its own matter:
                  the Edge TPU compiler does not).

    int4_adaround int4_weights of the model after `tfcompress.quantization.adaround`
                  learned each Conv2D / Dense weight's rounding on the calibration data;
                  AEQ then stores exactly those integers.

Otherwise weights are rounded to the nearest step (AEQ's min/max uniform algorithm).

Calibration (int4_w4a8): AEQ's own `Quantizer.calibrate` keeps a moving average of each
sample's min/max (measured here: fed one image per step it clipped ResNet-8's input
range at 239.7 instead of 255), so tfcompress calibrates with AEQ's `Calibrator` and an
update that keeps the overall minimum and maximum, as the TFLite converter's own
calibration does: every range covers every calibration value.

Example:
    int4_bytes = quantize(float32_bytes, "int4_weights")
    int4_bytes = quantize(float32_bytes, "int4_w4a8", samples=[[x0], [x1], ...])
"""

import numpy as np

# Per mode: (how CONV_2D / FULLY_CONNECTED are quantized, how DEPTHWISE_CONV_2D is).
_RECIPES = {"int4_weights": "weight_only", "int4_dynamic": "dynamic", "int4_w4a8": "static",
            "int4_adaround": "weight_only"}  # int4_mixed: mixed_precision.py
_INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")


def _configure(target, mode):
    """Adds `mode`'s configs to an AEQ Quantizer or RecipeManager (same add_* methods)."""
    from ai_edge_quantizer import qtyping
    ops = qtyping.TFLOperationName
    kind = _RECIPES[mode]
    if kind == "static":
        target.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8)  # later configs win
        for op in _INT4_OPS:
            target.add_static_config(".*", getattr(ops, op), 8, 4)
        return
    add = target.add_weight_only_config if kind == "weight_only" else target.add_dynamic_config
    add(".*", ops.DEPTHWISE_CONV_2D, 8)
    for op in _INT4_OPS:
        add(".*", getattr(ops, op), 4)


def _widen(qsv, new_qsv):
    """A calibration update that keeps the overall min and max (not a moving average)."""
    if not qsv:
        return new_qsv
    return {"min": np.minimum(qsv["min"], new_qsv["min"]),
            "max": np.maximum(qsv["max"], new_qsv["max"])}


def calibration_ranges(float_tflite, mode, samples):
    """{tensor name: {"min", "max"}} over all `samples` (lists of arrays, one per input,
    each with the file's batch axis), as AEQ's quantizer takes them."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, recipe_manager
    signatures = Interpreter(model_content=bytes(float_tflite)).get_signature_list()
    signature, io = next(iter(signatures.items()))
    names = io["inputs"]
    data = {signature: [dict(zip(names, sample)) for sample in samples]}
    recipe = recipe_manager.RecipeManager()
    _configure(recipe, mode)
    calibration = calibrator.Calibrator(bytes(float_tflite), num_threads=1,
                                        qsv_update_func=_widen)
    calibration.calibrate(data, recipe)
    return calibration.get_model_qsvs()


def quantize(float_tflite, mode, samples=None):
    """`float_tflite` (bytes of a float32 file) quantized in int4 `mode`; returns bytes.

    Args:
        samples: for int4_w4a8, an iterable of samples (a list of arrays, one per input,
            shaped like the file's inputs, batch axis included).

    Raises:
        ValueError: an unknown mode, or int4_w4a8 without samples.
    """
    if mode not in _RECIPES:
        raise ValueError(f"unknown int4 mode {mode!r}; choose one of {', '.join(_RECIPES)}")
    from ai_edge_quantizer import quantizer
    aeq = quantizer.Quantizer(bytearray(float_tflite))
    _configure(aeq, mode)
    ranges = None
    if aeq.need_calibration:
        if samples is None:
            raise ValueError(f"mode {mode} needs calibration samples")
        ranges = calibration_ranges(float_tflite, mode, samples)
    return quiet_quantize(aeq, ranges)


def quiet_quantize(aeq, ranges=None):
    """`aeq.quantize(ranges)` as bytes, without the size lines AEQ prints to stdout."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(aeq.quantize(ranges).quantized_model)
