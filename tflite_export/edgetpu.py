"""Does a `.tflite` fit the Coral Edge TPU? A static check of the documented rules.

`edgetpu_report` checks int8 everywhere, static shapes, the supported-op table
(`EDGETPU_OPS`) with the per-op limits a file shows, the tensor-rank rule and the
on-chip parameter cache, and predicts where the Edge TPU compiler would cut the
graph. It is not the compiler, which cannot be installed here; compile with
`edgetpu_compiler` before trusting a "compatible".

Example:
    report = edgetpu_report("model_int8.tflite")
    print(format_edgetpu(report))           # each check, and where the graph is cut
"""

import textwrap

from tflite_export.tensors import (FLOAT_DTYPES, INT8_DTYPES, MALFORMED, buffer_bytes,
                                   decode_buffer, is_constant, load_parsed, shape_signature,
                                   tensor_name, tensor_shape, weight_stats)
from tflite_export.tflite_file import op_name, tensor_type_name

# Edge TPU on-chip SRAM that caches parameters; beyond it they stream from host memory.
EDGETPU_PARAMETER_CACHE_BYTES = 8 * 1024 * 1024

# The Edge TPU supported operations and their documented limits, keyed by the TFLite
# builtin op name. Source: Coral, "TensorFlow models on the Edge TPU", section "Supported
# operations", https://coral.ai/docs/edgetpu/models-intro/#supported-operations. Rows ADD to
# RESIZE_BILINEAR were checked word for word against a verbatim copy of that table (Axis,
# developer.axis.com/computer-vision/on-device/system-on-chip/artpec-7/supported-ops/); the
# later rows against an older copy of the coral.ai table (SLICE, SOFTMAX, SPACE_TO_DEPTH,
# SQUEEZE, STRIDED_SLICE) and, for RSQRT, SPLIT, SUM, SQUARED_DIFFERENCE, TRANSPOSE and
# TRANSPOSE_CONV, the current page as last read, which could not be re-fetched here.
# Left out because the page does not list them: HARD_SWISH and LEAKY_RELU (the compiler
# rejects them: google-coral/edgetpu#272, #597), GATHER / GATHER_ND (#720), and DEQUANTIZE,
# a float boundary ("Operation is working on an unsupported data type", #490).
EDGETPU_OPS = {
    "ADD": "",
    "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": "No fused activation function. If any input is a compile-time constant "
                     "tensor, there must be only 2 inputs, and this constant tensor must be "
                     "all zeros (effectively, a zero-padding op).",
    "CONV_2D": "Must use the same dilation in x and y dimensions.",
    "DEPTHWISE_CONV_2D": "Must use the same dilation in x and y dimensions.",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "Only the default format is supported for fully-connected weights. "
                       "Output tensor is one-dimensional.",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "Unidirectional LSTM only.",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "Unidirectional LSTM only.",
    "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.",
    "MEAN": "No reduction in batch dimension. If a z-reduction, the z-dimension must be "
            "multiple of 4.",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "No packing in batch dimension.",
    "PAD": "No padding in batch dimension.",
    "PRELU": "Alpha must be 1-dimensional (only the innermost dimension can be >1 size); "
             "Keras PReLU on 4-D input needs shared_axes=[1, 2].",
    "QUANTIZE": "",
    "REDUCE_MAX": "Cannot operate on the batch dimension.",
    "REDUCE_MIN": "Cannot operate on the batch dimension.",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "Certain reshapes might not be mapped for large tensor sizes.",
    "RESIZE_BILINEAR": "Input/output is a 3-dimensional tensor. Depending on input/output "
                       "size, may not be mapped to the Edge TPU to avoid loss in precision.",
    "RESIZE_NEAREST_NEIGHBOR": "Input/output is a 3-dimensional tensor. Depending on "
                               "input/output size, may not be mapped to the Edge TPU to avoid "
                               "loss in precision.",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "Supports only 1-D input tensor with a max of 16,000 elements.",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "No splitting in batch dimension.",
    "SQUEEZE": "Supported only when the squeezed dimensions are leading 1s (no relayout): "
               "[1,1,10] or [1,5,10] is ok, [5,1,10] is not.",
    "STRIDED_SLICE": "Supported only when all strides are equal to 1 (effectively a Stride "
                     "op), and with ellipsis-axis-mask == 0, and new-axis-mask == 0.",
    "SUB": "",
    "SUM": "Cannot operate on the batch dimension.",
    "SQUARED_DIFFERENCE": "",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

_EDGETPU_NOTE = ("static check of the documented Edge TPU rules, not the Edge TPU compiler "
                 "(which cannot be installed here): run edgetpu_compiler to confirm")


def _constant_ints(data, model, subgraph, index):
    t = subgraph.tensors[index]
    raw = buffer_bytes(data, model, t)
    values = decode_buffer(raw, tensor_type_name(t)) if raw is not None else None
    return None if values is None else [int(v) for v in values]


def _axes_touch_batch(ctx, op, axis_input=1, data_input=0):
    data, model, sg = ctx
    axes = _constant_ints(data, model, sg, op.inputs[axis_input])
    rank = len(tensor_shape(sg.tensors[op.inputs[data_input]]))
    if axes is None:
        return "axes are not a compile-time constant"
    if any(a % rank == 0 for a in axes) and rank > 1:
        return "operates on the batch dimension"
    return None


def _no_fused_activation(ctx, op):
    if op.builtinOptions is not None and op.builtinOptions.fusedActivationFunction:
        return "has a fused activation function"
    return None


def _same_dilation(ctx, op):
    o = op.builtinOptions
    if o is not None and o.dilationHFactor != o.dilationWFactor:
        return f"dilation differs in y and x ({o.dilationHFactor} vs {o.dilationWFactor})"
    return None


def _only_innermost(shape):
    return all(d == 1 for d in shape[:-1])


def _fully_connected_limit(ctx, op):
    _, _, sg = ctx
    if op.builtinOptions is not None and op.builtinOptions.weightsFormat != 0:
        return "weights are not in the default format"
    if not _only_innermost(tensor_shape(sg.tensors[op.outputs[0]])):
        return "output tensor is not one-dimensional"
    return None


def _softmax_limit(ctx, op):
    _, _, sg = ctx
    shape = tensor_shape(sg.tensors[op.inputs[0]])
    if not _only_innermost(shape):
        return f"input {shape} is not 1-D"
    if shape and shape[-1] > 16000:
        return f"input has {shape[-1]} elements (max 16,000)"
    return None


def _mean_limit(ctx, op):
    data, model, sg = ctx
    reason = _axes_touch_batch(ctx, op)
    if reason:
        return reason
    shape = tensor_shape(sg.tensors[op.inputs[0]])
    axes = _constant_ints(data, model, sg, op.inputs[1])
    if shape and any(a % len(shape) == len(shape) - 1 for a in axes) and shape[-1] % 4:
        return f"z-reduction over {shape[-1]} channels (must be a multiple of 4)"
    return None


def _pad_limit(ctx, op):
    data, model, sg = ctx
    pads = _constant_ints(data, model, sg, op.inputs[1])
    if pads is None:
        return "paddings are not a compile-time constant"
    return "pads the batch dimension" if any(pads[:2]) else None


def _pack_limit(ctx, op):
    axis = op.builtinOptions.axis if op.builtinOptions is not None else 0
    return "packs along the batch dimension" if axis == 0 else None


def _prelu_limit(ctx, op):
    _, _, sg = ctx
    alpha = tensor_shape(sg.tensors[op.inputs[1]])
    return None if _only_innermost(alpha) else f"alpha {alpha} is not 1-dimensional"


def _squeeze_limit(ctx, op):
    _, _, sg = ctx
    shape = tensor_shape(sg.tensors[op.inputs[0]])
    dims = list(op.builtinOptions.squeezeDims) if op.builtinOptions is not None and \
        op.builtinOptions.squeezeDims is not None else []
    squeezed = [d % len(shape) for d in dims] or [i for i, d in enumerate(shape) if d == 1]
    first_big = next((i for i, d in enumerate(shape) if d > 1), len(shape))
    if any(i > first_big for i in squeezed):
        return f"squeezes a non-leading dimension of {shape} (needs a relayout)"
    return None


def _strided_slice_limit(ctx, op):
    data, model, sg = ctx
    strides = _constant_ints(data, model, sg, op.inputs[3])
    o = op.builtinOptions
    if strides is None or any(s != 1 for s in strides):
        return f"strides {strides} are not all 1"
    if o is not None and (o.ellipsisMask or o.newAxisMask):
        return "uses an ellipsis or new-axis mask"
    return None


# Documented per-op limits we can check from the file alone; each returns a reason or None.
_EDGETPU_LIMITS = {
    "AVERAGE_POOL_2D": _no_fused_activation,
    "MAX_POOL_2D": _no_fused_activation,
    "CONCATENATION": _no_fused_activation,
    "CONV_2D": _same_dilation,
    "DEPTHWISE_CONV_2D": _same_dilation,
    "FULLY_CONNECTED": _fully_connected_limit,
    "SOFTMAX": _softmax_limit,
    "MEAN": _mean_limit,
    "SUM": _axes_touch_batch,
    "REDUCE_MAX": _axes_touch_batch,
    "REDUCE_MIN": _axes_touch_batch,
    "SPLIT": lambda ctx, op: _axes_touch_batch(ctx, op, axis_input=0, data_input=1),
    "PAD": _pad_limit,
    "PACK": _pack_limit,
    "PRELU": _prelu_limit,
    "SQUEEZE": _squeeze_limit,
    "STRIDED_SLICE": _strided_slice_limit,
}


def _tensor_dtype_problem(ctx, op):
    """Why the op's tensors are not Edge TPU types: int8/uint8, or integer constants
    (int32 biases, shape and axis operands)."""
    _, model, sg = ctx
    for i in list(op.inputs) + list(op.outputs):
        if i < 0:
            continue
        t = sg.tensors[i]
        dtype = tensor_type_name(t)
        if dtype in INT8_DTYPES:
            continue
        if dtype in ("INT32", "INT64") and is_constant(model, t):
            continue
        return f"works on {dtype} tensor '{_short(t)}' (the Edge TPU computes in int8)"
    return None


def _activation_shape_problem(ctx, op):
    """Dynamic or rank-rule-breaking activations: the compiler cannot map the op."""
    _, model, sg = ctx
    for i in list(op.inputs) + list(op.outputs):
        if i < 0 or is_constant(model, sg.tensors[i]):
            continue
        t = sg.tensors[i]
        if -1 in shape_signature(t):
            return f"tensor '{_short(t)}' has a dynamic shape {shape_signature(t)}"
        if any(d > 1 for d in tensor_shape(t)[:-3]):
            return (f"tensor '{_short(t)}' {tensor_shape(t)} has a dimension > 1 outside its "
                    "innermost 3")
    return None


def _op_problem(ctx, op, name):
    """Why the compiler could not map this op, or None."""
    if name not in EDGETPU_OPS:
        return "op is not supported by the Edge TPU"
    limit = _EDGETPU_LIMITS.get(name)
    return (_tensor_dtype_problem(ctx, op) or _activation_shape_problem(ctx, op)
            or (_checked_limit(limit, ctx, op, name) if limit else None))


def _checked_limit(limit, ctx, op, name):
    try:
        return limit(ctx, op)
    except MALFORMED:
        return f"its inputs or options do not fit a {name} op (a corrupt file?)"


def _is_float_boundary(ctx, op, name):
    """A QUANTIZE of a float model input or a DEQUANTIZE to a float model output: the
    compiler leaves these conversions on the CPU at the edges of the graph instead of
    cutting it there."""
    _, _, sg = ctx
    if name == "QUANTIZE" and len(op.inputs) and op.inputs[0] >= 0:
        src = op.inputs[0]
        return src in list(sg.inputs) and tensor_type_name(sg.tensors[src]) in FLOAT_DTYPES
    if name == "DEQUANTIZE" and len(op.outputs):
        return op.outputs[0] in list(sg.outputs)
    return False


def _partition(data, model):
    """Walks the main subgraph in execution order: the first op that cannot map cuts the
    graph, and it and every op after it run on the CPU (the compiler makes one Edge TPU
    subgraph and does not come back)."""
    sg = model.subgraphs[0]
    ctx = (data, model, sg)
    first, boundary, on_tpu, on_cpu = None, [], 0, 0
    for index, op in enumerate(sg.operators):
        name = op_name(model, op)
        if first is None and _is_float_boundary(ctx, op, name):
            boundary.append({"index": index, "op": name,
                             "reason": "float conversion at the model boundary"})
            on_cpu += 1
            continue
        problem = None if first is not None else _op_problem(ctx, op, name)
        if problem and first is None:
            first = {"index": index, "op": name, "reason": problem}
        if first is None:
            on_tpu += 1
        else:
            on_cpu += 1
    return first, boundary, on_tpu, on_cpu


def _short(tensor):
    """A tensor name fit for a message: the converter joins the names of fused ops with
    ';' into names hundreds of characters long; the first one says enough."""
    name = tensor_name(tensor).split(";")[0]
    return name if len(name) <= 60 else name[:57] + "..."


def _named(items, limit=5):
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check(check, ok, detail, warning=False):
    return {"check": check, "ok": bool(ok), "detail": detail, "warning": bool(warning)}


def _int8_check(model):
    bad = []
    for sg in model.subgraphs:
        for t in sg.tensors:
            dtype = tensor_type_name(t)
            constant_int = dtype in ("INT32", "INT64") and is_constant(model, t)
            if dtype not in INT8_DTYPES and not constant_int:
                bad.append(f"'{_short(t)}' {dtype}")
    detail = ("all tensors are int8/uint8 (int32 only in constants: biases, shapes)"
              if not bad else f"{len(bad)} tensors are not int8: {_named(bad)}")
    return _check("int8", not bad, detail)


def _static_shape_check(model):
    bad = [f"'{_short(t)}' {shape_signature(t)}" for sg in model.subgraphs for t in sg.tensors
           if -1 in shape_signature(t)]
    detail = ("all shapes are static" if not bad else
              f"{len(bad)} tensors have a dynamic dimension (-1): {_named(bad)}; fix the "
              "batch size when converting")
    return _check("static_shapes", not bad, detail)


def _supported_ops_check(model):
    counts = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            name = op_name(model, op)
            if name not in EDGETPU_OPS:
                counts[name] = counts.get(name, 0) + 1
    bad = [f"{name} x{n}" for name, n in counts.items()]
    detail = ("every op is in the Edge TPU op table" if not bad else
              f"not in the Edge TPU op table: {_named(bad)}")
    return _check("supported_ops", not bad, detail)


def _op_limits_check(data, model):
    bad = []
    for sg in model.subgraphs:
        ctx = (data, model, sg)
        for index, op in enumerate(sg.operators):
            name = op_name(model, op)
            limit = _EDGETPU_LIMITS.get(name)
            reason = _checked_limit(limit, ctx, op, name) if name in EDGETPU_OPS and limit \
                else None
            if reason:
                bad.append(f"#{index} {name}: {reason}")
    detail = ("no documented op limit is broken" if not bad else
              f"{len(bad)} ops break a documented limit: {_named(bad, 3)}")
    return _check("op_limits", not bad, detail)


def _rank_check(model):
    # Weights are laid out by the compiler; the rule is about activations.
    bad = [f"'{_short(t)}' {tensor_shape(t)}" for sg in model.subgraphs for t in sg.tensors
           if not is_constant(model, t) and len(tensor_shape(t)) > 3
           and any(d > 1 for d in tensor_shape(t)[:-3])]
    detail = ("no tensor has a dimension > 1 outside its innermost 3" if not bad else
              f"only the innermost 3 dimensions may exceed 1: {_named(bad)}")
    return _check("tensor_rank", not bad, detail)


def _cache_check(weight_bytes):
    cache = EDGETPU_PARAMETER_CACHE_BYTES
    fits = weight_bytes <= cache
    detail = (f"{weight_bytes:,} parameter bytes " +
              ("fit the ~8 MiB on-chip cache" if fits else
               f"exceed the ~8 MiB on-chip cache by {weight_bytes - cache:,}: parameters "
               "stream from host memory (slower)"))
    return _check("parameter_cache", True, detail, warning=not fits)


def _subgraph_check(model):
    n = len(model.subgraphs)
    return _check("single_subgraph", n == 1, "one subgraph" if n == 1 else
                  f"{n} subgraphs (control flow); the compiler supports one")


def edgetpu_report(model):
    """A static Edge TPU fitness check: does the file follow the documented rules?

    This is NOT the Edge TPU compiler (it cannot be installed here); it reads the
    flatbuffer and applies the rules of coral.ai/docs/edgetpu/models-intro: int8
    everywhere, static shapes, the supported-op table (`EDGETPU_OPS`) with the limits
    we can check from the file, the tensor-rank rule (only the innermost 3 dimensions of
    an activation may exceed 1), and the ~8 MiB parameter cache (a warning, not a
    failure). It also predicts where the compiler cuts the graph: the first op, in
    execution order, that is not in the table, breaks a limit or works on non-int8
    tensors, has a dynamic or rank-rule-breaking activation, or breaks a documented limit;
    it and every op after it run on the CPU. A QUANTIZE of a float model input or a
    DEQUANTIZE to a float model output is counted on the CPU without cutting the graph.

    Args:
        model: a path to a `.tflite` file, or its bytes.

    Returns:
        A JSON-serialisable dict: compatible (bool: every check ok and nothing cut),
        checks ([{check, ok, detail, warning}]), first_unsupported_op ({index, op, reason}
        or None), boundary_ops, ops_on_edgetpu, ops_on_cpu, note.

    Raises:
        TfliteFileError: a missing, unreadable or corrupt file.

    Example:
        report = edgetpu_report(convert(model, "int8_full", representative_data=x[:200]))
        report["compatible"], report["first_unsupported_op"]
    """
    data, _, m = load_parsed(model)
    first, boundary, on_tpu, on_cpu = _partition(data, m)
    checks = [
        _int8_check(m),
        _static_shape_check(m),
        _supported_ops_check(m),
        _op_limits_check(data, m),
        _rank_check(m),
        _subgraph_check(m),
        _cache_check(weight_stats(data, m)["weight_bytes"]),
    ]
    compatible = all(c["ok"] for c in checks) and first is None and not boundary
    return {"compatible": compatible, "checks": checks, "first_unsupported_op": first,
            "boundary_ops": boundary, "ops_on_edgetpu": on_tpu, "ops_on_cpu": on_cpu,
            "note": _EDGETPU_NOTE}


# ----------------------------------------------------------------------------- text

def format_edgetpu(report):
    """Renders `edgetpu_report` output for a terminal, with the static-check caveat.

    Example:
        print(format_edgetpu(edgetpu_report("model_int8.tflite")))
    """
    verdict = "fits the Edge TPU rules" if report["compatible"] else \
        "does NOT fit the Edge TPU rules"
    width = max(len(c["check"]) for c in report["checks"])
    checks = []
    for c in report["checks"]:
        status = "warn" if c["warning"] else ("ok" if c["ok"] else "FAIL")
        prefix = f"  {status:<4}  {c['check']:<{width}}  "
        checks.append(textwrap.fill(c["detail"], width=100, initial_indent=prefix,
                                    subsequent_indent=" " * len(prefix)))
    total = report["ops_on_edgetpu"] + report["ops_on_cpu"]
    lines = [f"Edge TPU: {verdict}", f"  note: {report['note']}"] + checks + \
        [f"  ops on the Edge TPU: {report['ops_on_edgetpu']} of {total}; "
         f"on the CPU: {report['ops_on_cpu']}"]
    first = report["first_unsupported_op"]
    if first:
        lines.append(f"  graph cut at op #{first['index']} {first['op']}: {first['reason']}; "
                     "it and every op after it run on the CPU")
    for b in report["boundary_ops"]:
        lines.append(f"  op #{b['index']} {b['op']} runs on the CPU: {b['reason']}")
    return "\n".join(lines)
