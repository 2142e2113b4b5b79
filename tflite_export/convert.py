"""Keras model -> TFLite flatbuffer, in every mobile format.

Each export mode is one row of converter settings in `MODES` (an `ExportMode`:
name, one-line description, optimizations, supported types and ops, whether it
needs calibration data, integer input/output); `convert` applies the row.
`MODE_NAMES` lists them in order: float32, float16, dynamic, int8, int8_full
(int8 everywhere, for the Edge TPU and MCUs), int16x8, and the int4 modes that AI Edge
Quantizer writes from the float32 file (`int4.py`).

Importing this module does not import TensorFlow (recipe validation reads the
table); `convert` does.

`from_keras_model` leaves the batch dimension dynamic (-1), which the Edge TPU
compiler and many mobile runtimes reject; we trace the model with a fixed batch
size instead and convert that concrete function.

Example:
    tflite_bytes = convert(model, "int8_full", representative_data=x_train[:200])
    write_tflite(tflite_bytes, "model_int8.tflite")
    MODES["int8_full"].description       # one line, for help texts
"""

import dataclasses
import os

import numpy as np

from tfcompress.checks import check_finite_weights
from tfcompress.errors import TfcompressError


@dataclasses.dataclass(frozen=True)
class ExportMode:
    """One export mode: the converter settings `convert` applies, by name.

    TensorFlow names are kept as strings (resolved when converting), so the
    table is readable without importing TensorFlow.

    Attributes:
        name: the mode's name ("int8_full").
        description: one line saying what the file holds and where it runs.
        optimizations: `tf.lite.Optimize` members ("DEFAULT",).
        supported_types: `target_spec.supported_types`, as tf dtype names ("float16",).
        supported_ops: `target_spec.supported_ops`, as `tf.lite.OpsSet` members.
        needs_calibration: needs `representative_data` (activation ranges).
        io_type: the integer input/output type ("int8"), or None for float I/O.
        qat_ranges: a quantization-aware model brings its own ranges: it needs
            no calibration, and any given is ignored (it would override them).
        full_integer: no float tensor may remain. For a QAT model, which cannot
            take `supported_ops` (the converter would then demand calibration
            data), this is checked after conversion instead.
        sparse: may store pruned weights sparse (EXPERIMENTAL_SPARSITY).
        int4: the float32 file is rewritten by AI Edge Quantizer (`int4.py`); the
            converter settings above are unused.
        learned_rounding: the Keras weights are rounded by AdaRound on the calibration
            data first (`tfcompress.quantization.adaround`).
        budget: chosen per layer on labelled data under a budget
            (`mixed_precision.mixed_int4`): the pipeline makes it, `convert` cannot.
    """
    name: str
    description: str
    optimizations: tuple = ()
    supported_types: tuple = ()
    supported_ops: tuple = ()
    needs_calibration: bool = False
    io_type: str = None
    qat_ranges: bool = False
    full_integer: bool = False
    sparse: bool = False
    int4: bool = False
    learned_rounding: bool = False
    budget: bool = False

    @property
    def quantized(self):
        """True when anything is quantized (every mode but float32)."""
        return bool(self.optimizations) or self.int4


MODES = {m.name: m for m in (
    ExportMode("float32", "plain float model", sparse=True),
    ExportMode("float16", "float16 weights (half the bytes); runs as float32 on CPUs",
               optimizations=("DEFAULT",), supported_types=("float16",)),
    ExportMode("dynamic", "int8 weights, float activations (dynamic-range quantization)",
               optimizations=("DEFAULT",)),
    ExportMode("int8", "int8 weights and activations, float input/output (float ops may "
               "remain)", optimizations=("DEFAULT",), needs_calibration=True, qat_ranges=True),
    ExportMode("int8_full", "int8 everywhere, int8 input/output, TFLITE_BUILTINS_INT8 only "
               "(Edge TPU, MCUs)", optimizations=("DEFAULT",),
               supported_ops=("TFLITE_BUILTINS_INT8",), needs_calibration=True, io_type="int8",
               qat_ranges=True, full_integer=True),
    ExportMode("int16x8", "int16 activations, int8 weights (not delegated to XNNPACK: slower)",
               optimizations=("DEFAULT",),
               supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",),
               needs_calibration=True),
    ExportMode("int4_weights", "int4 conv/dense weights (depthwise int8), float compute; "
               "AI Edge Quantizer, round-to-nearest", int4=True),
    ExportMode("int4_dynamic", "int4 conv/dense weights (depthwise int8), activations "
               "quantized at run time; AI Edge Quantizer", int4=True),
    ExportMode("int4_adaround", "int4_weights after learned rounding (AdaRound) and bias "
               "correction on the calibration data", needs_calibration=True, int4=True,
               learned_rounding=True),
    ExportMode("int4_mixed", "int4 or int8 weights per layer: the smallest file within the "
               "recipe's ptq budget (max_drop, max_bytes); weight-only", needs_calibration=True,
               int4=True, budget=True),
    ExportMode("int4_w4a8", "int4 conv/dense weights, int8 everywhere else, int8 "
               "input/output (full integer); AI Edge Quantizer", needs_calibration=True,
               io_type="int8", full_integer=True, int4=True),
)}
MODE_NAMES = tuple(MODES)
NEEDS_CALIBRATION = tuple(m.name for m in MODES.values() if m.needs_calibration)
QUANTIZED_MODES = tuple(m.name for m in MODES.values() if m.quantized)


