"""How closely a `.tflite` follows its Keras model, and which layers quantization hurts.

    compare_with_keras          the flatbuffer's outputs against the Keras model's
                                (top-1 agreement, max and mean |diff|)
    quantization_error_by_layer per-layer int8 error (QuantizationDebugger), worst first

The flatbuffer runs through `evaluate.TfliteRunner` (its input conventions hold
here too); the names are importable from `tflite_export.evaluate` as well.

Agreement with Keras on real data (small_cnn width=4, 1 epoch on 5k Fashion-MNIST
images, 500 test images; tests/tflite_export/test_evaluate.py asserts the bounds):
    mode        asserted                  measured here (softmax outputs)
    float32     max |diff| < 1e-5         4.2e-7, top-1 agreement 100%
    float16     max |diff| < 2e-2         5.0e-4, top-1 agreement 100%
    dynamic     top-1 agreement >= 98%    99.6%, max |diff| 4.5e-3
    int8        top-1 agreement >= 98%    99.0%, max |diff| 3.2e-2
    int8_full   top-1 agreement >= 98%    99.0% (same numbers as int8: same kernels)
Example:
    print(format_comparison(compare_with_keras("model_int8.tflite", model, ds.x_test[:500])))
    rows = quantization_error_by_layer(model, calibration_samples(ds.x_train, 200))
    print(format_layer_errors(rows))
"""

import csv
import io
import math
import os
import warnings

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tfcompress.checks import check_finite_weights
from tflite_export.evaluate import (EvaluationError, as_runner, binary_head,
                                    check_single_output, take_rows)


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
    runner = as_runner(tflite_model, num_threads)
    check_single_output(runner, "compare_with_keras")
    if isinstance(keras_model, (str, os.PathLike)):
        from tfcompress.saving import load_model
        keras_model = load_model(keras_model, compile=False)
    # NaN outputs would compare as "disagrees everywhere": name the real problem.
    check_finite_weights(keras_model, "the Keras model to compare with")
    x, _ = take_rows(x, np.zeros(len(x[0] if isinstance(x, (list, tuple)) else x)), max_samples)
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
    calibration = convert_lib.representative_dataset(representative_data, model, batch_size)
    debug_source = convert_lib.representative_dataset(
        representative_data if debug_data is None else debug_data, model, batch_size)

    def debug_dataset():
        for i, sample in enumerate(debug_source()):
            if i >= max_samples:
                return
            yield sample

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_lib.fixed_batch_function(model, batch_size)], model)
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
