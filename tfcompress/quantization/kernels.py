"""Reading quantized kernels back: from a QAT model's wrappers, and from a `.tflite` file.

For reports and tests: how many unique values or zeros a kernel keeps after
QAT (`quantized_kernels`) and after conversion (`tflite_kernels`).

Example:
    for k in tflite_kernels(convert(qat, "int8_full")):
        k["layer"], k["dtype"], np.count_nonzero(k["values"] == 0)
"""

import numpy as np

from tfcompress.quantization.schemes import weight_name
from tfcompress._compat import quantizer_weight_vars  # noqa: E402


def quantized_kernels(model):
    """The fake-quantized weights a QAT model computes with, one entry a weight.

    Each quantized weight of each wrapper is passed through its quantizer
    with training=False: the float values the int8 kernel stands for (PQAT
    masks and CQAT clusters applied).

    Returns:
        [{"layer": inner layer name, "type", "weight": e.g. "kernel",
          "values": numpy array in Keras layout}]
    """
    rows = []
    for layer in model.layers:
        for weight, quantizer, quantizer_vars in quantizer_weight_vars(layer):
            values = quantizer(weight, training=False, weights=quantizer_vars)
            rows.append({"layer": layer.layer.name, "type": type(layer.layer).__name__,
                         "weight": weight_name(weight), "values": np.asarray(values)})
    return rows


_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def tflite_kernels(tflite_model):
    """The constant kernels of the conv and fully-connected ops in a `.tflite`.

    Values are the stored ones (int8 for quantized files), rearranged to the
    Keras layout: CONV_2D OHWI -> HWIO, FULLY_CONNECTED [out, in] -> [in,
    out], DEPTHWISE_CONV_2D [1, H, W, C] -> [H, W, C]; so the last axis is
    the output channel. "layer" is read from the tensor name (the converter
    names a kernel after the op that uses it), without TFMOT's "quant_"
    prefix: best effort, for reports and tests.

    Example:
        for k in tflite_kernels(convert(qat, "int8_full")):
            k["layer"], k["dtype"], np.count_nonzero(k["values"] == 0)

    Returns:
        [{"layer", "op", "tensor", "dtype", "values", "scales", "zero_points"}]
    """
    from ai_edge_litert import schema_py_generated as schema
    from tflite_export.tflite_file import parse_tflite, read_tflite

    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = parse_tflite(read_tflite(tflite_model))
    rows = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            op_name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if op_name not in _KERNEL_OPS or len(op.inputs) < 2:
                continue
            tensor = subgraph.tensors[op.inputs[1]]
            buffer = model.buffers[tensor.buffer] if tensor.buffer > 0 else None
            dtype = type_names.get(tensor.type, "")
            if buffer is None or buffer.data is None or not len(buffer.data) or \
                    dtype.lower() not in ("int8", "uint8", "int16", "float16", "float32"):
                continue  # computed (e.g. DEQUANTIZE of float16 weights) or exotic
            values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(),
                                   dtype.lower()).reshape([int(d) for d in tensor.shape])
            if op_name == "CONV_2D":
                values = np.transpose(values, (1, 2, 3, 0))
            elif op_name == "FULLY_CONNECTED":
                values = values.T
            else:
                values = values[0]
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            parts = name.split(";")[0].split("/")
            layer = parts[1] if len(parts) > 2 else parts[0]
            quant = tensor.quantization
            rows.append({
                "layer": layer[len("quant_"):] if layer.startswith("quant_") else layer,
                "op": op_name, "tensor": name, "dtype": dtype, "values": values,
                "scales": [float(s) for s in quant.scale] if quant is not None
                and quant.scale is not None else [],
                "zero_points": [int(z) for z in quant.zeroPoint] if quant is not None
                and quant.zeroPoint is not None else []})
    return rows
