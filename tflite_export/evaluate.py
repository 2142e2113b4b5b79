"""Accuracy of a `.tflite` through the LiteRT interpreter, and where quantization hurts.

`TfliteRunner` runs a flatbuffer the way the Keras model would be called: it
takes FLOAT inputs, quantizes them for int8/uint8/int16 inputs, runs sample by
sample (or batch by batch when the model's batch axis is larger than 1) and
returns DEQUANTIZED float outputs. On top of it:

    evaluate_tflite             top-1/top-5 accuracy of a classifier
    compare_with_keras,         how closely the flatbuffer follows its Keras model, and
    quantization_error_by_layer which layers int8 hurts: in `tflite_export.compare`
                                (importable from here too)

Input conventions (decided here, used by every function):
    * Data is (N, ...) with N samples; the model's own batch axis (1 for
      `tflite_export.convert`) is filled by slicing, and a final partial batch is
      padded by repeating its last sample (the padded outputs are dropped).
    * Data missing only a trailing channel axis of 1, e.g. (N, 28, 28) for a
      (1, 28, 28, 1) model, is accepted and reshaped: that is how MNIST-style
      arrays usually come. Any other shape difference is an `EvaluationError`.
    * Float data is quantized as the TFLite QUANTIZE kernel does it:
      `q = round(x / scale) + zero_point` with round half away from zero
      (std::round), computed in float32 and clipped to the integer range. So an
      int8_full model fed float data sees exactly what an int8 model with a
      float input (which quantizes inside the graph) would see.
    * `input_is_quantized=True` feeds integer data as it is (e.g. the MLPerf
      KWS clips stored as int8 for an int8-input model).
    * Multi-input models take a list of arrays in the interpreter's input order,
      which for `convert` output is the Keras model's input order. Outputs come
      back in the Keras order: the interpreter may list them in another order
      (seen here: a 2-output model listed output_1 first), so they are sorted
      by the signature's `output_N` names when the flatbuffer has them.

The MLPerf Tiny reference DS-CNN files give their README's 90.2% (int8, fed the
stored int8 clips) and 90.0% (float32) exactly.

Example:
    runner = TfliteRunner("model_int8.tflite")
    probs = runner.predict(ds.x_test)                 # float in, float out
    result = evaluate_tflite("model_int8.tflite", ds.x_test, ds.y_test)
    print(format_evaluation(result))
"""

import os
import re
import sys
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfcompress.data import subsample
from tfcompress.errors import TfcompressError
from tflite_export.tflite_file import probe_tflite, read_tflite

# Above this many samples `progress=True` prints a line every 10%.
PROGRESS_MIN_SAMPLES = 1000


class EvaluationError(TfcompressError, ValueError):
    """Data that does not fit the model (shape, dtype, NaN), or a model that cannot run."""


# ---------------------------------------------------------------------------
# Running a flatbuffer