class ExportError(TfcompressError, ValueError):
    """A model could not be converted in the asked mode; the message says why."""


def is_qat_model(model):
    """True when `model` holds TFMOT quantization-aware wrappers (quantize_model).

    The same test as `tfcompress.quantization.is_qat_model` (imported here on
    first use: it loads TFMOT).
    """
    from tfcompress.quantization import is_qat_model as holds_quantize_wrappers
    return holds_quantize_wrappers(model)


def fixed_batch_function(model, batch_size):
    """The model traced as a tf.function whose inputs have a fixed batch dimension."""
    from tfcompress.keras import tf
    specs = [tf.TensorSpec((batch_size,) + tuple(t.shape[1:]), t.dtype, name=t.name.split(":")[0])
             for t in model.inputs]

    @tf.function(input_signature=specs)
    def serve(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    return serve.get_concrete_function()


def _samples(representative_data):
    """Yields single samples (a list of arrays, one per input) from arrays, a
    tf.data.Dataset, a generator or a callable returning one."""
    from tfcompress.keras import tf
    data = representative_data
    if callable(data) and not isinstance(data, tf.data.Dataset):
        data = data()
    if isinstance(data, np.ndarray):
        for row in data:
            yield [row]
        return
    if isinstance(data, (list, tuple)) and data and all(isinstance(a, np.ndarray) for a in data) \
            and len({len(a) for a in data}) == 1 and data[0].ndim > 1:
        for rows in zip(*data):  # one array per model input
            yield list(rows)
        return
    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    for item in data:
        if isinstance(item, dict):
            raise ExportError("representative_data yields dicts; yield arrays (one per input)")
        if isinstance(item, tuple) and len(item) == 2:  # (x, y) pairs: keep x
            item = item[0]
        yield [np.asarray(a) for a in (item if isinstance(item, list) else [item])]


def representative_dataset(representative_data, model, batch_size):
    """A converter `representative_dataset` that checks each sample's shape.

    Samples may come with or without a leading batch axis of 1.
    """
    want = [tuple(t.shape[1:]) for t in model.inputs]

    def gen():
        count = 0
        for sample in _samples(representative_data):
            if len(sample) != len(want):
                raise ExportError(f"representative_data gives {len(sample)} arrays a sample but "
                                  f"the model has {len(want)} inputs")
            batch = []
            for arr, shape in zip(sample, want):
                arr = np.asarray(arr)
                if not (np.issubdtype(arr.dtype, np.integer)
                        or np.issubdtype(arr.dtype, np.floating)):
                    raise ExportError(f"representative_data holds {arr.dtype} values; give "
                                      "numeric (float or integer) arrays")
                arr = arr.astype(np.float32)
                if arr.shape == shape:
                    arr = arr[None]
                elif arr.shape[1:] != shape:
                    raise ExportError(f"representative_data sample has shape {arr.shape} but "
                                      f"the model input is {shape}; reshape the calibration data")
                if not np.all(np.isfinite(arr)):
                    raise ExportError("representative_data contains NaN or Inf")
                batch.append(np.repeat(arr[:1], batch_size, axis=0) if len(arr) != batch_size
                             else arr)
            count += 1
            yield batch
        if count == 0:
            raise ExportError("representative_data is empty")

    return gen


def convert(model_or_path, mode="float32", representative_data=None, batch_size=1, sparse=False):
    """Converts a tf_keras model (or a saved model file) to TFLite bytes.

    Args:
        model_or_path: a tf_keras Model (plain, stripped or QAT) or a path
            `tfcompress.load_model` reads.
        mode: one of MODE_NAMES (the settings are its row in MODES).
        representative_data: calibration samples for int8, int8_full and
            int16x8: an array (N, ...), a list of arrays (one per input), a
            tf.data.Dataset, or a generator (or callable) yielding samples or
            (x, y) pairs. 100-500 samples is usual. QAT models need none, and
            theirs is ignored in int8/int8_full: calibration would override the
            ranges they learned.
        batch_size: the fixed batch dimension of the inputs.
        sparse: store pruned float32 weights in sparse format
            (EXPERIMENTAL_SPARSITY); refused for quantized modes because
            XNNPACK cannot run sparse quantized models.

    Returns:
        The flatbuffer as bytes.

    Raises:
        ExportError: bad mode/options, missing calibration data, or a model the
            converter rejects (the converter's reason is included).
    """
    if mode not in MODES:
        raise ExportError(f"unknown TFLite mode {mode!r}; choose one of {', '.join(MODES)}")
    row = MODES[mode]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if sparse and not row.sparse:
        raise ExportError(
            f"sparse=True is only for float32: a sparse {mode} model fails to prepare under "
            "XNNPACK, the default CPU delegate on phones; export it dense, or use float32 sparse")
    from tfcompress.keras import ensure_tf_keras_model, tf
    if isinstance(model_or_path, (str, os.PathLike)):
        from tfcompress.saving import load_model
        model = load_model(model_or_path, compile=False)
    else:
        model = ensure_tf_keras_model(model_or_path)
    # The converter copies NaN/Inf weights into the file without a word.
    check_finite_weights(model, "the model to convert")
    # A QAT model quantizes with the ranges it learned. Any representative_dataset
    # makes the converter calibrate it again, overriding them, so none is given;
    # and setting TFLITE_BUILTINS_INT8 makes it demand one (its pre-conversion
    # check cannot see the model's fake-quant ops yet), so for QAT int8_full the
    # full-integer result is checked after conversion instead.
    learned_ranges = row.qat_ranges and is_qat_model(model)
    if row.needs_calibration and representative_data is None and not learned_ranges:
        raise ExportError(f"mode {mode} needs representative_data (about 100-500 training "
                          "samples) to calibrate activation ranges; pass representative_data= "
                          "(CLI: --calibration DATA), or train quantization-aware first")

    if row.budget:
        raise ExportError(f"{mode} chooses int4 or int8 per layer on labelled data under a "
                          "budget: use it in a recipe with ptq.max_drop or ptq.max_bytes "
                          "(tfcompress run), or call tflite_export.mixed_precision.mixed_int4")
    if row.int4:
        return _convert_int4(model, mode, representative_data, batch_size)
    fn = fixed_batch_function(model, batch_size)
    # The converter saves its trackable object as a SavedModel first. Handing it the
    # Keras model makes Keras trace every layer (30 s for MobileNetV2 here); a bare
    # tf.Module holding the variables and the function gives the same bytes and
    # signature in a quarter of the time. Without any trackable the signature is lost.
    holder = tf.Module()
    holder.model_variables = list(model.variables)
    holder.serve = fn
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], holder)
    optimizations = ("EXPERIMENTAL_SPARSITY",) if sparse else row.optimizations
    if optimizations:
        converter.optimizations = [getattr(tf.lite.Optimize, o) for o in optimizations]
    if row.supported_types:
        converter.target_spec.supported_types = [getattr(tf, t) for t in row.supported_types]
    if row.supported_ops and not learned_ranges:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, o)
                                               for o in row.supported_ops]
    if row.needs_calibration and representative_data is not None and not learned_ranges:
        converter.representative_dataset = representative_dataset(
            representative_data, model, batch_size)
    if row.io_type:
        converter.inference_input_type = getattr(tf, row.io_type)
        converter.inference_output_type = getattr(tf, row.io_type)
    try:
        result = converter.convert()
    except ExportError:
        raise
    except Exception as e:  # ConverterError and friends: keep the converter's reason.
        reason = " ".join(str(e).split())
        raise ExportError(f"{mode} conversion of {model.name} failed: {reason[:600]}") from e
    if learned_ranges and row.full_integer:
        _check_full_integer(result, model)
    return result


