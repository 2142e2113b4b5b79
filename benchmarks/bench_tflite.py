r"""Benchmark: int8_full against float32 TFLite latency, checked against litert-benchmark.

Builds MobileNetV2 alpha 0.35 at 96x96 (random weights: latency does not
depend on them), converts it to float32 and int8_full (calibrated on seeded
random images in [0, 1]), then runs `tflite_export.benchmark` on one device
profile (default host-1t: 1 thread pinned to 1 CPU, XNNPACK) `--repeats`
times, each with the `litert-benchmark` cross-check. Reports, from one run on
one machine:

    speedup          float32 median / int8_full median, per repeat
    ours/theirs      our median / litert-benchmark's median on the same file,
                     CPU, threads, warm-up and run count
    spread           (max - min) / mean of each model's medians over the repeats

Noise on a shared machine is reduced by pinning each process to one CPU,
warm-up runs, timing for at least `--min_seconds` per model, medians rather
than means, and alternating which model runs first in each repeat.
Writes OUT/bench_tflite.json (summary), OUT/repeat_N.json (full results),
OUT/bench_tflite.md and OUT/latency_vs_size.png.

Example:
    python -m benchmarks.bench_tflite --out=runs/bench-tflite
"""

import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_float("alpha", 0.35, "MobileNetV2 width multiplier.")
flags.DEFINE_integer("size", 96, "Input side (size x size x 3).", lower_bound=32)
flags.DEFINE_string("device", "host-1t", "Device profile to time on.")
flags.DEFINE_integer("repeats", 3, "How many times the whole benchmark is repeated.",
                     lower_bound=1)
flags.DEFINE_integer("runs", 100, "At least this many timed runs per model...", lower_bound=1)
flags.DEFINE_float("min_seconds", 3.0, "...and at least this many seconds.", lower_bound=0.0)
flags.DEFINE_integer("warmup", 10, "Warm-up runs after the first inference.", lower_bound=0)
flags.DEFINE_integer("calibration_samples", 100, "Random images that calibrate int8_full.",
                     lower_bound=1)
flags.DEFINE_string("out", "runs/bench-tflite", "Output folder.")


def _spread(values):
    values = [v for v in values if v]
    return (max(values) - min(values)) / float(np.mean(values)) if values else None


def build_models(out, alpha, size, calibration_samples):
    """Writes OUT/mobilenet_v2_{float32,int8_full}.tflite; returns the two paths."""
    import models
    from tfcompress.keras import keras
    from tflite_export.convert import export
    keras.utils.set_random_seed(0)
    model = models.get_model("mobilenet_v2", (size, size, 3), 10, alpha=alpha)
    calib = np.random.default_rng(0).uniform(0, 1, (calibration_samples, size, size, 3))
    paths = export(model, ["float32", "int8_full"], out,
                   representative_data=calib.astype(np.float32), name="mobilenet_v2",
                   log=lambda line: print(line, flush=True))
    return [paths["float32"], paths["int8_full"]]


def run():
    from tfcompress.saving import write_bytes_atomic, write_json_atomic
    from tflite_export import benchmark

    float_path, int8_path = build_models(FLAGS.out, FLAGS.alpha, FLAGS.size,
                                         FLAGS.calibration_samples)
    repeats = []
    for i in range(FLAGS.repeats):
        # The model timed second in a round may meet a warmer (or busier) CPU: alternate.
        order = [float_path, int8_path] if i % 2 == 0 else [int8_path, float_path]
        print(f"repeat {i + 1}/{FLAGS.repeats}", flush=True)
        result = benchmark.benchmark_models(
            order, devices=[FLAGS.device], runs=FLAGS.runs, min_seconds=FLAGS.min_seconds,
            warmup=FLAGS.warmup, baseline=float_path, crosscheck=True,
            log=lambda line: print("  " + line, flush=True))
        write_json_atomic(os.path.join(FLAGS.out, f"repeat_{i + 1}.json"), result)
        repeats.append(result)

    def row(result, path):
        return next(r for r in result["results"] if r["model"] == path)

    summary = {"model": f"mobilenet_v2 alpha {FLAGS.alpha} {FLAGS.size}x{FLAGS.size}x3",
               "device": FLAGS.device, "settings": repeats[0]["settings"],
               "environment": repeats[0]["environment"],
               "load_average_per_repeat": [r["environment"]["load_average"] for r in repeats],
               "failures": sum(r["failures"] for r in repeats), "models": {}}
    for name, path in (("float32", float_path), ("int8_full", int8_path)):
        rows = [row(r, path) for r in repeats]
        ours = [r.get("median_ms") for r in rows]
        theirs = [r.get("crosscheck", {}).get("median_ms") for r in rows]
        summary["models"][name] = {
            "file": path, "file_bytes": rows[0]["file_bytes"], "gzip_bytes": rows[0]["gzip_bytes"],
            "median_ms": ours, "litert_benchmark_median_ms": theirs,
            "ours_over_theirs": [a / b if a and b else None for a, b in zip(ours, theirs)],
            "median_spread": _spread(ours), "litert_benchmark_median_spread": _spread(theirs),
            "peak_rss_mb": [r.get("peak_rss_mb") for r in rows],
            "runs": [r.get("runs") for r in rows]}
    f32, i8 = summary["models"]["float32"], summary["models"]["int8_full"]
    summary["speedup"] = [a / b if a and b else None
                          for a, b in zip(f32["median_ms"], i8["median_ms"])]
    write_json_atomic(os.path.join(FLAGS.out, "bench_tflite.json"), summary)
    write_bytes_atomic(os.path.join(FLAGS.out, "bench_tflite.md"),
                       (benchmark.format_markdown(repeats[-1]) + "\n").encode())
    benchmark.plot(repeats[-1], os.path.join(FLAGS.out, "latency_vs_size.png"))

    def ms(values):
        return ", ".join("-" if v is None else f"{v:.3f}" for v in values)

    print(f"\n{summary['model']} on {FLAGS.device} ({summary['environment']['cpu']}; load "
          f"averages {summary['load_average_per_repeat']})")
    def pct(value):
        return "-" if value is None else f"{value:.1%}"

    for name, m in summary["models"].items():
        print(f"{name:9s} {m['file_bytes']:,} bytes; median ms per repeat: ours "
              f"{ms(m['median_ms'])} | litert-benchmark {ms(m['litert_benchmark_median_ms'])}; "
              f"ours/theirs {ms(m['ours_over_theirs'])}; spread of the medians: ours "
              f"{pct(m['median_spread'])}, litert-benchmark "
              f"{pct(m['litert_benchmark_median_spread'])}")
    print(f"int8_full speedup over float32 per repeat: {ms(summary['speedup'])}")
    print(benchmark.PHONE_NOTE)
    return summary


def main(argv):
    del argv
    from tfcompress.errors import run_cli

    def run_and_exit_code():
        return 1 if run()["failures"] else 0

    # app.run passes main's return value to sys.exit, so it must be an exit code.
    return run_cli(run_and_exit_code)


if __name__ == "__main__":
    app.run(main)