class TfliteRunner:
    """Runs a `.tflite` on float data as the Keras model would be called.

    Args:
        model: a path to a `.tflite` file, or its bytes.
        num_threads: interpreter threads (LiteRT's default is 1).
        use_xnnpack: False runs with the builtin kernels only; needed for
            sparse quantized models, which fail to prepare under XNNPACK.
        name: how messages and results name the model (default: the path,
            or "<bytes>").

    Attributes:
        file: the model's name in messages.
        batch_size: the model's batch dimension (1 for `convert` output).
        input_details, output_details: the interpreter's tensor details, the
            outputs in Keras order (see the module docstring).

    Raises:
        TfliteFileError: missing file or not a valid flatbuffer.
        EvaluationError: the interpreter cannot load or prepare the model, or
            crashes or stalls on it in the probe process (`tflite_file.probe_tflite`).

    Example:
        runner = TfliteRunner("model_int8_full.tflite")
        probs = runner.predict(x_test)          # (N, 10) float, dequantized
    """

    def __init__(self, model, num_threads=1, use_xnnpack=True, name=None):
        data = read_tflite(model)  # the one validation gate before the interpreter
        if name is None:
            name = "<bytes>" if isinstance(model, (bytes, bytearray)) else os.fspath(model)
        self.file = name
        self.data = data
        hint = ("; a sparse quantized model runs only with use_xnnpack=False"
                if use_xnnpack else "")
        # A file that passes the check may still crash LiteRT, which would take this
        # process down: it is loaded and run once in a probe process first.
        problem = probe_tflite(data, num_threads, use_xnnpack)
        if problem:
            raise EvaluationError(f"{name}: the interpreter cannot prepare this model: "
                                  f"{problem}{hint}")
        resolver = (OpResolverType.AUTO if use_xnnpack
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            self.interpreter = Interpreter(model_content=data, num_threads=num_threads,
                                           experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
            self.input_details = self.interpreter.get_input_details()
            self.output_details = _outputs_in_keras_order(self.interpreter)
        except (RuntimeError, ValueError) as e:
            raise EvaluationError(f"{name}: the interpreter cannot prepare this model: "
                                  f"{' '.join(str(e).split())[:400]}{hint}") from e
        if not self.input_details or not self.output_details:
            raise EvaluationError(f"{name}: the model has no inputs or no outputs")
        self.batch_size = int(self.input_details[0]["shape"][0]) if len(
            self.input_details[0]["shape"]) else 1
        if self.batch_size < 1:  # seen in a corrupt file: a batch axis of 0
            raise EvaluationError(f"{name}: input {self.input_details[0]['name']} has a batch "
                                  f"axis of {self.batch_size}; it cannot take any sample")
        for detail in self.output_details:
            shape = detail["shape"]
            if len(shape) == 0 or int(shape[0]) != self.batch_size:
                raise EvaluationError(f"{name}: output {detail['name']} has shape "
                                      f"{tuple(int(d) for d in shape)}, without the batch axis "
                                      f"of {self.batch_size}; cannot split it per sample")

    @property
    def input_dtypes(self):
        """Names of the input dtypes, e.g. ["int8"]."""
        return [np.dtype(d["dtype"]).name for d in self.input_details]

    @property
    def output_dtypes(self):
        """Names of the output dtypes, e.g. ["float32"]."""
        return [np.dtype(d["dtype"]).name for d in self.output_details]

    def fit_shapes(self, x):
        """Returns `x` as a list of arrays (one per input) shaped (N,) + model shape.

        Only adds a missing trailing channel axis of 1; never casts.

        Raises:
            EvaluationError: wrong number of inputs, unequal sample counts,
                no samples, or a shape that does not fit the model.
        """
        arrays = list(x) if isinstance(x, (list, tuple)) else [x]
        if len(arrays) != len(self.input_details):
            raise EvaluationError(f"{self.file} has {len(self.input_details)} input(s) but "
                                  f"{len(arrays)} array(s) were given")
        fitted = []
        for arr, detail in zip(arrays, self.input_details):
            arr = np.asarray(arr)
            want = tuple(int(d) for d in detail["shape"][1:])
            if arr.ndim >= 1 and arr.shape[1:] + (1,) == want:
                arr = arr[..., None]  # (N, H, W) data for an (H, W, 1) model
            if arr.ndim < 1 or arr.shape[1:] != want:
                raise EvaluationError(
                    f"data of shape {arr.shape} does not fit {self.file}: its input "
                    f"{detail['name']} is {tuple(int(d) for d in detail['shape'])} "
                    f"(batch first), so the data must be (N,) + {want}")
            fitted.append(arr)
        counts = {len(a) for a in fitted}
        if len(counts) != 1:
            raise EvaluationError(f"the input arrays for {self.file} have different sample "
                                  f"counts: {sorted(counts)}")
        if counts == {0}:
            raise EvaluationError(f"no samples to run through {self.file}")
        return fitted

    def prepare(self, x, input_is_quantized=False):
        """Returns the arrays exactly as they will be written into the input tensors.

        Float data is quantized for integer inputs (see the module docstring);
        with `input_is_quantized=True` integer data is checked and cast only.

        Raises:
            EvaluationError: shape mismatch, NaN/Inf, or a dtype that does not fit.
        """
        return [self._prepare_one(arr, detail, input_is_quantized)
                for arr, detail in zip(self.fit_shapes(x), self.input_details)]

    def _prepare_one(self, arr, detail, input_is_quantized):
        dtype = np.dtype(detail["dtype"])
        scale, zero_point = detail["quantization"]
        if input_is_quantized:
            if dtype.kind not in "iu":
                raise EvaluationError(f"input_is_quantized=True but {self.file} takes "
                                      f"{dtype.name} input; pass float data instead")
            if arr.dtype.kind not in "iu":
                raise EvaluationError(f"input_is_quantized=True needs integer data, got "
                                      f"{arr.dtype.name}, for the {dtype.name} input of "
                                      f"{self.file}")
            info = np.iinfo(dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise EvaluationError(f"quantized data spans [{arr.min()}, {arr.max()}], "
                                      f"outside the {dtype.name} input range of {self.file}")
            return arr.astype(dtype)
        if arr.dtype.kind not in "fiub":
            raise EvaluationError(f"cannot feed {arr.dtype} data to {self.file}")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise EvaluationError(f"the data for {self.file} contains {bad} NaN/Inf value(s)")
        if dtype.kind == "f":
            return arr.astype(dtype)
        if dtype.kind in "iu" and scale:
            return quantize(arr, scale, zero_point, dtype)
        if dtype.kind in "iu":  # an unquantized integer input (ids, indices)
            if not np.all(arr == np.round(arr)):
                raise EvaluationError(f"{self.file} takes unquantized {dtype.name} input; "
                                      "the data has non-integer values")
            return arr.astype(dtype)
        raise EvaluationError(f"{self.file}: input dtype {dtype.name} is not supported")

    def predict(self, x, progress=False, input_is_quantized=False):
        """Runs the model on N samples; returns dequantized float32 outputs.

        Args:
            x: an array (N, ...) of float data (or a list of arrays, one per input).
            progress: print a line every 10% to stderr when N >= 1000.
            input_is_quantized: feed integer data as it is (no quantization).

        Returns:
            An array (N, ...) of float32; a list of arrays for multi-output
            models, in the Keras model's output order.

        Raises:
            EvaluationError: data that does not fit the model (see `prepare`).

        Example:
            probs = TfliteRunner(int8_bytes).predict(x_test[:100])
        """
        inputs = self.prepare(x, input_is_quantized)
        n, b = len(inputs[0]), self.batch_size
        outputs = [np.empty((n,) + tuple(int(s) for s in d["shape"][1:]), np.float32)
                   for d in self.output_details]
        reporter = _Progress(self.file, n) if progress and n >= PROGRESS_MIN_SAMPLES else None
        for start in range(0, n, b):
            stop = min(start + b, n)
            for arr, detail in zip(inputs, self.input_details):
                chunk = arr[start:stop]
                if len(chunk) < b:  # a fixed batch axis: pad with copies of the last sample
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), 0)])
                self.interpreter.set_tensor(detail["index"], chunk)
            self.interpreter.invoke()
            for out, detail in zip(outputs, self.output_details):
                out[start:stop] = dequantize(self.interpreter.get_tensor(detail["index"]),
                                             detail)[:stop - start]
            if reporter:
                reporter.update(stop)
        return outputs[0] if len(outputs) == 1 else outputs


