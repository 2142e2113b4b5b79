"""Latency, memory and size of `.tflite` files on device profiles.

Host profiles time the file here (below); the other kinds of `tflite_export.profiles`
hand it to their backend: an Ethos-U NPU profile to Arm's Vela compiler
(`tflite_export.vela`: estimated cycles, SRAM, flash), an emulated Cortex-A profile to
QEMU and the aarch64 LiteRT (`tflite_export.arm_emulation`: outputs against the host,
XNNPACK's kernels), the `edgetpu` profile to the static check (`tflite_export.edgetpu`).

On a host profile, each (model, device profile) pair runs in its own Python process, so a model
that crashes, hangs or leaks cannot take the run down, and memory is that one
model's. The process pins itself to the profile's CPUs, loads the model with
the LiteRT interpreter (profile's threads and kernels), feeds seeded random
inputs of the right dtype and quantization, and measures:

    load_ms               Interpreter(model_path=...) + allocate_tensors()
    first_inference_ms    the first invoke (it first touches the activation arena
                          and kernel buffers: ~5 ms against a 1.2 ms median for
                          MobileNetV2-0.35 96x96 float32 here)
    warmup_runs           untimed invokes after the first
    runs, seconds         timed invokes: at least `runs` AND at least
                          `min_seconds`, but stop after `max_seconds` (the
                          official benchmark_model's num_runs/min_secs/max_secs)
    min/median/mean/p90/p99/max/std _ms   over the timed invokes (std: sample)
    rss_before_load_mb    VmRSS of the process (Python + numpy + LiteRT) before the load
    rss_after_load_mb, load_rss_growth_mb   VmRSS after the load, and the growth
    rss_after_first_inference_mb   VmRSS after the first invoke: memory the first
                          run touches shows here, not at load (+8 MB for that model)
    rss_after_runs_mb     VmRSS after the timed runs (a leak shows here)
    peak_rss_mb           the process's high-water mark (VmHWM; ru_maxrss off Linux)
    file_bytes, gzip_bytes  the file's size, and its gzip -9 size (as `inspect`)

Timings are of this host's CPU only. A phone cannot be emulated for timing on
an x86 host, so no phone latency is ever printed: measure on the phone with the
official benchmark_model tool. `crosscheck=True` also runs the official
`litert-benchmark` (installed with ai-edge-litert) on the same file with the
same CPUs, threads, warm-up and run count, and reports both medians.

Device profiles (threads, CPU pinning, kernels; built-ins and a user JSON file)
are in `tflite_export.profiles`, the Markdown tables and the plot in
`tflite_export.benchmark_report`; their names are importable from here too.

Result schema ("tfcompress.benchmark/1"), a JSON-able dict:

    schema        "tfcompress.benchmark/1"
    environment   cpu, machine, system, logical_cpus, usable_cpus, python, numpy,
                  ai_edge_litert, tensorflow (versions; None when not installed),
                  load_average, load_average_end (1/5/15 min at the start and
                  the end), started (UTC ISO time), note (the phone note above)
    settings      runs, min_seconds, max_seconds, warmup, seed, timeout_s,
                  baseline, crosscheck, devices {name: profile fields}
    results       one per (model, device), models outer, in the order given:
                  model (the path given), device, kind (the profile's kind), error
                  (None, or one line), file_bytes, gzip_bytes (None when the file
                  is unreadable); an npu row with no error holds `vela_estimate`'s
                  fields (cycles, inference_ms, sram_kib, ... or not_applicable), an
                  arm-emulated row `arm_emulation.measure`'s (emulated: true,
                  outputs_match_host, xnnpack_used, emulated_invoke_ms, ...), a static
                  row compatible, ops_on_device, ops_on_cpu, first_unsupported_op;
                  a host row with no error also: threads, delegate, cpus (the
                  affinity the process really had), inputs [{name, shape,
                  dtype, quantized}], the timing and memory fields above, and
                  crosscheck (only with crosscheck=True): {tool, command,
                  median_ms, mean_ms, min_ms, runs, median_ratio (ours/theirs)}
                  or {error} or {skipped}
    ratios        one per (model, host device) where both it and the baseline ran:
                  model, baseline, device, speedup (baseline median / model
                  median), latency_ratio (its inverse), size_ratio,
                  gzip_size_ratio, peak_rss_ratio (model / baseline)
    unknown_devices  {name: one-line error} for asked-for devices no profile has
    failures      how many results (or asked-for cross-checks) failed, plus unknown devices

Example:
    from tflite_export import benchmark
    profiles = benchmark.load_profiles("my_devices.json")
    result = benchmark.benchmark_models(["m_float32.tflite", "m_int8_full.tflite"],
                                        devices=("host-1t", "host-2t"), profiles=profiles)
    print(benchmark.format_markdown(result))
    benchmark.plot(result, "latency_vs_size.png")
"""

