"""What is really inside a `.tflite` file, and whether it fits an Edge TPU.

`inspect_tflite` reads the flatbuffer (through `tflite_file`, never the
interpreter) and reports ops, dtypes, I/O quantization, parameter count and
bytes, weight sparsity, MACs and whether the model is full-integer.
`edgetpu_report` is a STATIC check against the Coral Edge TPU rules (int8
everywhere, static shapes, the supported-op table, the tensor-rank rule, the
on-chip parameter cache) that predicts where the Edge TPU compiler would cut
the graph. It is not the compiler, which cannot be installed here; compile
with `edgetpu_compiler` before trusting a "compatible".

Example:
    info = inspect_tflite("model_int8.tflite")
    print(format_inspection(info))          # ops table, I/O, sizes, MACs
    report = edgetpu_report("model_int8.tflite")
    print(format_edgetpu(report))           # each check, and where the graph is cut
"""

import gzip
import os
import textwrap

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export.tflite_file import int_list, parse_tflite, read_tflite


def _enum_names(enum_class):
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


_OP_NAMES = _enum_names(schema.BuiltinOperator)
_DTYPE_NAMES = _enum_names(schema.TensorType)
_NUMPY_DTYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
    "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16,
    "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64, "UINT64": np.uint64,
    "BOOL": np.bool_,
}
_FLOAT_DTYPES = frozenset(("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "FLOAT8_E4M3FN",
                           "FLOAT8_E5M2", "COMPLEX64", "COMPLEX128"))
_INT8_DTYPES = frozenset(("INT8", "UINT8"))
_SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "INT2": 2}

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


# ----------------------------------------------------------------------------- reading

def _load(model):
    data = read_tflite(model)  # validates; raises TfliteFileError naming the file
    label = "<bytes>" if isinstance(model, (bytes, bytearray)) else os.fspath(model)
    return data, label, parse_tflite(data, label)


