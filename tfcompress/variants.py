"""A stage's TFLite variants: export in each mode, then measure every file.

For each mode, `build_variants` converts the stage's model, writes
`STAGE_DIR/tflite/NAME_MODE.tflite`, evaluates it through the interpreter on the
test split, inspects it (sizes, parameters, zeros, full-integer, Edge TPU
fitness) and benchmarks it on the recipe's device profiles, each model in its own
process. The rows go to `STAGE_DIR/variants.json`, which a rerun with the same
hash reuses.

Example:
    rows = build_variants(model, "runs/demo/03-prune", "03-prune", ["float32", "int8_full"],
                          "abc123", recipe, ds, calibration)
    rows[1]["top1"], rows[1]["gzip_bytes"], rows[1]["latency"]["host-1t"]["median_ms"]
"""

import os
import time

from tfcompress.saving import write_json_atomic


def _read_variants(path, variant_hash):
    import json
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved["variants"] if saved.get("hash") == variant_hash else None


def _measure(path, mode, ds, recipe):
    from tflite_export.evaluate import evaluate_tflite
    from tflite_export.edgetpu import edgetpu_report
    from tflite_export.inspect import inspect_tflite
    info = inspect_tflite(path)
    evaluation = evaluate_tflite(path, ds.x_test, ds.y_test, top_k=(1,), progress=False,
                                 max_samples=recipe.data.eval_samples)
    edgetpu = edgetpu_report(path)
    parameters = info["parameters"]
    return {
        "mode": mode, "file": path,
        "top1": evaluation["top1"], "eval_samples": evaluation["samples"],
        "file_bytes": info["file_bytes"], "gzip_bytes": info["gzip_bytes"],
        "parameters": parameters,
        "nonzero_parameters": int(round(parameters * (1 - info["zero_fraction"]))),
        "zero_fraction": info["zero_fraction"], "macs": info["macs"],
        "is_full_integer": info["is_full_integer"],
        "edgetpu": {"compatible": edgetpu["compatible"],
                    "ops_on_edgetpu": edgetpu["ops_on_edgetpu"],
                    "ops_on_cpu": edgetpu["ops_on_cpu"],
                    "first_unsupported_op": edgetpu["first_unsupported_op"]},
        "latency": {},
    }


# What a variant row keeps of a device's benchmark result, per profile kind.
_KEPT = {
    "host": ("median_ms", "p90_ms", "min_ms", "mean_ms", "p99_ms", "std_ms", "load_ms",
             "peak_rss_mb"),
    "npu": ("not_applicable", "cycles", "inference_ms", "clock_mhz", "sram_kib", "flash_kib",
            "dram_kib", "npu_ops", "cpu_ops", "cpu_op_types"),
    "arm-emulated": ("outputs_match_host", "max_abs_diff", "compare", "xnnpack_used",
                     "sparse_path_used", "emulated_invoke_ms"),
    "static": ("compatible", "ops_on_device", "ops_on_cpu"),
}


def _benchmark(rows, recipe, log):
    """Adds latency per device profile to each row (in place); errors become row entries."""
    bench = recipe.benchmark
    if not bench.devices or not rows:
        return
    from tflite_export import benchmark
    result = benchmark.benchmark_models(
        [row["file"] for row in rows], devices=tuple(bench.devices), runs=bench.runs,
        min_seconds=bench.min_seconds, warmup=bench.warmup, seed=recipe.seed,
        profiles=benchmark.load_profiles(bench.devices_file), log=log)
    by_file = {row["file"]: row for row in rows}
    for entry in result["results"]:
        row = by_file.get(entry["model"])
        if row is None:
            continue
        if entry.get("error"):
            row["latency"][entry["device"]] = {"kind": entry["kind"], "error": entry["error"]}
        else:
            row["latency"][entry["device"]] = {
                key: entry[key] for key in ("kind",) + _KEPT[entry["kind"]] if key in entry}