import datetime
import gzip
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from tflite_export import child_process
from tflite_export.benchmark_report import format_markdown, plot
from tflite_export.environment import host, usable_cpus
from tflite_export.profiles import (DELEGATES, PHONE_NOTE, PROFILES, BenchmarkError,
                                    DeviceProfile, format_profiles, load_profiles)
from tflite_export.tflite_file import TfliteFileError, read_tflite

__all__ = ["SCHEMA", "benchmark_models", "environment", "latency_stats", "random_inputs",
           "litert_benchmark_command",
           # from tflite_export.profiles, .environment and .benchmark_report
           "BenchmarkError", "DELEGATES", "DeviceProfile", "PHONE_NOTE", "PROFILES",
           "format_profiles", "load_profiles", "usable_cpus", "format_markdown", "plot"]

SCHEMA = "tfcompress.benchmark/1"
_RESULT_MARKER = "TFCOMPRESS_BENCH_RESULT "


# ---------------------------------------------------------------------------
# Inside the child process


def random_inputs(input_details, seed=0):
    """Seeded random arrays for the interpreter's inputs, as they are written to the tensors.

    Float inputs are uniform in [-1, 1] (as litert-benchmark fills them).
    Quantized integer inputs are the quantization of floats uniform over the
    float range the input can represent (its calibration range), so every
    integer level is hit. Unquantized integer inputs (ids) are in [0, 127].

    Raises:
        BenchmarkError: an input dtype we cannot fill (strings, ...).
    """
    from tflite_export.evaluate import quantize
    rng = np.random.default_rng(seed)
    arrays = []
    for detail in input_details:
        dtype, shape = np.dtype(detail["dtype"]), tuple(int(d) for d in detail["shape"])
        scale, zero_point = detail["quantization"]
        if dtype.kind == "f":
            arrays.append(rng.uniform(-1.0, 1.0, shape).astype(dtype))
        elif dtype.kind in "iu" and scale:
            info = np.iinfo(dtype)
            low, high = (info.min - zero_point) * scale, (info.max - zero_point) * scale
            arrays.append(quantize(rng.uniform(low, high, shape), scale, zero_point, dtype))
        elif dtype.kind in "iu":
            arrays.append(rng.integers(0, min(127, np.iinfo(dtype).max) + 1, shape, dtype=dtype))
        elif dtype.kind == "b":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            raise BenchmarkError(f"input {detail['name']} has dtype {dtype.name}, which the "
                                 "benchmark cannot fill with random data")
    return arrays


def latency_stats(times_ms):
    """min, median, mean, p90, p99, max and sample std (ms) of timed runs.

    Percentiles interpolate linearly between the sorted runs (numpy's default,
    as litert-benchmark computes its p5/p95).
    """
    t = np.asarray(times_ms, np.float64)
    if t.size == 0:
        raise BenchmarkError("no timed runs to summarize")
    return {"min_ms": float(t.min()), "median_ms": float(np.median(t)),
            "mean_ms": float(t.mean()), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "max_ms": float(t.max()),
            "std_ms": float(t.std(ddof=1)) if t.size > 1 else 0.0}


