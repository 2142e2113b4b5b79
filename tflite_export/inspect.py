"""What is really inside a `.tflite` file.

`inspect_tflite` reads the flatbuffer (through `tflite_file`, never the
interpreter) and reports ops, dtypes, I/O quantization, parameter count and
bytes, weight sparsity, MACs and whether the model is full-integer. The static
Edge TPU check lives in `tflite_export.edgetpu`; its names are importable from
here too.

Example:
    info = inspect_tflite("model_int8.tflite")
    print(format_inspection(info))          # ops table, I/O, sizes, MACs
    report = edgetpu_report("model_int8.tflite")
    print(format_edgetpu(report))           # each check, and where the graph is cut
"""

import gzip

import numpy as np

# The Edge TPU check has its own module; its names stay importable from here.
from tflite_export.edgetpu import (EDGETPU_OPS, EDGETPU_PARAMETER_CACHE_BYTES, edgetpu_report,
                                   format_edgetpu)
from tflite_export.tensors import (FLOAT_DTYPES, INT8_DTYPES, MALFORMED, load_parsed,
                                   quantization_params, shape_signature, tensor_name,
                                   tensor_shape, weight_stats)
from tflite_export.tflite_file import int_list, op_name, tensor_type_name

__all__ = ["inspect_tflite", "format_inspection", "output_activation",
           # from tflite_export.edgetpu
           "EDGETPU_OPS", "EDGETPU_PARAMETER_CACHE_BYTES", "edgetpu_report", "format_edgetpu"]


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
    return [tensor_shape(subgraph.tensors[i]) if i >= 0 else [] for i in indices]


def _macs_by_op(model):
    rows = []
    for sg in model.subgraphs:
        for index, op in enumerate(sg.operators):
            name = op_name(model, op)
            rule = _MAC_RULES.get(name)
            if rule is None:
                continue
            try:
                macs = rule(_io_shapes(sg, op.inputs), _io_shapes(sg, op.outputs))
            except MALFORMED:
                continue
            if not len(op.outputs):  # numpy array or list
                continue
            rows.append({"index": index, "op": name,
                         "output": tensor_name(sg.tensors[op.outputs[0]]), "macs": int(macs)})
    return rows


# ----------------------------------------------------------------------------- inspect

def _io(subgraph, indices):
    rows = []
    for i in indices:
        t = subgraph.tensors[i]
        scale, zero_point = quantization_params(t)
        rows.append({"name": tensor_name(t), "shape": tensor_shape(t),
                     "shape_signature": shape_signature(t), "dtype": tensor_type_name(t),
                     "scale": scale, "zero_point": zero_point})
    return rows


def _op_counts(model):
    counts = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            key = (op_name(model, op), model.operatorCodes[op.opcodeIndex].version)
            counts[key] = counts.get(key, 0) + 1
    return [{"op": op, "version": int(version), "count": count}
            for (op, version), count in counts.items()]


def _is_full_integer(model, inputs, outputs):
    io_int8 = all(t["dtype"] in INT8_DTYPES for t in inputs + outputs)
    no_float = all(tensor_type_name(t) not in FLOAT_DTYPES
                   for sg in model.subgraphs for t in sg.tensors)
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
    _, _, parsed = load_parsed(model)
    subgraph = parsed.subgraphs[0]
    writer = {int(t): op for op in subgraph.operators for t in int_list(op.outputs)}
    tensor = int(int_list(subgraph.outputs)[output_index])
    for _ in range(len(subgraph.operators)):
        op = writer.get(tensor)
        if op is None:
            return None
        name = op_name(parsed, op)
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
    data, label, m = load_parsed(model)
    main = m.subgraphs[0]
    inputs, outputs = _io(main, main.inputs), _io(main, main.outputs)
    weights = weight_stats(data, m)
    macs_by_op = _macs_by_op(m)
    dtypes = {}
    for sg in m.subgraphs:
        for t in sg.tensors:
            dtypes[tensor_type_name(t)] = dtypes.get(tensor_type_name(t), 0) + 1
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
