"""Reading a `.tflite` flatbuffer safely: one gate every reader goes through.

The flatbuffer is checked (size, "TFL3" identifier, a full parse with the
schema that ships with ai-edge-litert, then the structure: every tensor,
buffer, op-code and subgraph index in range, each tensor written once, tensor
shapes non-negative and under 2 GiB, constant buffers as long as their
tensors' shapes say, per-channel quantization that fits its dimension, UTF-8
names) before anything hands it to the interpreter, so a wrong path or a
corrupt file becomes one clear error.

Why the structure check: LiteRT verifies the flatbuffer's layout but trusts
its numbers. Seeded fuzzing (tests/reliability/test_fuzz_tflite.py) found
files that parse yet kill or stall the interpreter: an op output pointed at
another op's tensor (a heap overflow: SIGSEGV/SIGABRT), a MaxPool output's
dimension turned into 1.8e9 (31 s and gigabytes in allocate_tensors), tensor
names that are not UTF-8 (`get_input_details()` raises). What no static check
can foresee (an op given -1, "omitted", for an input its kernel needs: SIGSEGV)
is kept out of the calling process by `probe_tflite`, which `evaluate` runs first.

Example:
    data = read_tflite("model.tflite")          # bytes, validated
    model = parse_tflite(data)                  # schema ModelT object
"""

import atexit
import collections
import hashlib
import json
import os
import sys
import threading

from ai_edge_litert import schema_py_generated as schema

from tfcompress.errors import TfcompressError
from tflite_export import child_process


class TfliteFileError(TfcompressError, ValueError):
    """Not a readable TFLite flatbuffer; the message names the file."""


def read_tflite(model):
    """Returns the validated bytes of `model` (a path, bytes or bytearray).

    Raises:
        TfliteFileError: missing/unreadable path, or not a valid flatbuffer.
    """
    if isinstance(model, (bytes, bytearray)):
        data, label = bytes(model), "<bytes>"
    else:
        label = os.fspath(model)
        if not os.path.exists(label):
            raise TfliteFileError(f"{label}: no such file")
        if os.path.isdir(label):
            raise TfliteFileError(f"{label}: is a directory, not a .tflite file")
        try:
            with open(label, "rb") as f:
                data = f.read()
        except OSError as e:
            raise TfliteFileError(f"{label}: cannot read: {e.strerror or e}") from e
    parse_tflite(data, label)
    return data


def parse_tflite(data, label="<bytes>"):
    """Parses flatbuffer bytes into the schema's object API (`ModelT`).

    Raises:
        TfliteFileError: when the bytes are not a complete TFLite model.
    """
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise TfliteFileError(f"{label}: not a TFLite flatbuffer (no 'TFL3' identifier; "
                              f"{len(data)} bytes)")
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    except Exception as e:  # truncated/corrupt offsets surface as many error types
        raise TfliteFileError(f"{label}: corrupt or truncated TFLite flatbuffer "
                              f"({type(e).__name__}: {e})") from e
    if not model.subgraphs:
        raise TfliteFileError(f"{label}: TFLite flatbuffer has no subgraphs")
    _fill_empty_lists(model)
    problem = _structure_problem(model, len(data))
    if problem:
        raise TfliteFileError(f"{label}: corrupt TFLite flatbuffer: {problem}")
    return model


def _fill_empty_lists(model):
    """An absent vector parses as None; readers iterate them, so make those []."""
    for name in ("buffers", "operatorCodes", "signatureDefs", "metadata"):
        if getattr(model, name) is None:
            setattr(model, name, [])
    for sg in model.subgraphs:
        for name in ("tensors", "inputs", "outputs", "operators"):
            if getattr(sg, name) is None:
                setattr(sg, name, [])
        for op in sg.operators:
            for name in ("inputs", "outputs", "intermediates"):
                if getattr(op, name) is None:
                    setattr(op, name, [])


def _enum_names(enum_class):
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


# The schema's enums by number, the one table of their names: 3 -> "CONV_2D", 9 -> "INT8".
OP_NAMES = _enum_names(schema.BuiltinOperator)
TENSOR_TYPE_NAMES = _enum_names(schema.TensorType)