def _convert_int4(model, mode, representative_data, batch_size):
    """The float32 file, rewritten by AI Edge Quantizer in int4 `mode` (see int4.py)."""
    from tflite_export import int4
    if is_qat_model(model):
        raise ExportError(f"{mode} rewrites a float model; a QAT model learned int8 ranges: "
                          "export it in int8 or int8_full")
    samples = None
    if MODES[mode].needs_calibration:
        samples = list(representative_dataset(representative_data, model, batch_size)())
    if MODES[mode].learned_rounding:
        from tfcompress.quantization.adaround import adaround
        if len(model.inputs) != 1:
            raise ExportError(f"{mode} takes single-input models")
        model, _ = adaround(model, np.concatenate([sample[0] for sample in samples]), bits=4)
    float_bytes = convert(model, "float32", batch_size=batch_size)
    try:
        return int4.quantize(float_bytes, mode, samples)
    except ExportError:
        raise
    except Exception as e:  # AEQ raises ValueError, KeyError...: keep its reason
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ExportError(f"{mode} quantization of {model.name} failed: {reason[:600]}") from e


def _check_full_integer(tflite_bytes, model):
    """Raises ExportError naming the float tensors of a QAT int8_full conversion."""
    from ai_edge_litert import schema_py_generated as schema
    from tflite_export.tflite_file import parse_tflite
    floats = (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16)
    names = [t.name.decode() for sg in parse_tflite(tflite_bytes).subgraphs
             for t in sg.tensors if t.type in floats]
    if names:
        raise ExportError(
            f"int8_full conversion of QAT model {model.name} left {len(names)} float tensors "
            f"(e.g. {', '.join(names[:3])}): some layers were not quantized (kept in float, or "
            "a BatchNormalization folded into per-tensor weights); convert it in int8 mode "
            "(recipe: the qat stage's export: [int8]; tfcompress export --mode int8), or "
            "quantize those layers too")


