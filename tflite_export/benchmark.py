"""Latency, memory and size of `.tflite` files on host device profiles.

Each (model, device profile) pair runs in its own Python process, so a model
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

Device profiles: `PROFILES` below (`host-1t`, `host-2t`, `host-1t-reference`),
plus a user JSON file mapping names to the same fields:

    {"host-4t": {"threads": 4, "affinity": [0, 1, 2, 3], "delegate": "xnnpack",
                 "description": "4 threads on CPUs 0-3 with XNNPACK"}}

    threads      interpreter threads (>= 1)
    affinity     null (no pinning), N (the first N CPUs this process may use),
                 or a list of CPU ids
    delegate     "xnnpack" (LiteRT's default: builtin kernels + the XNNPACK
                 delegate) or "none" (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES:
                 TFLite's builtin kernels without any delegate)
    description  one honest line: what the profile stands for

A user profile with a built-in's name replaces it.

Result schema ("tfcompress.benchmark/1"), a JSON-able dict:

    schema        "tfcompress.benchmark/1"
    environment   cpu, machine, system, logical_cpus, usable_cpus, python, numpy,
                  ai_edge_litert, tensorflow (versions; None when not installed),
                  load_average, load_average_end (1/5/15 min at the start and
                  the end), started (UTC ISO time), note (the phone note above)
    settings      runs, min_seconds, max_seconds, warmup, seed, timeout_s,
                  baseline, crosscheck, devices {name: profile fields}
    results       one per (model, device), models outer, in the order given:
                  model (the path given), device, error (None, or one line),
                  file_bytes, gzip_bytes (None when the file is unreadable),
                  and when error is None also: threads, delegate, cpus (the
                  affinity the process really had), inputs [{name, shape,
                  dtype, quantized}], the timing and memory fields above, and
                  crosscheck (only with crosscheck=True): {tool, command,
                  median_ms, mean_ms, min_ms, runs, median_ratio (ours/theirs)}
                  or {error} or {skipped}
    ratios        one per (model, device) where both it and the baseline ran:
                  model, baseline, device, speedup (baseline median / model
                  median), latency_ratio (its inverse), size_ratio,
                  gzip_size_ratio, peak_rss_ratio (model / baseline)
    failures      how many results (or asked-for cross-checks) failed

Example:
    from tflite_export import benchmark
    profiles = benchmark.load_profiles("my_devices.json")
    result = benchmark.benchmark_models(["m_float32.tflite", "m_int8_full.tflite"],
                                        devices=("host-1t", "host-2t"), profiles=profiles)
    print(benchmark.format_markdown(result))
    benchmark.plot(result, "latency_vs_size.png")
"""

import dataclasses
import datetime
import gzip
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from tfcompress.errors import TfcompressError
from tflite_export.tflite_file import TfliteFileError, read_tflite

SCHEMA = "tfcompress.benchmark/1"
PHONE_NOTE = ("Timed on this host's CPU only. A phone cannot be emulated for timing on an x86 "
              "host, so no phone latency is shown; measure on the device with the official "
              "benchmark_model tool.")
DELEGATES = ("xnnpack", "none")
_RESULT_MARKER = "TFCOMPRESS_BENCH_RESULT "


class BenchmarkError(TfcompressError, ValueError):
    """Bad benchmark settings or device profiles; the message says how to fix them."""


