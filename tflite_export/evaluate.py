"""Accuracy of a `.tflite` through the LiteRT interpreter, and where quantization hurts.

`TfliteRunner` runs a flatbuffer the way the Keras model would be called: it
takes FLOAT inputs, quantizes them for int8/uint8/int16 inputs, runs sample by
sample (or batch by batch when the model's batch axis is larger than 1) and
returns DEQUANTIZED float outputs. On top of it:

    evaluate_tflite             top-1/top-5 accuracy of a classifier
    compare_with_keras          how closely the flatbuffer follows its Keras model
    quantization_error_by_layer per-layer int8 error (QuantizationDebugger), worst first

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

Agreement with Keras on real data (small_cnn width=4, 1 epoch on 5k Fashion-MNIST
images, 500 test images; tests/tflite_export/test_evaluate.py asserts the bounds):
    mode        asserted                  measured here (softmax outputs)
    float32     max |diff| < 1e-5         4.2e-7, top-1 agreement 100%
    float16     max |diff| < 2e-2         5.0e-4, top-1 agreement 100%
    dynamic     top-1 agreement >= 98%    99.6%, max |diff| 4.5e-3
    int8        top-1 agreement >= 98%    99.0%, max |diff| 3.2e-2
    int8_full   top-1 agreement >= 98%    99.0% (same numbers as int8: same kernels)
The MLPerf Tiny reference DS-CNN files give their README's 90.2% (int8, fed the
stored int8 clips) and 90.0% (float32) exactly.

Example:
    runner = TfliteRunner("model_int8.tflite")
    probs = runner.predict(ds.x_test)                 # float in, float out
    result = evaluate_tflite("model_int8.tflite", ds.x_test, ds.y_test)
    print(format_evaluation(result))
    print(format_comparison(compare_with_keras("model_int8.tflite", model, ds.x_test[:500])))
    rows = quantization_error_by_layer(model, calibration_samples(ds.x_train, 200))
    print(format_layer_errors(rows))
"""

import csv
import io
import math
import os
import re
import sys
import time
import warnings

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfcompress.checks import check_finite_weights
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


def _runner(model, num_threads=1):
    return model if isinstance(model, TfliteRunner) else TfliteRunner(model, num_threads)


def _single_output(runner, what):
    if len(runner.output_details) != 1:
        raise EvaluationError(f"{what} needs a single-output model; {runner.file} has "
                              f"{len(runner.output_details)} outputs")


def _take(x, y, max_samples):
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
    runner = _runner(model, num_threads)
    _single_output(runner, "evaluate_tflite")
    x, y = _take(x, y, max_samples)
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


def compare_with_keras(tflite_model, keras_model, x, max_samples=None, progress=False,
                       num_threads=1):
    """How closely a flatbuffer's dequantized outputs follow its Keras model.

    Args:
        tflite_model: a `.tflite` path, bytes, or a `TfliteRunner`.
        keras_model: the tf_keras model (or a path `tfcompress.load_model` reads).
        x: float data (N, ...) or a list of arrays, as the Keras model takes it.
        max_samples: compare on the rows `subsample(x, y, max_samples, seed=0)` picks.
        progress: a stderr line every 10% for N >= 1000.
        num_threads: interpreter threads when `tflite_model` is not a runner.

    Returns:
        {"samples", "top1_agreement" (fraction of rows with the same argmax, or the
        same side of a binary head's threshold),
        "max_abs_diff", "mean_abs_diff"} over all output values.

    Raises:
        EvaluationError: data that does not fit, or outputs of different shapes.

    Example:
        compare_with_keras(convert(model, "int8", calib), model, x_test[:500])
    """
    runner = _runner(tflite_model, num_threads)
    _single_output(runner, "compare_with_keras")
    if isinstance(keras_model, (str, os.PathLike)):
        from tfcompress.saving import load_model
        keras_model = load_model(keras_model, compile=False)
    # NaN outputs would compare as "disagrees everywhere": name the real problem.
    check_finite_weights(keras_model, "the Keras model to compare with")
    x, _ = _take(x, np.zeros(len(x[0] if isinstance(x, (list, tuple)) else x)), max_samples)
    fitted = [a.astype(np.float32) for a in runner.fit_shapes(x)]
    got = runner.predict(fitted, progress=progress)
    want = keras_model.predict(fitted if len(fitted) > 1 else fitted[0],
                               batch_size=256, verbose=0)
    if isinstance(want, (list, tuple)) or np.shape(want) != got.shape:
        raise EvaluationError(f"{runner.file} outputs {got.shape} but the Keras model "
                              f"{keras_model.name} outputs {np.shape(want)}")
    want = np.asarray(want, np.float32)
    diff = np.abs(got - want)
    flat_got, flat_want = got.reshape(len(got), -1), want.reshape(len(want), -1)
    if flat_got.shape[1] == 1:  # binary: the same side of the threshold
        head = binary_head(runner.data)
        agreement = np.mean(head.classes(flat_got) == head.classes(flat_want))
    else:
        agreement = np.mean(np.argmax(flat_got, 1) == np.argmax(flat_want, 1))
    return {
        "samples": len(got),
        "top1_agreement": float(agreement),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }


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


