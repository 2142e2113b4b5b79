"""int4 / int8 weights per layer under a budget: the smallest file within `max_drop` points.

`mixed_int4` measures, per CONV_2D / FULLY_CONNECTED op, how many points of top-1 the
model loses on a held-out slice when only that layer's weights go to int4 (the others
int8), then moves layers to int4 greedily, least loss per byte saved first, re-measuring
the whole model after each move and keeping a move only while the model stays within
`max_drop` points of the float model (and, with `max_bytes`, until the file fits).
With learned rounding (default), a layer moved to int4 takes its AdaRound kernel
(`tfcompress.quantization.adaround`), a layer left at int8 its own float kernel.
DEPTHWISE_CONV_2D stays int8. The file is weight-only (float compute, as
`int4_weights`): not full integer, which its variant row says (`is_full_integer`).

Example:
    data, plan = mixed_int4(model, x_cal, x_val, y_val, max_drop=1.0)
    plan["layers"]   # [{"layer": "conv2", "bits": 4, "drop_alone": 0.1, "bytes_saved": 9216}...]
"""

import re
import time

import numpy as np

from tflite_export.int4 import quiet_quantize

_OPS = ("CONV_2D", "FULLY_CONNECTED")


def _layer_ops(float_bytes, model):
    """[(Keras layer name, TFLite op name, op output tensor name)] of the conv/dense ops,
    matched by the layer name inside the op's filter tensor name ("model/conv2/Conv2D")."""
    from tflite_export.tflite_file import op_name, parse_tflite
    flat = parse_tflite(float_bytes)
    graph = flat.subgraphs[0]
    names = [layer.name for layer in model.layers]
    found = []
    for op in graph.operators:
        kind = op_name(flat, op)
        if kind not in _OPS:
            continue
        weights = graph.tensors[op.inputs[1]].name.decode()
        layer = next((n for n in names if f"/{n}/" in weights), None)
        if layer is not None:
            found.append((layer, kind, graph.tensors[op.outputs[0]].name.decode()))
    return found


def _quantize(float_bytes, ops, int4_layers):
    """Weight-only AEQ file: depthwise and conv/dense int8, the `int4_layers` int4."""
    from ai_edge_quantizer import qtyping, quantizer
    names = qtyping.TFLOperationName
    aeq = quantizer.Quantizer(bytearray(float_bytes))
    aeq.add_weight_only_config(".*", names.DEPTHWISE_CONV_2D, 8)
    for kind in _OPS:
        aeq.add_weight_only_config(".*", getattr(names, kind), 8)
    for layer, kind, output in ops:  # the latest matching config wins in AEQ
        if layer in int4_layers:
            # AEQ matches an op by its output tensor names joined with ";", plus a ";".
            aeq.add_weight_only_config(f"^{re.escape(output)};", getattr(names, kind), 4)
    return quiet_quantize(aeq)


def mixed_int4(model, x_calibration, x_val, y_val, max_drop=None, max_bytes=None,
               learned_rounding=True, log=print):
    """The weight-only file with the most int4 layers within the budget (module docstring).

    Args:
        x_calibration: inputs for AdaRound; x_val, y_val: the held-out slice that measures
            points (not the test split).
        max_drop: points of top-1 below the float model allowed on the slice.
        max_bytes: the file size to reach (layers move to int4 until it fits).

    Returns:
        (bytes, plan): plan has "layers" ([{layer, bits, drop_alone, bytes_saved}]),
        "float_top1", "top1", "bytes", "met" (the budget holds), "seconds".
    """
    from tfcompress.keras import keras
    from tflite_export.convert import convert
    from tflite_export.evaluate import as_runner
    if max_drop is None and max_bytes is None:
        raise ValueError("give max_drop (points) or max_bytes")
    if model.outputs[0].shape[-1] == 1:
        raise ValueError("int4_mixed measures the top-1 of a multi-class head; this model has "
                         "one output unit: use int4_adaround")
    y_val = np.argmax(y_val, axis=1) if np.ndim(y_val) == 2 else np.asarray(y_val)
    start = time.time()
    rounded = None
    if learned_rounding:
        from tfcompress.quantization.adaround import adaround
        rounded, _ = adaround(model, x_calibration)
    mixed = keras.models.clone_model(model)

    def build(int4_layers):
        mixed.set_weights(model.get_weights())
        for name in int4_layers if rounded is not None else ():
            mixed.get_layer(name).set_weights(rounded.get_layer(name).get_weights())
        return _quantize(convert(mixed, "float32"), ops, int4_layers)

    def top1(data):
        return float(np.mean(np.argmax(as_runner(data).predict(x_val, progress=False), 1)
                             == y_val))

    float_bytes = convert(model, "float32")
    ops = _layer_ops(float_bytes, model)
    float_top1 = top1(float_bytes)
    base = build(set())
    base_top1 = top1(base)
    rows = []
    for layer, _, _ in ops:
        alone = build({layer})
        rows.append({"layer": layer, "bits": 8, "drop_alone": round(100 * (base_top1 -
                                                                          top1(alone)), 2),
                     "bytes_saved": len(base) - len(alone)})
    chosen, best, best_top1 = set(), base, base_top1
    order = sorted(rows, key=lambda r: r["drop_alone"] / max(r["bytes_saved"], 1))
    for row in order:
        if max_bytes is not None and len(best) <= max_bytes and max_drop is None:
            break
        candidate = build(chosen | {row["layer"]})
        candidate_top1 = top1(candidate)
        if max_drop is None or 100 * (float_top1 - candidate_top1) <= max_drop:
            chosen.add(row["layer"])
            row["bits"] = 4
            best, best_top1 = candidate, candidate_top1
        if log:
            log(f"    {row['layer']}: int{row['bits']} (alone -{row['drop_alone']} points, "
                f"{row['bytes_saved']:,} bytes saved); model {100 * candidate_top1:.2f}%")
    met = ((max_drop is None or 100 * (float_top1 - best_top1) <= max_drop)
           and (max_bytes is None or len(best) <= max_bytes))
    return best, {"layers": rows, "float_top1": float_top1, "top1": best_top1,
                  "bytes": len(best), "met": met, "seconds": round(time.time() - start, 1)}
