"""The tensors of a parsed `.tflite` as plain values, for `inspect` and `edgetpu`.

Names, dtypes ("INT8", through `tflite_file.TENSOR_TYPE_NAMES`), shapes and shape
signatures, constant buffers (raw bytes, decoded into numpy, sub-byte types
unpacked), quantization parameters, and the weights a model holds
(`weight_stats`: parameters, bytes, zeros).

Example:
    data, label, model = load_parsed("model.tflite")
    for t in model.subgraphs[0].tensors:
        tensor_name(t), tensor_type_name(t), tensor_shape(t), is_constant(model, t)
"""

import os

import numpy as np

from tflite_export.tflite_file import parse_tflite, read_tflite, tensor_type_name

NUMPY_DTYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
    "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16,
    "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64, "UINT64": np.uint64,
    "BOOL": np.bool_,
}
FLOAT_DTYPES = frozenset(("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "FLOAT8_E4M3FN",
                           "FLOAT8_E5M2", "COMPLEX64", "COMPLEX128"))
INT8_DTYPES = frozenset(("INT8", "UINT8"))
SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "INT2": 2}


# A corrupt or hand-made file can give an op fewer inputs than it takes, a tensor
# of another rank, or another op's options (the interpreter then uses defaults).
# The per-op rules read the op's documented layout; such an op gets no MACs and
# an Edge TPU reason instead of a crash. (Indices are in range: tflite_file checks.)
MALFORMED = (IndexError, AttributeError, TypeError, ZeroDivisionError, ValueError)


def load_parsed(model):
    """(validated bytes, label for messages, parsed ModelT) of a path or bytes."""
    data = read_tflite(model)  # validates; raises TfliteFileError naming the file
    label = "<bytes>" if isinstance(model, (bytes, bytearray)) else os.fspath(model)
    return data, label, parse_tflite(data, label)


def tensor_name(tensor):
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def tensor_shape(tensor):
    """The shape as a list of ints (the file's batch size, not -1)."""
    return [int(d) for d in (tensor.shape if tensor.shape is not None else [])]


def shape_signature(tensor):
    """The shape with -1 for dynamic dimensions (the shape itself when there is none)."""
    sig = tensor.shapeSignature
    return [int(d) for d in sig] if sig is not None and len(sig) else tensor_shape(tensor)


def is_constant(model, tensor):
    """True when the tensor's buffer holds data (weights, shapes), False for activations."""
    if tensor.buffer <= 0 or tensor.buffer >= len(model.buffers):
        return False  # buffer 0 is the schema's empty sentinel
    buf = model.buffers[tensor.buffer]
    # Files over 2 GB keep buffers after the flatbuffer, at offset (> 1) and size.
    return bool((buf.data is not None and len(buf.data)) or (buf.offset > 1 and buf.size))


def buffer_bytes(data, model, tensor):
    """The raw bytes of a tensor's constant buffer, or None for activations."""
    if not is_constant(model, tensor):
        return None
    buf = model.buffers[tensor.buffer]
    if buf.data is not None and len(buf.data):
        return np.asarray(buf.data, np.uint8).tobytes()
    return data[buf.offset:buf.offset + buf.size]


def quantization_params(tensor):
    """(scales, zero_points) as lists, or (None, None) when the tensor is not quantized."""
    q = tensor.quantization
    if q is None or q.scale is None or not len(q.scale):
        return None, None
    zero_points = [int(z) for z in q.zeroPoint] if q.zeroPoint is not None else None
    return [float(s) for s in q.scale], zero_points


def is_parameter(tensor, raw):
    """Weights and biases, not the integer shape/axis/padding constants that ops also take."""
    if raw is None:
        return False
    return tensor_type_name(tensor) in FLOAT_DTYPES or quantization_params(tensor)[0] is not None


def decode_buffer(raw, dtype):
    """Buffer bytes as a flat numpy array (sub-byte types unpacked), or None if unknown."""
    if dtype in NUMPY_DTYPES:
        np_dtype = np.dtype(NUMPY_DTYPES[dtype])
        usable = len(raw) - len(raw) % np_dtype.itemsize
        return np.frombuffer(raw[:usable], np_dtype)
    bits = SUB_BYTE_BITS.get(dtype)
    if bits is None:
        return None
    packed = np.frombuffer(raw, np.uint8)
    fields = [(packed >> shift) & ((1 << bits) - 1) for shift in range(0, 8, bits)]
    values = np.stack(fields, axis=1).reshape(-1).astype(np.int16)  # low bits first
    if dtype.startswith("INT"):
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def zero_count(tensor, raw, elements):
    """Elements of a weight tensor that are zero (equal to the zero point when quantized).

    A sparse tensor stores only its kept values (block-sparse blocks may hold zeros too),
    so the missing elements are zeros as well.
    """
    values = decode_buffer(raw, tensor_type_name(tensor))
    if values is None:
        return 0
    _, zero_points = quantization_params(tensor)
    zero = 0
    if zero_points and any(zero_points):
        if len(zero_points) == 1 or tensor.sparsity is not None:
            zero = zero_points[0]
        else:  # per-channel zero points along the quantized dimension
            shape = tensor_shape(tensor)
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



def weight_stats(data, model):
    """Parameter count, bytes, zeros and dtypes of the constant weight/bias tensors."""
    params = zeros = weight_bytes = sparse = 0
    dtypes, seen_buffers = {}, set()
    for sg in model.subgraphs:
        for t in sg.tensors:
            raw = buffer_bytes(data, model, t)
            if not is_parameter(t, raw):
                continue
            elements = int(np.prod(tensor_shape(t)))  # the dense shape, also for sparse tensors
            params += elements
            zeros += zero_count(t, raw, elements)
            sparse += t.sparsity is not None
            dtypes[tensor_type_name(t)] = dtypes.get(tensor_type_name(t), 0) + 1
            if t.buffer not in seen_buffers:  # the converter shares identical buffers
                seen_buffers.add(t.buffer)
                weight_bytes += len(raw)
    return {"parameters": params, "weight_bytes": weight_bytes, "zeros": zeros,
            "weight_dtypes": dtypes, "sparse_tensors": sparse}