def quantize(x, scale, zero_point, dtype):
    """Float -> integer as the TFLite QUANTIZE kernel does it.

    `round(x / scale) + zero_point`, rounding half away from zero like
    std::round (np.round rounds half to even, which differs on exact halves),
    in float32 like the kernel, clipped to the dtype's range.

    Example:
        quantize(np.array([0.5]), 0.25, -3, np.int8)   # array([-1], dtype=int8)
    """
    dtype = np.dtype(dtype)
    scaled = np.asarray(x, np.float32) / np.float32(scale)
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
    info = np.iinfo(dtype)
    return np.clip(rounded.astype(np.int64) + int(zero_point), info.min, info.max).astype(dtype)


def dequantize(q, detail):
    """Integer tensor -> float32 `(q - zero_point) * scale`; float tensors are cast."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return q.astype(np.float32)


def _outputs_in_keras_order(interpreter):
    # get_output_details() follows the tensor table, not the Keras output order:
    # a 2-output model from `convert` listed StatefulPartitionedCall:1 first.
    # Its signature names the outputs output_0, output_1, ... in Keras order.
    details = interpreter.get_output_details()
    signatures = interpreter.get_signature_list()
    if len(details) < 2 or len(signatures) != 1:
        return details
    by_name = interpreter.get_signature_runner(next(iter(signatures))).get_output_details()
    numbers = {name: re.fullmatch(r"output_(\d+)", name) for name in by_name}
    if len(by_name) != len(details) or not all(numbers.values()):
        return details  # named outputs (from_keras_model): keep the interpreter's order
    by_index = {d["index"]: d for d in details}
    if any(by_name[name]["index"] not in by_index for name in by_name):
        return details  # a signature that does not match the outputs: not ours to fix
    order = sorted(by_name, key=lambda name: int(numbers[name].group(1)))
    return [by_index[by_name[name]["index"]] for name in order]


class _Progress:
    """One stderr line at each 10% step: count, percent, elapsed seconds."""

    def __init__(self, label, total):
        self.label, self.total = label, total
        self.start = time.perf_counter()
        self.next_step = 1

    def update(self, done):
        if done * 10 < self.next_step * self.total:
            return
        self.next_step = done * 10 // self.total + 1
        print(f"{os.path.basename(self.label)}: {done}/{self.total} samples "
              f"({100 * done // self.total}%), {time.perf_counter() - self.start:.1f} s",
              file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Accuracy and agreement


def as_runner(model, num_threads=1):
    """`model` itself when it is a `TfliteRunner`, else a runner for that path or bytes."""
    return model if isinstance(model, TfliteRunner) else TfliteRunner(model, num_threads)


def check_single_output(runner, what):
    """Raises EvaluationError naming `what` when the model has more than one output."""
    if len(runner.output_details) != 1:
        raise EvaluationError(f"{what} needs a single-output model; {runner.file} has "
                              f"{len(runner.output_details)} outputs")


def take_rows(x, y, max_samples):
    """The same rows as `tfcompress.data.subsample(x, y, max_samples, seed=0)`."""
    n = len(x[0] if isinstance(x, (list, tuple)) else x)
    if max_samples is None or max_samples >= n:
        return x, y
    idx, y = subsample(np.arange(n), y, max_samples, seed=0)
    if isinstance(x, (list, tuple)):
        return [np.asarray(a)[idx] for a in x], y
    return np.asarray(x)[idx], y


def _class_ids(y, n, classes, file):
    y = np.asarray(y)
    if y.dtype.kind not in "iufb":  # strings, objects: np.round would fail obscurely
        raise EvaluationError(f"labels must be integer class ids 0..{classes - 1}, got "
                              f"{y.dtype} values")
    if y.ndim == 2 and y.shape[1] == classes and classes > 1:
        y = np.argmax(y, axis=1)  # one-hot labels
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or len(y) != n:
        raise EvaluationError(f"labels of shape {y.shape} do not match {n} samples "
                              f"of {file} (give class ids (N,) or one-hot (N, {classes}))")
    if y.dtype.kind not in "iu" and not np.all(y == np.round(y)):
        raise EvaluationError("labels must be integer class ids")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= classes:
        raise EvaluationError(f"labels span [{y.min()}, {y.max()}] but {file} has "
                              f"{classes} classes")
    return y


def binary_head(model):
    """The `tfcompress.heads.Head` of a one-output-unit `.tflite` (path or bytes): a
    sigmoid (LOGISTIC op, class 1 when p > 0.5) or a logit (class 1 when z > 0)."""
    from tfcompress.heads import Head
    from tflite_export.inspect import output_activation
    return Head("sigmoid" if output_activation(model) == "LOGISTIC" else "binary_logits", 1)


def top_k_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the k highest scores.

    Ties keep the lower class id first (a stable sort), so k=1 is exactly
    `argmax == label`, as Keras' accuracy counts it. Quantized outputs tie often
    (a uint8 softmax has 256 levels), so this choice matters.
    """
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(order == labels[:, None], axis=1)))