def op_name(model, op):
    """The name of `op` in `model` (a parsed ModelT): "CONV_2D", or a custom op's code."""
    code = model.operatorCodes[op.opcodeIndex]
    # Files written before op codes went past 127 keep the code only in the deprecated
    # int8 field (builtinCode reads 0 = ADD); newer files keep 127 there and the real code
    # in builtinCode. The larger of the two is right for both.
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def tensor_type_name(tensor):
    """The name of a tensor's type: "INT8", "FLOAT32", ... ("TYPE_N" for an unknown one)."""
    return TENSOR_TYPE_NAMES.get(tensor.type, f"TYPE_{tensor.type}")


# Bits per element of the fixed-size tensor types; STRING, RESOURCE and VARIANT have none.
_BITS = {schema.TensorType.FLOAT32: 32, schema.TensorType.FLOAT16: 16,
         schema.TensorType.INT32: 32, schema.TensorType.UINT8: 8, schema.TensorType.INT64: 64,
         schema.TensorType.BOOL: 8, schema.TensorType.INT16: 16,
         schema.TensorType.COMPLEX64: 64, schema.TensorType.INT8: 8,
         schema.TensorType.FLOAT64: 64, schema.TensorType.COMPLEX128: 128,
         schema.TensorType.UINT64: 64, schema.TensorType.UINT32: 32,
         schema.TensorType.UINT16: 16, schema.TensorType.INT4: 4,
         schema.TensorType.BFLOAT16: 16, schema.TensorType.INT2: 2,
         schema.TensorType.UINT4: 4, schema.TensorType.FLOAT8_E4M3FN: 8,
         schema.TensorType.FLOAT8_E5M2: 8}
_KNOWN_TYPES = set(TENSOR_TYPE_NAMES)
# TFLite sizes tensors with int; a larger one is corruption, not a mobile model.
MAX_TENSOR_BYTES = 2 ** 31 - 1


def int_list(values):
    return [] if values is None else [int(v) for v in values]


def _structure_problem(model, file_bytes):
    """The first index, shape or size in `model` that cannot be right, or None."""
    buffers, codes = model.buffers or [], model.operatorCodes or []
    for g, sg in enumerate(model.subgraphs):
        tensors = sg.tensors or []
        for i, tensor in enumerate(tensors):
            problem = _tensor_problem(tensor, buffers, file_bytes)
            if problem:
                return f"subgraph {g} tensor {i}: {problem}"
        count = len(tensors)
        for what, indices, optional in (("input", sg.inputs, False),
                                        ("output", sg.outputs, False)):
            bad = [i for i in int_list(indices) if not (0 <= i < count or optional and i == -1)]
            if bad:
                return f"subgraph {g} {what} names tensor {bad[0]} of {count}"
        # Tensors are written once (the graph is in SSA form): by the caller (subgraph
        # inputs), by the file (constants) or by one op. An op writing a second time
        # overflowed a tensor sized for another shape: SIGSEGV/SIGABRT in LiteRT.
        written = set(int_list(sg.inputs)) | {i for i, t in enumerate(tensors)
                                           if _has_data(t, buffers) and not t.isVariable}
        for k, op in enumerate(sg.operators or []):
            if not 0 <= op.opcodeIndex < len(codes):
                return (f"subgraph {g} operator {k} uses op code {op.opcodeIndex} of "
                        f"{len(codes)}")
            # -1 marks an omitted optional input (e.g. a conv without bias).
            for what, indices, optional in (("input", op.inputs, True),
                                            ("output", op.outputs, False),
                                            ("intermediate", op.intermediates, True)):
                bad = [i for i in int_list(indices) if not (0 <= i < count or optional and i == -1)]
                if bad:
                    return f"subgraph {g} operator {k} {what} names tensor {bad[0]} of {count}"
            for i in int_list(op.outputs):
                if i in written:
                    return (f"subgraph {g} operator {k} writes tensor {i}, which is a "
                            "constant, a subgraph input or another op's output")
                written.add(i)
    for sig in model.signatureDefs or []:
        if not 0 <= sig.subgraphIndex < len(model.subgraphs):
            return f"a signature names subgraph {sig.subgraphIndex} of {len(model.subgraphs)}"
        count = len(model.subgraphs[sig.subgraphIndex].tensors or [])
        entries = (sig.inputs or []) + (sig.outputs or [])
        for entry in entries:
            if not 0 <= entry.tensorIndex < count:
                return f"a signature names tensor {entry.tensorIndex} of {count}"
        # The interpreter decodes these when it is built: UnicodeDecodeError otherwise.
        if not all(_is_utf8(n) for n in [sig.signatureKey] + [e.name for e in entries]):
            return "a signature name is not UTF-8"
    for index in int_list(model.metadataBuffer) + [m.buffer for m in model.metadata or []]:
        if not 0 <= index < max(len(buffers), 1):
            return f"metadata names buffer {index} of {len(buffers)}"
    return None


