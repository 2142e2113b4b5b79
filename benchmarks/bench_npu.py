r"""Benchmark: what int8, channel pruning and sparsity buy on an Ethos-U NPU (Vela's estimate).

For each zoo model (weights initialised with a fixed seed, not trained: cycles depend on
shapes, and on weight values only through Vela's weight compression, which the sparse row
measures), these files are exported and costed on the Ethos-U profiles and timed on
host-1t:

    float32           the baseline (the NPU cannot run it: "not for this NPU")
    int8_full         full-integer int8
    int16x8           int16 activations, int8 weights
    channels-50%      50% of the channels removed (L1, tfcompress.channel_pruning), int8_full
    sparse-80%        80% of each Conv2D/Dense kernel's smallest weights set to zero
                      (magnitude, no training), int8_full: same shapes, more zeros

Writes OUT/bench_npu.json and OUT/bench_npu.md (cycles, ms at the NPU's clock, SRAM,
flash, ops left to the CPU, host-1t median ms).

Example:
    python -m benchmarks.bench_npu --out=runs/bench-npu
"""

import json
import os

import numpy as np
from absl import app, flags

from benchmarks import absl_main, markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/bench-npu", "Output folder.")
flags.DEFINE_list("models", ["small_cnn", "ds_cnn", "resnet8", "mobilenet_v2"],
                  "Zoo models to measure.")
flags.DEFINE_list("devices", ["ethos-u55-128", "ethos-u65-256", "host-1t"], "Device profiles.")

ZOO = {
    "small_cnn": ((28, 28, 1), 10, {"width": 16}),
    "ds_cnn": ((49, 10, 1), 12, {}),
    "resnet8": ((32, 32, 3), 10, {}),
    "mobilenet_v2": ((96, 96, 3), 10, {"alpha": 0.35}),
}


def _sparse(model, fraction):
    """A copy of `model` with the smallest `fraction` of each Conv2D/Dense kernel zeroed."""
    from tfcompress.keras import keras
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and \
                not isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel, *rest = layer.get_weights()
            cut = np.quantile(np.abs(kernel), fraction)
            layer.set_weights([np.where(np.abs(kernel) <= cut, 0, kernel)] + rest)
    return copy


def _files(name, out):
    import models
    from tfcompress import channel_pruning
    from tfcompress.keras import keras
    from tflite_export.convert import convert, write_tflite
    shape, classes, options = ZOO[name]
    keras.utils.set_random_seed(0)
    model = models.get_model(name, shape, classes, **options)
    calibration = np.random.default_rng(0).uniform(0, 1, (32,) + shape).astype(np.float32)
    thin, _ = channel_pruning.prune_channels(
        model, channel_pruning.ChannelPruningConfig(ratio=0.5, criterion="l1"))
    variants = [("float32", model, "float32"), ("int8_full", model, "int8_full"),
                ("int16x8", model, "int16x8"), ("channels-50%", thin, "int8_full"),
                ("sparse-80%", _sparse(model, 0.8), "int8_full")]
    return {label: write_tflite(convert(m, mode, representative_data=calibration),
                                os.path.join(out, f"{name}_{label.replace('%', '')}.tflite"))
            for label, m, mode in variants}


def run():
    from tflite_export import benchmark
    os.makedirs(FLAGS.out, exist_ok=True)
    rows = []
    for name in FLAGS.models:
        files = _files(name, FLAGS.out)
        result = benchmark.benchmark_models(list(files.values()), devices=FLAGS.devices,
                                            runs=50, min_seconds=1.0)
        by_path = {}
        for r in result["results"]:
            by_path.setdefault(r["model"], {})[r["device"]] = r
        for label, path in files.items():
            row = {"model": name, "variant": label, "file_bytes": os.path.getsize(path)}
            for device, r in by_path[path].items():
                row[device] = {k: r.get(k) for k in (
                    "error", "not_applicable", "cycles", "inference_ms", "sram_kib", "flash_kib",
                    "dram_kib", "cpu_ops", "median_ms") if r.get(k) is not None}
            rows.append(row)
    with open(os.path.join(FLAGS.out, "bench_npu.json"), "w") as f:
        json.dump(rows, f, indent=2)
    npus = [d for d in FLAGS.devices if d.startswith("ethos")]
    header = ["model", "variant", "bytes"] + [f"{d} {c}" for d in npus
                                              for c in ("cycles", "SRAM KiB", "flash KiB")]
    header += [f"{d} median ms" for d in FLAGS.devices if d not in npus]
    lines = []
    for row in rows:
        cells = [row["model"], row["variant"], f"{row['file_bytes']:,}"]
        for d in npus:
            r = row.get(d, {})
            cells += (["not for NPU", "-", "-"] if r.get("not_applicable") else
                      [r.get("error", "")] * 3 if "cycles" not in r else
                      [f"{r['cycles']:,}", f"{r['sram_kib']:.1f}", f"{r['flash_kib']:.1f}"])
        cells += [f"{row[d]['median_ms']:.3f}" if "median_ms" in row.get(d, {}) else
                  "error" if "error" in row.get(d, {}) else "-"
                  for d in FLAGS.devices if d not in npus]
        lines.append(cells)
    table = "\n".join(markdown_table(header, lines, numeric_from=2))
    with open(os.path.join(FLAGS.out, "bench_npu.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return rows


main = absl_main(run)

if __name__ == "__main__":
    app.run(main)