def evaluate_tflite(model, x, y, top_k=(1, 5), progress=True, max_samples=None,
                    input_is_quantized=False, num_threads=1):
    """Classification accuracy of a `.tflite` through the interpreter.

    Args:
        model: a `.tflite` path, its bytes, or a `TfliteRunner`.
        x: float data (N, ...) (or a list of arrays), or integer data with
            `input_is_quantized=True`.
        y: class ids (N,) or one-hot labels (N, classes).
        top_k: the k's to report; a k above the number of classes gives None.
            A one-unit output is a binary classifier (`binary_head`): top1 is
            thresholded, other k's are None.
        progress: a stderr line every 10% for N >= 1000.
        max_samples: evaluate only this many rows, the same rows that
            `tfcompress.data.subsample(x, y, max_samples, seed=0)` picks.
        input_is_quantized: feed integer data as it is.
        num_threads: interpreter threads when `model` is not a runner.

    Returns:
        {"samples", "top1", "top5", "file", "input_dtype", "output_dtype",
        "seconds"} (one "topK" key per k; accuracies as fractions; "seconds" is
        the inference wall time; "binary_threshold" for a one-unit output).

    Raises:
        EvaluationError: data or labels that do not fit the model.

    Example:
        evaluate_tflite("kws_int8.tflite", x_int8, y, input_is_quantized=True)
        # {'samples': 1000, 'top1': 0.902, 'top5': 0.99, ...}
    """
    if not top_k or any(int(k) != k or k < 1 for k in top_k):
        raise EvaluationError(f"top_k must be positive integers, got {top_k!r}")
    runner = as_runner(model, num_threads)
    check_single_output(runner, "evaluate_tflite")
    x, y = take_rows(x, y, max_samples)
    start = time.perf_counter()
    scores = runner.predict(x, progress=progress, input_is_quantized=input_is_quantized)
    seconds = time.perf_counter() - start
    if scores.ndim != 2:
        raise EvaluationError(f"{runner.file} outputs shape {scores.shape[1:]} per sample; "
                              "accuracy needs one score per class")
    result = {"samples": len(scores)}
    if scores.shape[1] == 1:  # a binary classifier: class 1 above the threshold
        head = binary_head(runner.data)
        labels = _class_ids(y, len(scores), 2, runner.file)
        for k in top_k:
            result[f"top{k}"] = head.accuracy(scores, labels) if k == 1 else None
        result["binary_threshold"] = head.threshold
    else:
        classes = scores.shape[1]
        labels = _class_ids(y, len(scores), classes, runner.file)
        for k in top_k:
            result[f"top{k}"] = top_k_accuracy(scores, labels, k) if k <= classes else None
    result.update(file=runner.file, input_dtype=",".join(runner.input_dtypes),
                  output_dtype=",".join(runner.output_dtypes), seconds=seconds)
    return result


def format_evaluation(result):
    """One readable line for an `evaluate_tflite` result.

    Example:
        kws.tflite: top-1 90.20%, top-5 99.10% on 1000 samples (int8 in, int8 out), 1.1 s
    """
    accuracies = [f"top-{key[3:]} {100 * value:.2f}%" for key, value in result.items()
                  if re.fullmatch(r"top\d+", key) and value is not None]
    return (f"{os.path.basename(result['file'])}: {', '.join(accuracies)} on "
            f"{result['samples']} samples ({result['input_dtype']} in, "
            f"{result['output_dtype']} out), {result['seconds']:.1f} s")


# The Keras comparison and the per-layer error live in tflite_export.compare, which
# imports this module; they stay importable from here, loaded on first use.
_IN_COMPARE = ("compare_with_keras", "format_comparison", "quantization_error_by_layer",
               "format_layer_errors", "SORT_KEYS")


def __getattr__(name):
    if name in _IN_COMPARE:
        from tflite_export import compare
        return getattr(compare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