def _write_keras3(model, stage_dir, name, log):
    """`STAGE_DIR/NAME_keras3.keras` (recipe `export: {keras3: true}`); a QAT model has
    none (its TFMOT wrappers exist only in tf_keras), which the log says."""
    from tfcompress.keras3_export import save_keras3
    from tflite_export.convert import is_qat_model
    if is_qat_model(model):
        log(f"  {name}: no Keras 3 file: a QAT model's wrappers exist only in tf_keras")
        return
    path = save_keras3(model, os.path.join(stage_dir, f"{name}_keras3.keras"))
    log(f"  {name}: wrote {path} (Keras 3, checked against the tf_keras model)")


def _mixed(model, calibration, ds, recipe, log):
    """The int4_mixed file and its plan: budget from `recipe.ptq`, points measured on the
    last `ptq.validation_samples` training rows (the test split stays for the report)."""
    from tflite_export.mixed_precision import mixed_int4
    n = min(recipe.ptq.validation_samples, len(ds.x_train))
    if calibration is None:
        raise ValueError("int4_mixed rewrites a float model; a QAT model is not one")
    data, plan = mixed_int4(model, calibration, ds.x_train[-n:], ds.y_train[-n:],
                            max_drop=recipe.ptq.max_drop, max_bytes=recipe.ptq.max_bytes,
                            learned_rounding=recipe.ptq.learned_rounding, log=log)
    int4 = [row["layer"] for row in plan["layers"] if row["bits"] == 4]
    log(f"  int4_mixed: {len(int4)}/{len(plan['layers'])} layers int4, "
        f"{100 * plan['top1']:.2f}% on {n} held-out training rows against "
        f"{100 * plan['float_top1']:.2f}% float, {plan['bytes']:,} bytes; budget "
        f"{'met' if plan['met'] else 'NOT met'}")
    return data, plan


def build_variants(model, stage_dir, name, modes, variant_hash, recipe, ds, calibration,
                   force=False, log=print):
    """Exports `model` in `modes` and measures each file; returns the rows (see module doc).

    `model` may be a `pipeline.SavedStageModel`: it is loaded only when the rows
    saved with the same `variant_hash` cannot be reused.
    """
    from tflite_export.convert import MODES, convert, is_qat_model, write_tflite
    path = os.path.join(stage_dir, "variants.json")
    if not force:
        rows = _read_variants(path, variant_hash)
        if rows is not None:
            return rows
    if hasattr(model, "load") and not hasattr(model, "layers"):
        model = model.load()  # a pipeline.SavedStageModel
    tflite_dir = os.path.join(stage_dir, "tflite")
    # A QAT model carries its own ranges: calibrating it again would override them.
    calib = None if is_qat_model(model) else calibration
    rows = []
    for mode in modes:
        log(f"  {name}: converting to {mode}, evaluating through the interpreter")
        if MODES[mode].budget and model.outputs[0].shape[-1] == 1:
            log(f"  {name}: no {mode} variant: its budget is top-1 points of a multi-class "
                "head, and this model has one output unit (int4_adaround is its int4 file)")
            continue
        start = time.time()
        plan = None
        if MODES[mode].budget:  # chosen under the recipe's ptq budget, on labelled rows
            data, plan = _mixed(model, calib, ds, recipe, log)
        else:
            data = convert(model, mode, representative_data=calib,
                           batch_size=recipe.export.batch_size)
        file = write_tflite(data, os.path.join(tflite_dir, f"{name}_{mode}.tflite"))
        converted = time.time()
        rows.append(_measure(file, mode, ds, recipe))
        if plan is not None:
            rows[-1]["plan"] = {k: v for k, v in plan.items() if k != "seconds"}
        # Seconds are logged, not stored: a rerun's rows must equal the first run's.
        log(f"  {name}: {mode} took {converted - start:.1f} s to convert, "
            f"{time.time() - converted:.1f} s to evaluate and inspect")
    if recipe.export.keras3:
        _write_keras3(model, stage_dir, name, log)
    if recipe.benchmark.devices:
        log(f"  {name}: benchmarking {len(rows)} file(s) on {', '.join(recipe.benchmark.devices)}")
    _benchmark(rows, recipe, log)
    write_json_atomic(path, {"hash": variant_hash, "variants": rows})
    return rows