def _is_utf8(name):
    if not isinstance(name, bytes):
        return True  # None or already text
    try:
        name.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _has_data(tensor, buffers):
    if tensor.buffer <= 0 or tensor.buffer >= len(buffers):
        return False
    buf = buffers[tensor.buffer]
    return bool((buf.data is not None and len(buf.data)) or (buf.offset > 1 and buf.size))


def _tensor_problem(tensor, buffers, file_bytes):
    if tensor.type not in _KNOWN_TYPES:
        return f"unknown type {tensor.type}"
    if not _is_utf8(tensor.name):
        return "its name is not UTF-8"
    shape = int_list(tensor.shape)
    if any(d < 0 for d in shape):
        return f"negative dimension in shape {shape}"
    elements = 1
    for d in shape:
        elements *= d
    bits = _BITS.get(tensor.type)
    if bits and elements * bits > 8 * MAX_TENSOR_BYTES:
        return f"shape {shape} needs {elements * bits // 8:,} bytes (over 2 GiB)"
    if not 0 <= tensor.buffer < max(len(buffers), 1):
        return f"names buffer {tensor.buffer} of {len(buffers)}"
    q = tensor.quantization
    scales = 0 if q is None or q.scale is None else len(q.scale)
    if scales > 1:  # per-channel: one scale per element of the quantized dimension
        axis = q.quantizedDimension
        if not 0 <= axis < len(shape) or shape[axis] != scales:
            return f"{scales} per-channel scales do not fit dimension {axis} of shape {shape}"
    zero_points = 0 if q is None or q.zeroPoint is None else len(q.zeroPoint)
    if scales and zero_points and zero_points != scales:
        return f"{scales} quantization scales but {zero_points} zero points"
    if tensor.buffer == 0 or not buffers:
        return None  # buffer 0 is the schema's empty sentinel: an activation
    buf = buffers[tensor.buffer]
    if buf.offset > 1:  # files over 2 GB keep buffers after the flatbuffer
        if buf.offset + buf.size > file_bytes:
            return f"its buffer ends at byte {buf.offset + buf.size:,}, past the file's end"
        stored = buf.size
    else:
        stored = 0 if buf.data is None else len(buf.data)
    if stored and bits and tensor.sparsity is None:
        packed = -(-elements * bits // 8)
        # Sub-byte types are packed by newer converters, one per byte by older ones.
        if stored != packed and not (bits < 8 and stored == elements):
            return (f"shape {shape} needs {packed:,} bytes of data but its buffer holds "
                    f"{stored:,}")
    return None


# ---------------------------------------------------------------------------
# The probe: a file the check passes may still crash the interpreter

# Load + allocate + one invoke of a model fit in this; a stalled probe is killed.
PROBE_TIMEOUT_S = 60.0
_PROBE_CACHE_SIZE = 256

# Only tflite_file's imports (LiteRT, numpy, the schema; no TensorFlow): ~0.5 s to start.
_PROBE_BOOTSTRAP = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from tflite_export.tflite_file import _probe_worker_main\n"
    "sys.exit(_probe_worker_main())\n")