def format_comparison(result):
    """One readable line for a `compare_with_keras` result."""
    return (f"agrees with Keras on {100 * result['top1_agreement']:.2f}% of "
            f"{result['samples']} samples (top-1); max |diff| "
            f"{result['max_abs_diff']:.3g}, mean |diff| {result['mean_abs_diff']:.3g}")


# ---------------------------------------------------------------------------
# Per-layer quantization error

SORT_KEYS = ("relative_error", "rmse_over_scale", "mean_abs_error", "max_abs_error")


def _relative_error(float_values, quantized, scale, zero_point):
    """RMS quantization error over RMS float signal, per output channel, averaged.

    rmse/scale, the metric the TFLite debugger guide ranks by, is blind to a
    range outlier: one huge channel widens the layer's step, every other
    channel rounds to ~0, yet the error stays below one (huge) step, so
    rmse/scale even drops. Measured per channel against that channel's own
    signal, those collapsed channels read ~1 (all signal lost) while a healthy
    int8 layer reads ~0.01. Vectors ((1, C) tensors: dense, softmax) have one
    value per channel, where a ratio is noise, so they are measured as a whole.
    """
    f = np.asarray(float_values, np.float64)
    d = (quantized.astype(np.float64) - zero_point) * scale
    if f.ndim <= 2:
        signal = np.sqrt(np.mean(f ** 2))
        return float(np.sqrt(np.mean((d - f) ** 2)) / signal) if signal > 0 else np.nan
    f, d = f.reshape(-1, f.shape[-1]), d.reshape(-1, d.shape[-1])
    signal = np.sqrt(np.mean(f ** 2, axis=0))
    live = signal > 0  # a channel ReLU zeroed for this sample says nothing
    if not live.any():
        return np.nan
    return float(np.mean(np.sqrt(np.mean((d - f) ** 2, axis=0))[live] / signal[live]))


def _mean_abs_error(diffs):
    return float(np.mean(np.abs(diffs)))


def _layer_names(tensor_name, known):
    # Fused tensors are named "model/relu1/Relu;model/bn1/FusedBatchNormV3;model/conv1/Conv2D":
    # the Keras layers are the path parts that are layer names, listed last op first.
    found = []
    for part in reversed(tensor_name.split(";")):
        for piece in part.split("/"):
            if piece in known and piece not in found:
                found.append(piece)
                break
    return found


def quantization_error_by_layer(model, representative_data, debug_data=None, max_samples=100,
                                sort_by="relative_error", batch_size=1):
    """Per-layer error of the int8 model, worst first: which layers to keep in float.

    Converts `model` the way `convert(model, "int8", ...)` does and runs
    `tf.lite.experimental.QuantizationDebugger`, which places a NumericVerify
    op after every quantized op. Its float twin takes the dequantized output
    of the previous quantized op, so each row measures that op's own error,
    not error accumulated from earlier layers.

    Row keys:
        tensor_name     the quantized op's output tensor in the flatbuffer
        layer           the Keras layer(s) fused into it ("conv1+bn1+relu1"),
                        else the tensor name
        op              the TFLite op (CONV_2D, FULLY_CONNECTED, ...)
        relative_error  RMS error / RMS float signal per channel (see
                        `_relative_error`): ~0.01 is healthy int8, ~1 means a
                        channel's information is lost. The default sort key.
        rmse_over_scale RMS error in quantization steps (the debugger guide's
                        metric); ~0.29 (1/sqrt(12)) is ideal rounding, well above
                        it flags a layer; a low value does not clear a layer whose
                        range is blown up by an outlier.
        mean_abs_error, max_abs_error, mean_error   in the tensor's float units
        scale, zero_point, range (255 * scale: the float span int8 covers)
        samples         debug samples averaged over

    Args:
        model: a tf_keras model or a path `tfcompress.load_model` reads. A
            `.tflite` cannot be debugged: the debugger re-converts the graph.
        representative_data: calibration samples, as for `convert`.
        debug_data: samples to measure the error on (default: the
            calibration samples); at most `max_samples` are used.
        max_samples: how many debug samples to run.
        sort_by: one of SORT_KEYS, largest first.
        batch_size: the fixed batch size to convert with.

    Returns:
        A list of dicts (one per quantized op), sorted worst first.

    Raises:
        EvaluationError: a `.tflite` model, or a bad sort key.
        ExportError: the conversion fails.

    Example:
        rows = quantization_error_by_layer(model, calibration_samples(x_train, 200))
        print(format_layer_errors(rows, top=5))
    """
    from tfcompress.keras import ensure_tf_keras_model, tf
    from tfcompress.saving import load_model
    from tflite_export import convert as convert_lib

    if sort_by not in SORT_KEYS:
        raise EvaluationError(f"sort_by must be one of {', '.join(SORT_KEYS)}, got {sort_by!r}")
    if isinstance(model, (str, os.PathLike)):
        if os.fspath(model).endswith(".tflite"):
            raise EvaluationError(f"{os.fspath(model)}: per-layer quantization error needs the "
                                  "Keras model (the debugger re-converts it), not a .tflite")
        model = load_model(model, compile=False)
    model = ensure_tf_keras_model(model)
    if max_samples < 1:
        raise EvaluationError(f"max_samples must be >= 1, got {max_samples}")
    calibration = convert_lib._representative_dataset(representative_data, model, batch_size)
    debug_source = convert_lib._representative_dataset(
        representative_data if debug_data is None else debug_data, model, batch_size)

    def debug_dataset():
        for i, sample in enumerate(debug_source()):
            if i >= max_samples:
                return
            yield sample

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_lib._fixed_batch_function(model, batch_size)], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics={"mean_abs_error": _mean_abs_error},
        layer_direct_compare_metrics={"relative_error": _relative_error})
    with warnings.catch_warnings():
        # The debugger runs tf.lite.Interpreter internally; its deprecation warning is noise.
        warnings.filterwarnings("ignore", message=r"[\s\S]*tf\.lite\.Interpreter is deprecated")
        warnings.filterwarnings("ignore", message=r"[\s\S]*experimental_preserve_all_tensors")
        try:
            calibrated = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=debug_dataset)
            debug_model = calibrated.get_debug_quantized_model()
        except convert_lib.ExportError:
            raise
        except Exception as e:  # ConverterError and friends: keep the converter's reason
            raise convert_lib.ExportError(f"int8 debug conversion of {model.name} failed: "
                                          f"{' '.join(str(e).split())[:600]}") from e
        # Built from the model bytes (not the converter) so that the interpreter
        # keeps every tensor: the direct-compare metric reads the float twins,
        # which a converter-built debugger may have overwritten in the arena.
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=debug_dataset,
            debug_options=options)
        debugger.run()
    samples = sum(1 for _ in debug_dataset())
    return _rows(debugger, debug_model, model, samples, sort_by)