def write_tflite(tflite_bytes, path):
    """Writes a flatbuffer atomically (temp file + rename): never a partial file."""
    if not isinstance(tflite_bytes, (bytes, bytearray)) or tflite_bytes[4:8] != b"TFL3":
        raise ExportError(f"refusing to write {path}: not a TFLite flatbuffer")
    from tfcompress.saving import write_bytes_atomic
    return write_bytes_atomic(path, tflite_bytes)


def export(model_or_path, modes, out_dir, representative_data=None, batch_size=1, sparse=False,
           name=None, log=print):
    """Converts a model in several modes and writes `out_dir/NAME_MODE.tflite`.

    Every mode is converted before anything is written, so a failing mode
    leaves no files from this call behind; each file is written atomically.

    Example:
        export("model.keras", ["float32", "int8_full"], "out/", representative_data=calib)

    Returns:
        {mode: path} of the files written.
    """
    modes = list(dict.fromkeys(modes))  # keep order, drop repeats
    if not modes:
        raise ExportError(f"no export mode given; choose from {', '.join(MODES)}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ExportError(f"unknown TFLite mode {unknown[0]!r}; choose one of {', '.join(MODES)}")
    # Before converting: otherwise a file in the way fails only after every mode converted.
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"output folder {out_dir} is a file; give a folder (CLI: --out DIR)")
    if isinstance(model_or_path, (str, os.PathLike)):
        from tfcompress.saving import load_model
        name = name or os.path.splitext(os.path.basename(os.path.normpath(model_or_path)))[0]
        model = load_model(model_or_path, compile=False)
    else:
        from tfcompress.keras import ensure_tf_keras_model
        model = ensure_tf_keras_model(model_or_path)
        name = name or model.name
    results = {}
    for mode in modes:
        log(f"converting {name} to {mode} ...")
        results[mode] = convert(model, mode, representative_data=representative_data,
                                batch_size=batch_size, sparse=sparse and MODES[mode].sparse)
    paths = {}
    for mode, data in results.items():
        paths[mode] = write_tflite(data, os.path.join(out_dir, f"{name}_{mode}.tflite"))
        log(f"wrote {paths[mode]} ({len(data):,} bytes)")
    return paths