def _probe_worker_main():
    """The probe process: per request (a JSON line, then the model bytes), load,
    allocate, invoke once on zeros and answer one JSON line."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = requests.readline()
        if not header:
            return 0  # the parent closed the pipe (or exited)
        request = json.loads(header)
        data = requests.read(request["size"])
        resolver = (OpResolverType.AUTO if request["xnnpack"]
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            interpreter = Interpreter(model_content=data, num_threads=request["threads"],
                                      experimental_op_resolver_type=resolver)
            interpreter.allocate_tensors()
            for d in interpreter.get_input_details():
                interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            interpreter.invoke()
            for d in interpreter.get_output_details():
                interpreter.get_tensor(d["index"])
            interpreter.get_signature_list()
            reply = {"ok": True}
        except Exception as e:  # the interpreter's own error: the caller raises it cleanly
            reply = {"error": " ".join(f"{type(e).__name__}: {e}".split())[:400]}
        interpreter = None  # free the model before waiting for the next one
        replies.write((json.dumps(reply) + "\n").encode())
        replies.flush()


class _ProbeProcess(child_process.PythonChild):
    """One long-lived probe process; replaced after a crash or a timeout."""

    def __init__(self):
        super().__init__(_PROBE_BOOTSTRAP)

    def ask(self, data, threads, xnnpack, timeout_s):
        """Returns ("ok"|"error"|"crash"|"timeout", reason)."""
        header = json.dumps({"size": len(data), "threads": threads, "xnnpack": xnnpack})
        if not self.send(header.encode() + b"\n" + data):
            return self._died()
        reply = self.read_line(timeout_s)
        if reply == "timeout":
            self.close()
            return "timeout", f"it did not load and run once within {timeout_s:g} s"
        if reply is None:
            return self._died()
        answer = json.loads(reply)
        return ("ok", None) if answer.get("ok") else ("error", answer["error"])

    def _died(self):
        name, last = self.death()
        return "crash", f"the interpreter crashed on it ({name})" + (
            f": {' '.join(last.split())[:200]}" if last else "")


_probe_lock = threading.Lock()
_probe_process = None
_probe_results = collections.OrderedDict()  # (sha256, threads, xnnpack) -> reason or None


def probe_tflite(data, num_threads=1, use_xnnpack=True, timeout_s=None):
    """Loads, allocates and runs `data` once on zeros in a separate process.

    The structure check cannot foresee every kernel that a corrupt file
    crashes (seen by fuzzing: an op input changed to -1 or to another tensor,
    an op code changed to another op: SIGSEGV/SIGABRT inside LiteRT), and a
    crash in-process would kill the caller. Readers that then open the file
    in-process (`evaluate.TfliteRunner`) ask here first. One probe process is
    kept and reused; results are cached per file content and settings.
    Cost measured here: the process starts once (~0.4 s); then a probe takes
    0.6 ms for an 8x8 CNN and 11 ms for MobileNetV2-0.35 at 96x96 (1.6 MB),
    whose TfliteRunner takes 53 ms in all; a cached file ~0.1 ms.

    Returns:
        None when it ran, else one line saying why it did not: the
        interpreter's error, "crashed (SIGSEGV)", or a timeout.
    """
    global _probe_process
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    key = (hashlib.sha256(data).hexdigest(), int(num_threads), bool(use_xnnpack))
    with _probe_lock:
        if key in _probe_results:
            _probe_results.move_to_end(key)
            return _probe_results[key]
        if _probe_process is None:
            _probe_process = _ProbeProcess()
        status, reason = _probe_process.ask(data, int(num_threads), bool(use_xnnpack),
                                            timeout_s)
        if status in ("crash", "timeout"):
            _probe_process = None  # ask() closed it; the next probe starts a fresh one
        if status != "timeout":  # a busy machine may pass next time
            _probe_results[key] = reason
            while len(_probe_results) > _PROBE_CACHE_SIZE:
                _probe_results.popitem(last=False)
        return reason


@atexit.register
def _close_probe():
    if _probe_process is not None:
        _probe_process.close()