def _rss_mb(field="VmRSS"):
    """A /proc/self/status memory field (VmRSS: now, VmHWM: peak) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mb():
    # Not ru_maxrss first: Linux carries it across exec, so a child forked from
    # a parent holding TensorFlow reported the parent's 563 MB (measured).
    # VmHWM belongs to the process's own address space, made fresh by exec.
    peak = _rss_mb("VmHWM")
    if peak is not None:
        return peak
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB else


def _measure(path, threads, cpus, delegate, runs, min_seconds, max_seconds, warmup, seed):
    """Runs in the child process: load, first inference, warm-up, timed runs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    resolver = (OpResolverType.AUTO if delegate == "xnnpack"
                else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    rss_before = _rss_mb()
    start = time.perf_counter()
    interpreter = Interpreter(model_path=path, num_threads=threads,
                              experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    load_ms = (time.perf_counter() - start) * 1e3
    rss_after_load = _rss_mb()
    details = interpreter.get_input_details()
    for detail, array in zip(details, random_inputs(details, seed)):
        interpreter.set_tensor(detail["index"], array)
    invoke = interpreter.invoke
    start = time.perf_counter()
    invoke()
    first_ms = (time.perf_counter() - start) * 1e3
    rss_after_first = _rss_mb()  # arena pages are touched by the first run, not the load
    for _ in range(warmup):
        invoke()
    times, begin, clock = [], time.perf_counter(), time.perf_counter
    while True:
        t0 = clock()
        invoke()
        t1 = clock()
        times.append((t1 - t0) * 1e3)
        elapsed = t1 - begin
        if (len(times) >= runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    result = {
        "threads": threads, "delegate": delegate, "cpus": usable_cpus(),
        "inputs": [{"name": d["name"], "shape": [int(s) for s in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name, "quantized": bool(d["quantization"][0])}
                   for d in details],
        "load_ms": load_ms, "first_inference_ms": first_ms, "warmup_runs": warmup,
        "runs": len(times), "seconds": time.perf_counter() - begin,
    }
    result.update(latency_stats(times))
    rss_after_runs = _rss_mb()
    result.update({
        "rss_before_load_mb": rss_before, "rss_after_load_mb": rss_after_load,
        "load_rss_growth_mb": (rss_after_load - rss_before
                               if rss_before is not None and rss_after_load is not None else None),
        "rss_after_first_inference_mb": rss_after_first,
        "rss_after_runs_mb": rss_after_runs, "peak_rss_mb": _peak_rss_mb(),
    })
    return result


def _child_main(spec_json):
    """The child's entry: measure, print one marked JSON line, exit 0.

    An error the interpreter raises becomes {"error": ...}; a crash kills the
    process and the parent reports the signal.
    """
    try:
        result = _measure(**json.loads(spec_json))
    except Exception as e:  # the interpreter raises RuntimeError/ValueError with its reason
        result = {"error": child_process.one_line(f"{type(e).__name__}: {e}")}
    sys.stdout.write(_RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# `import tfcompress` does not load TensorFlow, so the child is Python + numpy +
# LiteRT (~40 MB here, not TensorFlow's ~0.5 GB) and starts in ~0.3 s.
# `child_process.python_command` puts the folder holding this tflite_export first on
# sys.path, so the child runs this very code whatever its working directory holds.
_CHILD_BOOTSTRAP = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from tflite_export.benchmark import _child_main\n"
    "sys.exit(_child_main(sys.argv[2]))\n")



def _measure_in_child(path, profile, cpus, settings):
    spec = {"path": os.path.abspath(path), "threads": profile.threads, "cpus": cpus,
            "delegate": profile.delegate, "runs": settings["runs"],
            "min_seconds": settings["min_seconds"], "max_seconds": settings["max_seconds"],
            "warmup": settings["warmup"], "seed": settings["seed"]}
    stdout, error = child_process.run(
        child_process.python_command(_CHILD_BOOTSTRAP, json.dumps(spec)), settings["timeout_s"])
    if error:
        return {"error": error}
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_MARKER):
            return json.loads(line[len(_RESULT_MARKER):])
    return {"error": "the benchmark process printed no result"}


# ---------------------------------------------------------------------------
# litert-benchmark cross-check


def litert_benchmark_command():
    """The official `litert-benchmark` command (installed with ai-edge-litert)."""
    beside = os.path.join(os.path.dirname(sys.executable), "litert-benchmark")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("litert-benchmark")
    # The console script runs this module's main(); -m runs the same code.
    return [found] if found else [sys.executable, "-m",
                                  "ai_edge_litert.tools.benchmark_litert_model"]


def _crosscheck(path, row, timeout_s):
    """litert-benchmark on the same file, CPUs, threads, warm-up and run count.

    litert-benchmark runs LiteRT's CompiledModel CPU path, which is XNNPACK;
    it has no switch to turn XNNPACK off, so a "none" profile is skipped
    rather than compared with something else. It rounds to 0.01 ms.
    """
    if row["delegate"] != "xnnpack":
        return {"skipped": "litert-benchmark always runs XNNPACK; no like-for-like run for "
                           f"delegate {row['delegate']}"}
    with tempfile.TemporaryDirectory(prefix="tfcompress-bench-") as tmp:
        out = os.path.join(tmp, "litert.json")
        # Our first inference is one more untimed run than `warmup_runs`.
        cmd = litert_benchmark_command() + [
            "--model", os.path.abspath(path), "--num_threads", str(row["threads"]),
            "--num_runs", str(row["runs"]), "--warmup_runs", str(row["warmup_runs"] + 1),
            "--result_json", out]
        _, error = child_process.run(cmd, timeout_s, cpus=row["cpus"])
        if error:
            return {"error": error}
        try:
            with open(out) as f:
                latency = json.load(f)["latency"]
        except (OSError, ValueError, KeyError) as e:
            return {"error": child_process.one_line(f"cannot read litert-benchmark's result: {e}")}
    theirs = float(latency["median_ms"])
    return {"tool": "litert-benchmark", "command": " ".join(cmd[:1] + cmd[1:-2]),
            "median_ms": theirs, "mean_ms": float(latency["avg_ms"]),
            "min_ms": float(latency["min_ms"]), "runs": int(latency["num_runs"]),
            "median_ratio": row["median_ms"] / theirs if theirs > 0 else None}


# ---------------------------------------------------------------------------
# The parent: many models, many devices


def environment():
    """The machine and versions the figures belong to (see the module docstring)."""
    machine = host(("ai-edge-litert", "tensorflow"))
    return {
        "cpu": machine["cpu"], "machine": machine["machine"], "system": machine["system"],
        "logical_cpus": machine["logical_cpus"], "usable_cpus": machine["usable_cpus"],
        "python": machine["python"], "numpy": np.__version__,
        "ai_edge_litert": machine["versions"]["ai-edge-litert"],
        "tensorflow": machine["versions"]["tensorflow"],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "note": PHONE_NOTE,
    }



def _file_sizes(path):
    """(file_bytes, gzip_bytes, None) of a valid `.tflite`, or (.., .., one-line error)."""
    try:
        data = read_tflite(path)
    except TfliteFileError as e:
        size = os.path.getsize(path) if os.path.isfile(path) else None
        return size, None, child_process.one_line(e)
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0)), None


def unknown_device(name, profiles):
    """The one-line error for a device name no profile has."""
    return (f"unknown device {name!r}; known: {', '.join(profiles)} (tfcompress bench "
            "--list-devices; add your own host profile in a file: CLI --devices-file)")


def _check_settings(paths, devices, profiles, runs, min_seconds, max_seconds, warmup, timeout_s):
    if not paths:
        raise BenchmarkError("no .tflite files to benchmark")
    if isinstance(devices, str):
        raise BenchmarkError(f"devices must be a list of names, e.g. [{devices!r}]")
    if not devices:
        raise BenchmarkError("no devices to benchmark on; e.g. devices=('host-1t',)")
    if all(d not in profiles for d in devices):
        raise BenchmarkError(unknown_device(devices[0], profiles))
    for name, value, low in (("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BenchmarkError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value, positive in (("min_seconds", min_seconds, False),
                                  ("max_seconds", max_seconds, True),
                                  ("timeout_s", timeout_s, True)):
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0 \
                or (positive and value == 0):
            raise BenchmarkError(f"{name} must be a number {'> 0' if positive else '>= 0'}, "
                                 f"got {value!r}")


def benchmark_models(paths, devices=("host-1t",), runs=50, min_seconds=1.0, warmup=5,
                     baseline=None, seed=0, timeout_s=300, log=print, profiles=None,
                     max_seconds=150.0, crosscheck=False):
    """Benchmarks every model on every device profile, each in its own process.

    Args:
        paths: `.tflite` files. A missing or corrupt one gets an error entry;
            the others still run.
        devices: profile names (see `load_profiles`).
        runs: at least this many timed runs...
        min_seconds: ...and at least this long...
        warmup: untimed runs after the first inference.
        baseline: the model ratios are taken against; default the first of
            `paths`. One not in `paths` is benchmarked too (first).
        seed: seeds the random inputs.
        timeout_s: a model's process is killed after this long (per device).
        log: called with one progress line per run (None: quiet).
        profiles: {name: DeviceProfile} from `load_profiles`; default built-ins.
        max_seconds: ...but timing stops after this long (official default 150).
        crosscheck: also run `litert-benchmark` on the same file and settings.

    Returns:
        The result dict (schema in the module docstring).

    Raises:
        BenchmarkError: bad settings, unknown devices, or a profile pinning
            CPUs this process may not use. Model problems never raise.
    """
    profiles = load_profiles() if profiles is None else profiles
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise BenchmarkError("paths must be a list of .tflite paths, e.g. [path], not one path")
    paths = [os.fspath(p) for p in paths]
    devices = list(devices) if not isinstance(devices, str) else devices
    _check_settings(paths, devices, profiles, runs, min_seconds, max_seconds, warmup, timeout_s)
    baseline = os.fspath(baseline) if baseline is not None else paths[0]
    # "m.tflite" and "./m.tflite" are one model: keep the spelling in `paths`.
    baseline = next((p for p in paths if os.path.realpath(p) == os.path.realpath(baseline)),
                    baseline)
    paths = list(dict.fromkeys(([baseline] if baseline not in paths else []) + paths))
    log = log or (lambda line: None)
    # An unknown name is one error line; the other devices are still measured.
    unknown = {name: unknown_device(name, profiles) for name in devices if name not in profiles}
    devices = [name for name in devices if name in profiles]
    for message in unknown.values():
        log(f"error: {message}")
    # Fail before anything runs.
    cpus = {name: profiles[name].cpus() for name in devices if profiles[name].kind == "host"}
    settings = {"runs": runs, "min_seconds": float(min_seconds), "max_seconds": float(max_seconds),
                "warmup": warmup, "seed": seed, "timeout_s": float(timeout_s),
                "baseline": baseline, "crosscheck": bool(crosscheck),
                "devices": {name: profiles[name].to_dict() for name in devices}}
    result = {"schema": SCHEMA, "environment": environment(), "settings": settings,
              "results": [], "ratios": []}
    total, done = len(paths) * len(devices), 0
    for path in paths:
        file_bytes, gzip_bytes, file_error = _file_sizes(path)
        for name in devices:
            done += 1
            profile = profiles[name]
            row = {"model": path, "device": name, "kind": profile.kind, "error": file_error,
                   "file_bytes": file_bytes, "gzip_bytes": gzip_bytes}
            if file_error is None:
                measured = (_measure_in_child(path, profile, cpus[name], settings)
                            if profile.kind == "host" else
                            _other_device(path, profile, settings, log))
                row["error"] = measured.pop("error", None)
                row.update(measured)
            if row["error"] is None and crosscheck and profile.kind == "host":
                row["crosscheck"] = _crosscheck(path, row, timeout_s)
            result["results"].append(row)
            log(f"[{done}/{total}] {path} on {name}: " + _row_words(row))
    result["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["ratios"] = _ratios(result["results"], baseline)
    result["unknown_devices"] = unknown
    result["failures"] = len(unknown) + sum(1 for r in result["results"]
                                            if r["error"] or "error" in r.get("crosscheck", {}))
    return result


def _other_device(path, profile, settings, log):
    """An npu, arm-emulated or static profile's result for one file, or {"error": one line}.
    Their backends are imported here: a host-only run needs neither Vela nor QEMU. The
    emulator's one-time download (about 200 MB) reports its steps through `log`."""
    try:
        if profile.kind == "npu":
            from tflite_export.vela import vela_estimate
            return vela_estimate(path, profile.accelerator, settings["timeout_s"])
        if profile.kind == "arm-emulated":
            from tflite_export import arm_emulation
            if not arm_emulation.is_set_up():
                arm_emulation.set_up(log=log)
            return arm_emulation.measure(path, profile.name, seed=settings["seed"],
                                         timeout_s=settings["timeout_s"])
        from tflite_export.edgetpu import edgetpu_report
        report = edgetpu_report(path)
        return {"compatible": report["compatible"], "ops_on_device": report["ops_on_edgetpu"],
                "ops_on_cpu": report["ops_on_cpu"],
                "first_unsupported_op": report["first_unsupported_op"]}
    except (RuntimeError, ValueError, OSError) as e:  # the backends' one-line errors
        return {"error": child_process.one_line(e)}


def _row_words(row):
    """The progress line's figures for one result row."""
    if row["error"]:
        return f"error: {row['error']}"
    if row.get("not_applicable"):
        return row["not_applicable"]
    if row["kind"] == "npu":
        return (f"{row['cycles']:,} cycles ({row['inference_ms']:.3f} ms at "
                f"{row['clock_mhz']:.0f} MHz, Vela estimate), SRAM {row['sram_kib']:.1f} KiB, "
                f"flash {row['flash_kib']:.1f} KiB, DRAM {row['dram_kib']:.1f} KiB, "
                f"{row['npu_ops']} ops on the NPU, "
                f"{row['cpu_ops']} on the CPU")
    if row["kind"] == "arm-emulated":
        return (f"outputs {'match' if row['outputs_match_host'] else 'DIFFER FROM'} the host "
                f"({row['compare']}), XNNPACK {'used' if row['xnnpack_used'] else 'not used'}"
                + ("" if row.get("sparse_path_used") is None else
                   f", sparse path {'used' if row['sparse_path_used'] else 'not used'}")
                + f", {row['emulated_invoke_ms']:.1f} ms emulated (not device time)")
    if row["kind"] == "static":
        first = row["first_unsupported_op"]
        return (f"{'compatible' if row['compatible'] else 'not compatible'}: "
                f"{row['ops_on_device']} ops on the device, {row['ops_on_cpu']} on the CPU"
                + (f" (cut at {first['op']}: {first['reason']})" if first else ""))
    return (f"median {row['median_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms, "
            f"{row['runs']} runs, peak RSS {row['peak_rss_mb']:.0f} MB"
            + _crosscheck_words(row.get("crosscheck")))


def _crosscheck_words(check):
    if not check:
        return ""
    if "error" in check:
        return f"; litert-benchmark error: {check['error']}"
    if "skipped" in check:
        return f"; litert-benchmark skipped: {check['skipped']}"
    ratio = f", ours/theirs {check['median_ratio']:.3f}" if check["median_ratio"] else ""
    return f"; litert-benchmark median {check['median_ms']:.2f} ms{ratio}"


def _ratios(rows, baseline):
    rows = [r for r in rows if r.get("kind", "host") == "host"]
    base = {r["device"]: r for r in rows if r["model"] == baseline and not r["error"]}
    ratios = []
    for r in rows:
        b = base.get(r["device"])
        if r["model"] == baseline or r["error"] or b is None:
            continue
        ratios.append({
            "model": r["model"], "baseline": baseline, "device": r["device"],
            "speedup": b["median_ms"] / r["median_ms"],
            "latency_ratio": r["median_ms"] / b["median_ms"],
            "size_ratio": r["file_bytes"] / b["file_bytes"],
            "gzip_size_ratio": r["gzip_bytes"] / b["gzip_bytes"],
            "peak_rss_ratio": r["peak_rss_mb"] / b["peak_rss_mb"],
        })
    return ratios