def _op_name(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    # Files written before op codes went past 127 keep the code only in the deprecated
    # int8 field (builtinCode reads 0 = ADD); newer files keep 127 there and the real code
    # in builtinCode. The larger of the two is right for both.
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def _name(tensor):
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def _dtype(tensor):
    return _DTYPE_NAMES.get(tensor.type, f"TYPE_{tensor.type}")


def _shape(tensor):
    return [int(d) for d in (tensor.shape if tensor.shape is not None else [])]


def _signature(tensor):
    sig = tensor.shapeSignature
    return [int(d) for d in sig] if sig is not None and len(sig) else _shape(tensor)


def _is_constant(model, tensor):
    """True when the tensor's buffer holds data (weights, shapes), False for activations."""
    if tensor.buffer <= 0 or tensor.buffer >= len(model.buffers):
        return False  # buffer 0 is the schema's empty sentinel
    buf = model.buffers[tensor.buffer]
    # Files over 2 GB keep buffers after the flatbuffer, at offset (> 1) and size.
    return bool((buf.data is not None and len(buf.data)) or (buf.offset > 1 and buf.size))


def _buffer_bytes(data, model, tensor):
    """The raw bytes of a tensor's constant buffer, or None for activations."""
    if not _is_constant(model, tensor):
        return None
    buf = model.buffers[tensor.buffer]
    if buf.data is not None and len(buf.data):
        return np.asarray(buf.data, np.uint8).tobytes()
    return data[buf.offset:buf.offset + buf.size]


def _quant(tensor):
    """(scales, zero_points) as lists, or (None, None) when the tensor is not quantized."""
    q = tensor.quantization
    if q is None or q.scale is None or not len(q.scale):
        return None, None
    zero_points = [int(z) for z in q.zeroPoint] if q.zeroPoint is not None else None
    return [float(s) for s in q.scale], zero_points


def _is_parameter(tensor, raw):
    """Weights and biases, not the integer shape/axis/padding constants that ops also take."""
    if raw is None:
        return False
    return _dtype(tensor) in _FLOAT_DTYPES or _quant(tensor)[0] is not None


def _decode(raw, dtype):
    """Buffer bytes as a flat numpy array (sub-byte types unpacked), or None if unknown."""
    if dtype in _NUMPY_DTYPES:
        np_dtype = np.dtype(_NUMPY_DTYPES[dtype])
        usable = len(raw) - len(raw) % np_dtype.itemsize
        return np.frombuffer(raw[:usable], np_dtype)
    bits = _SUB_BYTE_BITS.get(dtype)
    if bits is None:
        return None
    packed = np.frombuffer(raw, np.uint8)
    fields = [(packed >> shift) & ((1 << bits) - 1) for shift in range(0, 8, bits)]
    values = np.stack(fields, axis=1).reshape(-1).astype(np.int16)  # low bits first
    if dtype.startswith("INT"):
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def _zero_count(tensor, raw, elements):
    """Elements of a weight tensor that are zero (equal to the zero point when quantized).

    A sparse tensor stores only its kept values (block-sparse blocks may hold zeros too),
    so the missing elements are zeros as well.
    """
    values = _decode(raw, _dtype(tensor))
    if values is None:
        return 0
    _, zero_points = _quant(tensor)
    zero = 0
    if zero_points and any(zero_points):
        if len(zero_points) == 1 or tensor.sparsity is not None:
            zero = zero_points[0]
        else:  # per-channel zero points along the quantized dimension
            shape = _shape(tensor)
            axis = tensor.quantization.quantizedDimension
            zp_shape = [1] * len(shape)
            zp_shape[axis] = len(zero_points)
            zero = np.broadcast_to(np.reshape(zero_points, zp_shape), shape).reshape(-1)
    if tensor.sparsity is None:
        values = values[:elements]  # a packed 4-bit buffer may end in a padding nibble
    stored_zeros = int(np.count_nonzero(values == zero))
    if tensor.sparsity is not None:
        return elements - len(values) + stored_zeros
    return stored_zeros


# ----------------------------------------------------------------------------- MACs

def _conv_macs(inputs, outputs):
    out, kernel = outputs[0], inputs[1]  # kernel [Cout, kh, kw, Cin_per_group]
    return int(np.prod(out)) * int(np.prod(kernel[1:]))


def _depthwise_macs(inputs, outputs):
    out, kernel = outputs[0], inputs[1]  # kernel [1, kh, kw, Cout]
    return int(np.prod(out)) * kernel[1] * kernel[2]


def _fully_connected_macs(inputs, outputs):
    out, weights = outputs[0], inputs[1]  # weights [units, in]
    return int(np.prod(out)) * weights[-1]


def _transpose_conv_macs(inputs, outputs):
    kernel, x = inputs[1], inputs[2]  # (output_shape, [Cout, kh, kw, Cin], input)
    return int(np.prod(x)) * kernel[0] * kernel[1] * kernel[2]


_MAC_RULES = {
    "CONV_2D": _conv_macs,
    "DEPTHWISE_CONV_2D": _depthwise_macs,
    "FULLY_CONNECTED": _fully_connected_macs,
    "TRANSPOSE_CONV": _transpose_conv_macs,
}


def _io_shapes(subgraph, indices):
    return [_shape(subgraph.tensors[i]) if i >= 0 else [] for i in indices]


# A corrupt or hand-made file can give an op fewer inputs than it takes, a tensor
# of another rank, or another op's options (the interpreter then uses defaults).
# The per-op rules read the op's documented layout; such an op gets no MACs and
# an Edge TPU reason instead of a crash. (Indices are in range: tflite_file checks.)
_MALFORMED = (IndexError, AttributeError, TypeError, ZeroDivisionError, ValueError)


def _macs_by_op(model):
    rows = []
    for sg in model.subgraphs:
        for index, op in enumerate(sg.operators):
            name = _op_name(model, op)
            rule = _MAC_RULES.get(name)
            if rule is None:
                continue
            try:
                macs = rule(_io_shapes(sg, op.inputs), _io_shapes(sg, op.outputs))
            except _MALFORMED:
                continue
            if not len(op.outputs):  # numpy array or list
                continue
            rows.append({"index": index, "op": name,
                         "output": _name(sg.tensors[op.outputs[0]]), "macs": int(macs)})
    return rows


# ----------------------------------------------------------------------------- inspect

def _io(subgraph, indices):
    rows = []
    for i in indices:
        t = subgraph.tensors[i]
        scale, zero_point = _quant(t)
        rows.append({"name": _name(t), "shape": _shape(t), "shape_signature": _signature(t),
                     "dtype": _dtype(t), "scale": scale, "zero_point": zero_point})
    return rows


def _op_counts(model):
    counts = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            key = (_op_name(model, op), model.operatorCodes[op.opcodeIndex].version)
            counts[key] = counts.get(key, 0) + 1
    return [{"op": op, "version": int(version), "count": count}
            for (op, version), count in counts.items()]


def _weights(data, model):
    """Parameter count, bytes, zeros and dtypes of the constant weight/bias tensors."""
    params = zeros = weight_bytes = sparse = 0
    dtypes, seen_buffers = {}, set()
    for sg in model.subgraphs:
        for t in sg.tensors:
            raw = _buffer_bytes(data, model, t)
            if not _is_parameter(t, raw):
                continue
            elements = int(np.prod(_shape(t)))  # the dense shape, also for sparse tensors
            params += elements
            zeros += _zero_count(t, raw, elements)
            sparse += t.sparsity is not None
            dtypes[_dtype(t)] = dtypes.get(_dtype(t), 0) + 1
            if t.buffer not in seen_buffers:  # the converter shares identical buffers
                seen_buffers.add(t.buffer)
                weight_bytes += len(raw)
    return {"parameters": params, "weight_bytes": weight_bytes, "zeros": zeros,
            "weight_dtypes": dtypes, "sparse_tensors": sparse}


def _is_full_integer(model, inputs, outputs):
    io_int8 = all(t["dtype"] in _INT8_DTYPES for t in inputs + outputs)
    no_float = all(_dtype(t) not in _FLOAT_DTYPES for sg in model.subgraphs for t in sg.tensors)
    return io_int8 and no_float


# Ops that only move or re-type a tensor: the activation that decides an output's
# meaning comes before them (int8 files end in LOGISTIC -> DEQUANTIZE).
_PASS_THROUGH_OPS = {"DEQUANTIZE", "QUANTIZE", "RESHAPE", "CAST", "SQUEEZE"}


def output_activation(model, output_index=0):
    """The op that gives output `output_index` of the main subgraph its meaning
    ("SOFTMAX", "LOGISTIC", "FULLY_CONNECTED"...), looking through dequantize,
    quantize, reshape and cast ops; None for an output no op writes.

    Example:
        output_activation("wake_word_int8_full.tflite")   # "LOGISTIC": threshold at 0.5
    """
    _, _, parsed = _load(model)
    subgraph = parsed.subgraphs[0]
    writer = {int(t): op for op in subgraph.operators for t in int_list(op.outputs)}
    tensor = int(int_list(subgraph.outputs)[output_index])
    for _ in range(len(subgraph.operators)):
        op = writer.get(tensor)
        if op is None:
            return None
        name = _op_name(parsed, op)
        inputs = int_list(op.inputs)
        if name not in _PASS_THROUGH_OPS or not len(inputs):
            return name
        tensor = int(inputs[0])
    return None


def inspect_tflite(model):
    """Reports what a `.tflite` file holds, read from the flatbuffer itself.

    Args:
        model: a path to a `.tflite` file, or its bytes.

    Returns:
        A JSON-serialisable dict:
            file, file_bytes, gzip_bytes (gzip -9 of the whole file);
            ops: [{op, version, count}], builtin names ("CONV_2D"), custom ops by code;
            subgraphs, operators: how many (operators over all subgraphs);
            tensor_dtypes: {"INT8": n_tensors, ...} over all subgraphs;
            inputs / outputs: [{name, shape, shape_signature (-1 = dynamic), dtype,
                scale, zero_point}] of the main subgraph (scale/zero_point None if float);
            parameters: elements of the constant weight and bias tensors: buffers that
                hold float data or carry quantization parameters; integer shape, axis and
                padding constants are not parameters. Sparse tensors count by their dense
                shape. With BatchNorm folded, a conv+BN pair of C channels has C bias
                parameters where Keras counts 4*C for the BN;
            weight_bytes: bytes of those buffers (shared buffers once); weight_fraction =
                weight_bytes / file_bytes;
            zero_fraction: zero elements / parameters, read from the buffers in each
                tensor's dtype; a quantized value equal to its zero point is a zero, and
                the elements a sparse tensor does not store are zeros;
            sparse_tensors: weight tensors stored sparse (EXPERIMENTAL_SPARSITY);
            weight_dtypes: {"INT8": n_tensors, "FLOAT16": ...} of the weight tensors;
            macs / macs_by_op: multiply-accumulates per invocation (the batch in the file
                included) of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV;
            is_full_integer: True iff every model input and output is INT8/UINT8 and no
                tensor anywhere (activation or constant) is floating point, so no op
                computes in float. int8_full: True; int8 with float I/O, dynamic range,
                float16, float32, int16x8: False.

    Raises:
        TfliteFileError: a missing, unreadable or corrupt file (the message names it).

    Example:
        info = inspect_tflite("model_int8.tflite")
        info["is_full_integer"], info["macs"], info["inputs"][0]["scale"]
    """
    data, label, m = _load(model)
    main = m.subgraphs[0]
    inputs, outputs = _io(main, main.inputs), _io(main, main.outputs)
    weights = _weights(data, m)
    macs_by_op = _macs_by_op(m)
    dtypes = {}
    for sg in m.subgraphs:
        for t in sg.tensors:
            dtypes[_dtype(t)] = dtypes.get(_dtype(t), 0) + 1
    params = weights["parameters"]
    return {
        "file": label,
        "file_bytes": len(data),
        "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "subgraphs": len(m.subgraphs),
        "operators": sum(len(sg.operators) for sg in m.subgraphs),
        "ops": _op_counts(m),
        "tensor_dtypes": dtypes,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": params,
        "weight_bytes": weights["weight_bytes"],
        "weight_fraction": weights["weight_bytes"] / len(data),
        "zero_fraction": weights["zeros"] / params if params else 0.0,
        "sparse_tensors": weights["sparse_tensors"],
        "weight_dtypes": weights["weight_dtypes"],
        "macs": sum(row["macs"] for row in macs_by_op),
        "macs_by_op": macs_by_op,
        "is_full_integer": _is_full_integer(m, inputs, outputs),
    }


# ----------------------------------------------------------------------------- Edge TPU

def _constant_ints(data, model, subgraph, index):
    t = subgraph.tensors[index]
    raw = _buffer_bytes(data, model, t)
    values = _decode(raw, _dtype(t)) if raw is not None else None
    return None if values is None else [int(v) for v in values]


def _axes_touch_batch(ctx, op, axis_input=1, data_input=0):
    data, model, sg = ctx
    axes = _constant_ints(data, model, sg, op.inputs[axis_input])
    rank = len(_shape(sg.tensors[op.inputs[data_input]]))
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
    if not _only_innermost(_shape(sg.tensors[op.outputs[0]])):
        return "output tensor is not one-dimensional"
    return None


def _softmax_limit(ctx, op):
    _, _, sg = ctx
    shape = _shape(sg.tensors[op.inputs[0]])
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
    shape = _shape(sg.tensors[op.inputs[0]])
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
    alpha = _shape(sg.tensors[op.inputs[1]])
    return None if _only_innermost(alpha) else f"alpha {alpha} is not 1-dimensional"


def _squeeze_limit(ctx, op):
    _, _, sg = ctx
    shape = _shape(sg.tensors[op.inputs[0]])
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
        dtype = _dtype(t)
        if dtype in _INT8_DTYPES:
            continue
        if dtype in ("INT32", "INT64") and _is_constant(model, t):
            continue
        return f"works on {dtype} tensor '{_short(t)}' (the Edge TPU computes in int8)"
    return None


def _activation_shape_problem(ctx, op):
    """Dynamic or rank-rule-breaking activations: the compiler cannot map the op."""
    _, model, sg = ctx
    for i in list(op.inputs) + list(op.outputs):
        if i < 0 or _is_constant(model, sg.tensors[i]):
            continue
        t = sg.tensors[i]
        if -1 in _signature(t):
            return f"tensor '{_short(t)}' has a dynamic shape {_signature(t)}"
        if any(d > 1 for d in _shape(t)[:-3]):
            return (f"tensor '{_short(t)}' {_shape(t)} has a dimension > 1 outside its "
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
    except _MALFORMED:
        return f"its inputs or options do not fit a {name} op (a corrupt file?)"


def _is_float_boundary(ctx, op, name):
    """A QUANTIZE of a float model input or a DEQUANTIZE to a float model output: the
    compiler leaves these conversions on the CPU at the edges of the graph instead of
    cutting it there."""
    _, _, sg = ctx
    if name == "QUANTIZE" and len(op.inputs) and op.inputs[0] >= 0:
        src = op.inputs[0]
        return src in list(sg.inputs) and _dtype(sg.tensors[src]) in _FLOAT_DTYPES
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
        name = _op_name(model, op)
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
    name = _name(tensor).split(";")[0]
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
            dtype = _dtype(t)
            constant_int = dtype in ("INT32", "INT64") and _is_constant(model, t)
            if dtype not in _INT8_DTYPES and not constant_int:
                bad.append(f"'{_short(t)}' {dtype}")
    detail = ("all tensors are int8/uint8 (int32 only in constants: biases, shapes)"
              if not bad else f"{len(bad)} tensors are not int8: {_named(bad)}")
    return _check("int8", not bad, detail)


def _static_shape_check(model):
    bad = [f"'{_short(t)}' {_signature(t)}" for sg in model.subgraphs for t in sg.tensors
           if -1 in _signature(t)]
    detail = ("all shapes are static" if not bad else
              f"{len(bad)} tensors have a dynamic dimension (-1): {_named(bad)}; fix the "
              "batch size when converting")
    return _check("static_shapes", not bad, detail)


def _supported_ops_check(model):
    counts = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            name = _op_name(model, op)
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
            name = _op_name(model, op)
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
    bad = [f"'{_short(t)}' {_shape(t)}" for sg in model.subgraphs for t in sg.tensors
           if not _is_constant(model, t) and len(_shape(t)) > 3
           and any(d > 1 for d in _shape(t)[:-3])]
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
    data, _, m = _load(model)
    first, boundary, on_tpu, on_cpu = _partition(data, m)
    checks = [
        _int8_check(m),
        _static_shape_check(m),
        _supported_ops_check(m),
        _op_limits_check(data, m),
        _rank_check(m),
        _subgraph_check(m),
        _cache_check(_weights(data, m)["weight_bytes"]),
    ]
    compatible = all(c["ok"] for c in checks) and first is None and not boundary
    return {"compatible": compatible, "checks": checks, "first_unsupported_op": first,
            "boundary_ops": boundary, "ops_on_edgetpu": on_tpu, "ops_on_cpu": on_cpu,
            "note": _EDGETPU_NOTE}


# ----------------------------------------------------------------------------- text

def _kib(n):
    return f"{n:,} B ({n / 1024:,.1f} KiB)"


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return ["  " + line for line in lines]


def _io_line(t):
    quant = ""
    if t["scale"] is not None and len(t["scale"]) == 1:
        quant = f"  scale={t['scale'][0]:.6g}  zero_point={(t['zero_point'] or [0])[0]}"
    elif t["scale"] is not None:
        quant = f"  per-channel ({len(t['scale'])} scales)"
    dynamic = f"  (dynamic: {t['shape_signature']})" if -1 in t["shape_signature"] else ""
    return f"  {t['name']}: {t['dtype']} {t['shape']}{dynamic}{quant}"


def format_inspection(info):
    """Renders `inspect_tflite` output for a terminal.

    Example:
        print(format_inspection(inspect_tflite("model.tflite")))
    """
    total_ops = sum(o["count"] for o in info["ops"])
    macs = {}
    for row in info["macs_by_op"]:
        macs[row["op"]] = macs.get(row["op"], 0) + row["macs"]
    rows = [[o["op"], o["version"], o["count"], f"{macs.get(o['op'], 0):,}"
             if o["op"] in macs else ""] for o in info["ops"]]
    lines = [f"{info['file']}",
             f"  size        {_kib(info['file_bytes'])}; gzip -9 {_kib(info['gzip_bytes'])}",
             f"  parameters  {info['parameters']:,} in {_kib(info['weight_bytes'])} "
             f"({info['weight_fraction']:.1%} of the file); zeros {info['zero_fraction']:.1%}"
             + (f"; {info['sparse_tensors']} sparse tensors" if info["sparse_tensors"] else ""),
             "  weights     " + ", ".join(f"{k} x{v}" for k, v in
                                          sorted(info["weight_dtypes"].items())),
             "  tensors     " + ", ".join(f"{k} x{v}" for k, v in
                                          sorted(info["tensor_dtypes"].items())),
             f"  MACs        {info['macs']:,}",
             f"  full-integer {'yes' if info['is_full_integer'] else 'no'}",
             "inputs:"] + [_io_line(t) for t in info["inputs"]] + \
            ["outputs:"] + [_io_line(t) for t in info["outputs"]] + \
            [f"ops ({total_ops}):"] + _table(["op", "version", "count", "MACs"], rows)
    return "\n".join(lines)


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