def usable_cpus():
    """The CPU ids this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """How one model run is set up: threads, CPU pinning and kernels.

    Attributes:
        name: the profile's name (`--device NAME`).
        threads: interpreter threads.
        affinity: None (no pinning), an int N (the first N usable CPUs) or a
            tuple of CPU ids.
        delegate: "xnnpack" or "none" (see the module docstring).
        description: what the profile stands for, in one line.
        source: "built-in" or the file it came from.
    """
    name: str
    threads: int
    affinity: object
    delegate: str
    description: str
    source: str = "built-in"

    def cpus(self, usable=None):
        """The CPU ids to pin to (None: no pinning).

        Raises:
            BenchmarkError: the profile asks for CPUs this process may not use.
        """
        usable = usable_cpus() if usable is None else sorted(usable)
        if self.affinity is None:
            return None
        if not hasattr(os, "sched_setaffinity"):
            raise BenchmarkError(f"device {self.name} pins CPUs, which needs Linux; use a "
                                 "profile with \"affinity\": null on this system")
        if isinstance(self.affinity, int):
            if self.affinity > len(usable):
                raise BenchmarkError(
                    f"device {self.name} pins {self.affinity} CPUs but this process may use "
                    f"only {len(usable)} ({usable}); pick another device or add one with a "
                    "profile file")
            return usable[:self.affinity]
        missing = sorted(set(self.affinity) - set(usable))
        if missing:
            raise BenchmarkError(f"device {self.name} pins CPUs {list(self.affinity)} but "
                                 f"{missing} are not available here (usable: {usable}); edit "
                                 "its affinity in the profile file")
        return list(self.affinity)

    def to_dict(self):
        affinity = list(self.affinity) if isinstance(self.affinity, tuple) else self.affinity
        return {"threads": self.threads, "affinity": affinity, "delegate": self.delegate,
                "description": self.description, "source": self.source}


PROFILES = {p.name: p for p in (
    DeviceProfile("host-1t", 1, 1, "xnnpack",
                  "this host, 1 thread pinned to 1 CPU, XNNPACK delegate (LiteRT's default "
                  "CPU path); a stand-in for ranking variants, not a phone's latency"),
    DeviceProfile("host-2t", 2, 2, "xnnpack",
                  "this host, 2 threads pinned to 2 CPUs, XNNPACK delegate; shows how a model "
                  "scales with threads on this CPU, not on a phone's big.LITTLE cores"),
    DeviceProfile("host-1t-reference", 1, 1, "none",
                  "this host, 1 thread pinned to 1 CPU, TFLite builtin kernels without the "
                  "XNNPACK delegate (BUILTIN_WITHOUT_DEFAULT_DELEGATES): a runtime that has "
                  "no XNNPACK, or models XNNPACK cannot take (sparse int8)"),
)}
_PROFILE_KEYS = {"threads", "affinity", "delegate", "description"}


def _profile_from_dict(name, fields, source):
    where = f"{source}: device {name!r}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)):
        raise BenchmarkError(f"{source}: device name {name!r} must be letters, digits, '.', '_' "
                             "or '-'")
    if not isinstance(fields, dict):
        raise BenchmarkError(f"{where} must be an object with {sorted(_PROFILE_KEYS)}")
    unknown, missing = set(fields) - _PROFILE_KEYS, _PROFILE_KEYS - set(fields) - {"affinity"}
    if unknown or missing:
        raise BenchmarkError(f"{where}: unknown keys {sorted(unknown)}, missing keys "
                             f"{sorted(missing)}; a profile has {sorted(_PROFILE_KEYS)}")
    threads = fields["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BenchmarkError(f"{where}: threads must be an integer >= 1, got {threads!r}")
    affinity = fields.get("affinity")
    if isinstance(affinity, list):
        if not affinity or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                   for c in affinity):
            raise BenchmarkError(f"{where}: affinity must be null, a CPU count or a non-empty "
                                 f"list of CPU ids >= 0, got {affinity!r}")
        affinity = tuple(sorted(set(affinity)))
    elif affinity is not None and (isinstance(affinity, bool) or not isinstance(affinity, int)
                                   or affinity < 1):
        raise BenchmarkError(f"{where}: affinity must be null, a CPU count >= 1 or a list of "
                             f"CPU ids, got {affinity!r}")
    if fields["delegate"] not in DELEGATES:
        raise BenchmarkError(f"{where}: delegate must be one of {', '.join(DELEGATES)}, got "
                             f"{fields['delegate']!r} (GPU/NPU delegates are not available on "
                             "this host)")
    description = fields["description"]
    if not isinstance(description, str) or not description.strip():
        raise BenchmarkError(f"{where}: description must be a non-empty line saying what the "
                             "profile stands for")
    return DeviceProfile(str(name), threads, affinity, fields["delegate"],
                         " ".join(description.split()), source)


def load_profiles(extra_file=None):
    """The built-in device profiles, plus (replacing same names) those in `extra_file`.

    Args:
        extra_file: a JSON file {name: {threads, affinity, delegate,
            description}} (see the module docstring), or None.

    Returns:
        {name: DeviceProfile}, built-ins first.

    Raises:
        BenchmarkError: an unreadable file or an invalid profile.
    """
    profiles = dict(PROFILES)
    if extra_file is None:
        return profiles
    path = os.fspath(extra_file)
    try:
        with open(path) as f:
            table = json.load(f)
    except OSError as e:
        raise BenchmarkError(f"{path}: cannot read the device profile file: "
                             f"{e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                             f"{e.colno})") from e
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not a JSON text file (byte {e.start} is not UTF-8); "
                             "give the device profile JSON file") from e
    if not isinstance(table, dict) or not table:
        raise BenchmarkError(f"{path}: expected a JSON object {{name: profile}} with at least "
                             "one profile")
    for name, fields in table.items():
        profiles[name] = _profile_from_dict(name, fields, path)
    return profiles


def format_profiles(profiles):
    """One block per profile: name, settings, description (for `--list-devices`)."""
    lines = []
    for p in profiles.values():
        if p.affinity is None:
            affinity = "no pinning"
        elif isinstance(p.affinity, int):
            affinity = f"pinned to the first {p.affinity} usable CPU(s)"
        else:
            affinity = f"pinned to CPUs {list(p.affinity)}"
        lines.append(f"{p.name}: {p.threads} thread(s), {affinity}, delegate {p.delegate} "
                     f"({p.source})\n    {p.description}")
    lines.append(PHONE_NOTE)
    return "\n".join(lines)


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
        result = {"error": _one_line(f"{type(e).__name__}: {e}")}
    sys.stdout.write(_RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# `import tfcompress` does not load TensorFlow, so the child is Python + numpy +
# LiteRT (~40 MB here, not TensorFlow's ~0.5 GB) and starts in ~0.3 s.
# The folder holding this tflite_export goes first on sys.path, so the child runs
# this very code whatever its working directory holds.
_CHILD_BOOTSTRAP = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from tflite_export.benchmark import _child_main\n"
    "sys.exit(_child_main(sys.argv[2]))\n")


def _one_line(text, limit=400):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _run_process(cmd, timeout_s, cpus=None):
    """Runs `cmd`; returns (stdout, None) or (None, a one-line error).

    A timeout kills the process; a signal (segfault, abort, OOM kill) and a
    non-zero exit become errors naming it and the last line of stderr.
    """
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:g} s and was killed (raise the timeout)"
    except OSError as e:
        return None, _one_line(f"cannot start {cmd[0]}: {e.strerror or e}")
    last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return None, _one_line(f"the process crashed ({name})" + (f": {last}" if last else ""))
    if proc.returncode != 0:
        return None, _one_line(f"the process exited with status {proc.returncode}"
                               + (f": {last}" if last else ""))
    return proc.stdout, None


def _measure_in_child(path, profile, cpus, settings):
    spec = {"path": os.path.abspath(path), "threads": profile.threads, "cpus": cpus,
            "delegate": profile.delegate, "runs": settings["runs"],
            "min_seconds": settings["min_seconds"], "max_seconds": settings["max_seconds"],
            "warmup": settings["warmup"], "seed": settings["seed"]}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stdout, error = _run_process(
        [sys.executable, "-c", _CHILD_BOOTSTRAP, root, json.dumps(spec)],
        settings["timeout_s"])
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
        _, error = _run_process(cmd, timeout_s, cpus=row["cpus"])
        if error:
            return {"error": error}
        try:
            with open(out) as f:
                latency = json.load(f)["latency"]
        except (OSError, ValueError, KeyError) as e:
            return {"error": _one_line(f"cannot read litert-benchmark's result: {e}")}
    theirs = float(latency["median_ms"])
    return {"tool": "litert-benchmark", "command": " ".join(cmd[:1] + cmd[1:-2]),
            "median_ms": theirs, "mean_ms": float(latency["avg_ms"]),
            "min_ms": float(latency["min_ms"]), "runs": int(latency["num_runs"]),
            "median_ratio": row["median_ms"] / theirs if theirs > 0 else None}


# ---------------------------------------------------------------------------
# The parent: many models, many devices


def environment():
    """The machine and versions the figures belong to (see the module docstring)."""
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu, "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
        "python": platform.python_version(), "numpy": np.__version__,
        "ai_edge_litert": version("ai-edge-litert"), "tensorflow": version("tensorflow"),
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
        return size, None, _one_line(e)
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0)), None


def _check_settings(paths, devices, profiles, runs, min_seconds, max_seconds, warmup, timeout_s):
    if not paths:
        raise BenchmarkError("no .tflite files to benchmark")
    if isinstance(devices, str):
        raise BenchmarkError(f"devices must be a list of names, e.g. [{devices!r}]")
    if not devices:
        raise BenchmarkError("no devices to benchmark on; e.g. devices=('host-1t',)")
    unknown = [d for d in devices if d not in profiles]
    if unknown:
        raise BenchmarkError(f"unknown device(s) {', '.join(map(str, unknown))}; known: "
                             f"{', '.join(profiles)} (add your own in a profile file: "
                             "load_profiles(path), CLI --devices-file)")
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
    cpus = {name: profiles[name].cpus() for name in devices}  # fail before anything runs
    settings = {"runs": runs, "min_seconds": float(min_seconds), "max_seconds": float(max_seconds),
                "warmup": warmup, "seed": seed, "timeout_s": float(timeout_s),
                "baseline": baseline, "crosscheck": bool(crosscheck),
                "devices": {name: profiles[name].to_dict() for name in devices}}
    log = log or (lambda line: None)
    result = {"schema": SCHEMA, "environment": environment(), "settings": settings,
              "results": [], "ratios": []}
    total, done = len(paths) * len(devices), 0
    for path in paths:
        file_bytes, gzip_bytes, file_error = _file_sizes(path)
        for name in devices:
            done += 1
            row = {"model": path, "device": name, "error": file_error,
                   "file_bytes": file_bytes, "gzip_bytes": gzip_bytes}
            if file_error is None:
                measured = _measure_in_child(path, profiles[name], cpus[name], settings)
                row["error"] = measured.pop("error", None)
                row.update(measured)
            if row["error"] is None and crosscheck:
                row["crosscheck"] = _crosscheck(path, row, timeout_s)
            result["results"].append(row)
            log(f"[{done}/{total}] {path} on {name}: " + (
                f"error: {row['error']}" if row["error"] else
                f"median {row['median_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms, "
                f"{row['runs']} runs, peak RSS {row['peak_rss_mb']:.0f} MB"
                + _crosscheck_words(row.get("crosscheck"))))
    result["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["ratios"] = _ratios(result["results"], baseline)
    result["failures"] = sum(1 for r in result["results"]
                             if r["error"] or "error" in r.get("crosscheck", {}))
    return result


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


# ---------------------------------------------------------------------------
# Reports


def _labels(result):
    """Short model names: basenames unless two models share one."""
    models = list(dict.fromkeys(r["model"] for r in result["results"]))
    names = [os.path.basename(m) for m in models]
    unique = len(set(names)) == len(names)
    return {m: (n if unique else m) for m, n in zip(models, names)}


def format_markdown(result):
    """Markdown tables: results, ratios against the baseline, cross-check, failures."""
    env, label = result["environment"], _labels(result)
    lines = [f"Host: {env['cpu']}, {len(env['usable_cpus'])} usable of {env['logical_cpus']} "
             f"logical CPUs, {env['system']}; LiteRT {env['ai_edge_litert']}, Python "
             f"{env['python']}; load average {env['load_average'][0]} at the start, "
             f"{env.get('load_average_end', ['-'])[0]} at the end.",
             "", PHONE_NOTE, ""]
    busiest = max(env["load_average"][0], env.get("load_average_end", [0])[0])
    if busiest >= len(env["usable_cpus"]):
        # Other processes shared these CPUs: medians shift by tens of percent (seen here).
        lines += [f"Warning: the machine was busy (load average up to {busiest} on "
                  f"{len(env['usable_cpus'])} CPUs); timings are noisy: repeat the run and "
                  "compare medians.", ""]
    lines += ["| model | device | bytes | gzip bytes | load ms | first ms | median ms | p90 ms "
              "| p99 ms | min ms | std ms | runs | peak RSS MB | load +MB |",
              "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in result["results"]:
        if r["error"]:
            continue
        growth = r["load_rss_growth_mb"]
        lines.append(
            f"| {label[r['model']]} | {r['device']} | {r['file_bytes']:,} | {r['gzip_bytes']:,} | "
            f"{r['load_ms']:.1f} | {r['first_inference_ms']:.2f} | {r['median_ms']:.3f} | "
            f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['min_ms']:.3f} | {r['std_ms']:.3f} | "
            f"{r['runs']} | {r['peak_rss_mb']:.1f} | "
            f"{'-' if growth is None else format(growth, '.1f')} |")
    if result["ratios"]:
        lines += ["", f"Against {label[result['settings']['baseline']]} (speedup: baseline "
                      "median / model median; other columns: model / baseline):", "",
                  "| model | device | speedup | size | gzip size | peak RSS |",
                  "|---|---|--:|--:|--:|--:|"]
        lines += [f"| {label[q['model']]} | {q['device']} | {q['speedup']:.2f}x | "
                  f"{q['size_ratio']:.2f}x | {q['gzip_size_ratio']:.2f}x | "
                  f"{q['peak_rss_ratio']:.2f}x |" for q in result["ratios"]]
    checked = [r for r in result["results"] if r.get("crosscheck")]
    if checked:
        lines += ["", "Cross-check with litert-benchmark (same file, CPUs, threads, warm-up and "
                      "runs; it reports 0.01 ms steps):", "",
                  "| model | device | our median ms | litert-benchmark median ms | ours/theirs |",
                  "|---|---|--:|--:|--:|"]
        for r in checked:
            c = r["crosscheck"]
            if "median_ms" in c:
                ratio = f"{c['median_ratio']:.3f}" if c["median_ratio"] else "-"
                lines.append(f"| {label[r['model']]} | {r['device']} | {r['median_ms']:.3f} | "
                             f"{c['median_ms']:.2f} | {ratio} |")
            else:
                lines.append(f"| {label[r['model']]} | {r['device']} | {r['median_ms']:.3f} | "
                             f"{c.get('error') or c.get('skipped')} | - |")
    failed = {}  # (model, error) -> devices: a bad file fails the same way on every device
    for r in result["results"]:
        if r["error"]:
            failed.setdefault((r["model"], r["error"]), []).append(r["device"])
    if failed:
        lines += ["", "Failed:", ""]
        lines += [f"- {label[model]} on {', '.join(devices)}: {error}"
                  for (model, error), devices in failed.items()]
    return "\n".join(lines)


def plot(result, path):
    """Median latency against file size, one series per device, as a PNG.

    Returns:
        `path`, or None when matplotlib is not installed or nothing ran.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import io
    from tfcompress.saving import write_bytes_atomic
    rows = [r for r in result["results"] if not r["error"]]
    if not rows:
        return None
    label = _labels(result)
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)  # no pyplot: no global backend state, no display needed
    axes = figure.add_subplot()
    for device in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == device]
        axes.scatter([r["file_bytes"] / 1024 for r in mine], [r["median_ms"] for r in mine],
                     label=device)
        for r in mine:
            axes.annotate(label[r["model"]], (r["file_bytes"] / 1024, r["median_ms"]),
                          fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel("file size (KiB)")
    axes.set_ylabel("median latency (ms)")
    axes.set_title(f"TFLite on {result['environment']['cpu']} (host CPU, not a phone)",
                   fontsize=9)
    # Room on the right and top for the labels of the largest and slowest models.
    axes.set_xlim(0, 1.3 * max(r["file_bytes"] for r in rows) / 1024)
    axes.set_ylim(0, 1.15 * max(r["median_ms"] for r in rows))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_bytes_atomic(path, buffer.getvalue())
    return path