def _rows(debugger, debug_model, model, samples, sort_by):
    # layer_statistics_dump is the debugger's public view: op name, tensor index,
    # metrics, scale and zero point per NumericVerify. Names come from our own
    # interpreter on the same bytes (the dump mangles them).
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    interpreter = Interpreter(model_content=debug_model)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    known = {layer.name for layer in model.layers}
    # The model's last op writes the signature output ("StatefulPartitionedCall:0"),
    # which names no layer: it is the output layer's activation (e.g. its softmax).
    output_layer = model.output_names[0] if len(model.outputs) == 1 else None
    rows = []
    for record in csv.DictReader(dump):
        tensor_name = names.get(int(record["tensor_idx"]), record["tensor_name"])
        scale = float(record["scale"])
        layers = _layer_names(tensor_name, known)
        if not layers and output_layer and tensor_name.startswith("StatefulPartitionedCall"):
            layers = [output_layer]
        rows.append({
            "tensor_name": tensor_name,
            "layer": "+".join(layers) if layers else tensor_name,
            "op": record["op_name"],
            "relative_error": float(record["relative_error"]),
            "rmse_over_scale": math.sqrt(float(record["mean_squared_error"])) / scale
            if scale else float("nan"),
            "mean_abs_error": float(record["mean_abs_error"]),
            "max_abs_error": float(record["max_abs_error"]),
            "mean_error": float(record["mean_error"]),
            "scale": scale,
            "zero_point": int(float(record["zero_point"])),
            "range": 255.0 * scale,
            "samples": samples,
        })
    # NaN (e.g. a tensor that was all zeros on every sample) sorts last.
    rows.sort(key=lambda r: -r[sort_by] if math.isfinite(r[sort_by]) else math.inf)
    return rows


def format_layer_errors(rows, top=10):
    """A small table of the `top` worst rows of `quantization_error_by_layer`.

    Example:
        layer                        op               rel.err  rmse/scale  mean|err|
        conv2+bn2+relu2              CONV_2D           0.8751      0.145   1.52e-01
    """
    if not rows:
        return "no quantized layers"
    width = max(5, min(40, max(len(r["layer"]) for r in rows[:top])))
    lines = [f"{'layer':<{width}}  {'op':<16} {'rel.err':>8} {'rmse/scale':>11} "
             f"{'mean|err|':>10} {'range':>9}"]
    for r in rows[:top]:
        layer = r["layer"] if len(r["layer"]) <= width else r["layer"][:width - 3] + "..."
        lines.append(f"{layer:<{width}}  {r['op']:<16} {r['relative_error']:>8.4f} "
                     f"{r['rmse_over_scale']:>11.3f} {r['mean_abs_error']:>10.2e} "
                     f"{r['range']:>9.3g}")
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more")
    return "\n".join(lines)
