"""tflite_export.benchmark: per-process timing, memory, sizes, ratios, profiles and failures."""

import gzip
import json
import os
import statistics
import sys

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

import models
from tfcompress.errors import TfcompressError
from tfcompress.keras import keras
from tflite_export import benchmark, child_process
from tflite_export.convert import convert

FAST = dict(runs=20, min_seconds=0.0, warmup=2, log=None)
TIMING_KEYS = ("min_ms", "median_ms", "mean_ms", "p90_ms", "p99_ms", "max_ms", "std_ms")
ROW_KEYS = ("model", "device", "error", "file_bytes", "gzip_bytes", "threads", "delegate", "cpus",
            "inputs", "load_ms", "first_inference_ms", "warmup_runs", "runs", "seconds",
            "rss_before_load_mb", "rss_after_load_mb", "load_rss_growth_mb",
            "rss_after_first_inference_mb", "rss_after_runs_mb", "peak_rss_mb") + TIMING_KEYS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """float32 and int8_full of a tiny zoo model, and broken files beside them."""
    root = tmp_path_factory.mktemp("bench")
    keras.utils.set_random_seed(0)
    model = models.get_model("small_cnn", (12, 12, 1), 3, width=4)
    calib = np.random.default_rng(0).uniform(0, 1, (20, 12, 12, 1)).astype(np.float32)
    paths = {}
    for mode in ("float32", "int8_full"):
        paths[mode] = str(root / f"m_{mode}.tflite")
        with open(paths[mode], "wb") as f:
            f.write(convert(model, mode, representative_data=calib))
    data = open(paths["float32"], "rb").read()
    paths["truncated"] = str(root / "truncated.tflite")
    open(paths["truncated"], "wb").write(data[:len(data) // 3])
    paths["random"] = str(root / "random.tflite")
    open(paths["random"], "wb").write(np.random.default_rng(1).bytes(4000))
    # A valid flatbuffer whose first op is an unknown custom op: the interpreter refuses it.
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    code = m.operatorCodes[0]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = b"NoSuchOp"
    builder = flatbuffers.Builder(0)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    paths["custom_op"] = str(root / "custom_op.tflite")
    open(paths["custom_op"], "wb").write(builder.Output())
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def two_models(files):
    return benchmark.benchmark_models([files["float32"], files["int8_full"]], devices=["host-1t"],
                                      **FAST)


def test_two_models_json_has_every_field(files, two_models):
    result = json.loads(json.dumps(two_models, allow_nan=False))  # strict JSON round trip
    assert result["schema"] == benchmark.SCHEMA and result["failures"] == 0
    env = result["environment"]
    assert "phone" in env["note"] and env["ai_edge_litert"] and env["logical_cpus"] >= 1
    assert len(env["load_average"]) == len(env["load_average_end"]) == 3
    assert result["settings"]["baseline"] == files["float32"]
    assert [(r["model"], r["device"]) for r in result["results"]] == [
        (files["float32"], "host-1t"), (files["int8_full"], "host-1t")]
    first_cpu = benchmark.usable_cpus()[0]
    for row, dtype in zip(result["results"], ("float32", "int8")):
        assert set(ROW_KEYS) <= set(row) and row["error"] is None
        assert all(row[k] is not None for k in ROW_KEYS if k != "error"), row
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["min_ms"] <= row["mean_ms"] <= row["max_ms"] and row["std_ms"] >= 0
        assert row["min_ms"] > 0 and row["runs"] >= 20 and row["warmup_runs"] == 2
        data = open(row["model"], "rb").read()
        assert row["file_bytes"] == os.path.getsize(row["model"]) == len(data)
        assert row["gzip_bytes"] == len(gzip.compress(data, compresslevel=9, mtime=0))
        assert row["threads"] == 1 and row["delegate"] == "xnnpack" and row["cpus"] == [first_cpu]
        assert row["inputs"] == [{"name": row["inputs"][0]["name"], "shape": [1, 12, 12, 1],
                                  "dtype": dtype, "quantized": dtype == "int8"}]
        assert row["peak_rss_mb"] >= max(row["rss_after_load_mb"], row["rss_after_runs_mb"])
        assert row["load_rss_growth_mb"] == pytest.approx(
            row["rss_after_load_mb"] - row["rss_before_load_mb"])
        # The child must not load TensorFlow (~500 MB): its memory is the model's plus LiteRT's.
        assert row["rss_before_load_mb"] < 150 and row["peak_rss_mb"] < 200
    f32, i8 = result["results"]
    assert result["ratios"] == [{
        "model": files["int8_full"], "baseline": files["float32"], "device": "host-1t",
        "speedup": f32["median_ms"] / i8["median_ms"],
        "latency_ratio": i8["median_ms"] / f32["median_ms"],
        "size_ratio": i8["file_bytes"] / f32["file_bytes"],
        "gzip_size_ratio": i8["gzip_bytes"] / f32["gzip_bytes"],
        "peak_rss_ratio": i8["peak_rss_mb"] / f32["peak_rss_mb"]}]


def test_markdown_and_plot(files, two_models, tmp_path):
    md = benchmark.format_markdown(two_models)
    assert benchmark.PHONE_NOTE in md
    f32, i8 = two_models["results"]
    assert f"| m_float32.tflite | host-1t | {f32['file_bytes']:,} |" in md
    assert f"| m_int8_full.tflite | host-1t | {two_models['ratios'][0]['speedup']:.2f}x |" in md
    assert f"{i8['median_ms']:.3f}" in md and "Failed" not in md
    busy = json.loads(json.dumps(two_models))
    cpus = len(busy["environment"]["usable_cpus"])
    busy["environment"].update(load_average=[0.1, 0, 0], load_average_end=[cpus + 0.5, 0, 0])
    assert f"Warning: the machine was busy (load average up to {cpus + 0.5}" in \
        benchmark.format_markdown(busy)
    busy["environment"].update(load_average_end=[cpus - 0.5, 0, 0])
    assert "Warning" not in benchmark.format_markdown(busy)
    out = benchmark.plot(two_models, tmp_path / "plot.png")
    assert out == tmp_path / "plot.png"
    png = (tmp_path / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_corrupt_files_fail_alone(files):
    paths = [files["float32"], files["truncated"], files["random"], files["custom_op"],
             str(files["root"] / "missing.tflite"), files["int8_full"]]
    result = benchmark.benchmark_models(paths, devices=["host-1t"], **FAST)
    rows = {r["model"]: r for r in result["results"]}
    assert rows[files["float32"]]["error"] is None and rows[files["int8_full"]]["error"] is None
    assert rows[files["int8_full"]]["median_ms"] > 0
    expected = {"truncated": "truncated", "random": "not a TFLite flatbuffer",
                "custom_op": "NoSuchOp", "missing": "no such file"}
    for key, words in expected.items():
        path = files.get(key, str(files["root"] / "missing.tflite"))
        error = rows[path]["error"]
        assert words in error and "\n" not in error and len(error) <= 400, error
    assert rows[files["truncated"]]["file_bytes"] == os.path.getsize(files["truncated"])
    assert result["failures"] == 4
    assert [q["model"] for q in result["ratios"]] == [files["int8_full"]]
    md = benchmark.format_markdown(result)
    assert "Failed:" in md and "missing.tflite on host-1t: " in md


def test_baseline_outside_paths_runs_first(files):
    spelled = os.path.join(os.path.dirname(files["float32"]), ".", "m_float32.tflite")
    result = benchmark.benchmark_models([files["int8_full"]], baseline=spelled, **FAST)
    assert [r["model"] for r in result["results"]] == [spelled, files["int8_full"]]
    assert result["ratios"][0]["baseline"] == spelled
    result = benchmark.benchmark_models([files["float32"], files["int8_full"]], baseline=spelled,
                                        **FAST)
    assert [r["model"] for r in result["results"]] == [files["float32"], files["int8_full"]]
    assert result["settings"]["baseline"] == files["float32"]


def test_crash_timeout_and_exit_status_become_errors():
    out, error = child_process.run([sys.executable, "-c", "import os; os.abort()"], 30)
    assert out is None and "crashed (SIGABRT)" in error
    out, error = child_process.run([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert out is None and "timed out after 0.5 s" in error
    out, error = child_process.run(
        [sys.executable, "-c", "import sys; print('x\\nboom', file=sys.stderr); sys.exit(3)"], 30)
    assert out is None and error == "the process exited with status 3: boom"
    out, error = child_process.run([sys.executable, "-c", "print('fine')"], 30)
    assert out == "fine\n" and error is None


def test_min_seconds_and_max_seconds(files):
    longer = benchmark.benchmark_models([files["float32"]], runs=1, min_seconds=0.3, warmup=0,
                                        log=None)["results"][0]
    assert longer["runs"] > 1 and longer["seconds"] >= 0.3
    capped = benchmark.benchmark_models([files["float32"]], runs=10**9, min_seconds=0.0,
                                        max_seconds=0.2, warmup=0, log=None)["results"][0]
    assert capped["error"] is None and 1 < capped["runs"] < 10**9
    assert 0.2 <= capped["seconds"] < 2.0


def test_random_inputs_are_seeded_and_quantized():
    details = [
        {"name": "f", "dtype": np.float32, "shape": np.array([1, 50, 40]),
         "quantization": (0.0, 0)},
        {"name": "q", "dtype": np.int8, "shape": np.array([1, 4000]), "quantization": (0.05, -10)},
        {"name": "u", "dtype": np.uint8, "shape": np.array([1, 4000]), "quantization": (0.1, 128)},
        {"name": "ids", "dtype": np.int32, "shape": np.array([1, 500]), "quantization": (0.0, 0)},
        {"name": "b", "dtype": np.bool_, "shape": np.array([7]), "quantization": (0.0, 0)},
    ]
    a, b, c = (benchmark.random_inputs(details, seed) for seed in (0, 0, 1))
    for x, y, z, d in zip(a, b, c, details):
        assert x.dtype == np.dtype(d["dtype"]) and x.shape == tuple(d["shape"])
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)
    f, q, u, ids, _ = a
    assert -1 <= f.min() < -0.9 and 0.9 < f.max() <= 1
    assert (q.min(), q.max()) == (-128, 127) and (u.min(), u.max()) == (0, 255)
    assert 0 <= ids.min() and ids.max() <= 127
    with pytest.raises(benchmark.BenchmarkError, match="dtype str"):
        benchmark.random_inputs([{"name": "s", "dtype": np.str_, "shape": np.array([1]),
                                  "quantization": (0.0, 0)}])


def test_latency_stats():
    times = list(range(1, 101))
    stats = benchmark.latency_stats(times)
    assert stats == pytest.approx({"min_ms": 1, "median_ms": 50.5, "mean_ms": 50.5,
                                   "p90_ms": 90.1, "p99_ms": 99.01, "max_ms": 100,
                                   "std_ms": statistics.stdev(times)})
    assert benchmark.latency_stats([2.5])["std_ms"] == 0.0
    with pytest.raises(benchmark.BenchmarkError):
        benchmark.latency_stats([])


def test_builtin_profiles():
    profiles = benchmark.load_profiles()
    expected = {"host-1t": (1, 1, "xnnpack"), "host-2t": (2, 2, "xnnpack"),
                "host-1t-reference": (1, 1, "none")}
    for name, (threads, affinity, delegate) in expected.items():
        p = profiles[name]
        assert (p.threads, p.affinity, p.delegate) == (threads, affinity, delegate)
        assert "this host" in p.description
    listing = benchmark.format_profiles(profiles)
    assert all(name in listing for name in expected) and benchmark.PHONE_NOTE in listing


def test_user_profiles(tmp_path):
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({
        "mine": {"threads": 3, "affinity": [0], "delegate": "none", "description": " my  box "},
        "host-2t": {"threads": 2, "affinity": None, "delegate": "xnnpack",
                    "description": "unpinned"}}))
    profiles = benchmark.load_profiles(path)
    assert list(profiles)[:3] == ["host-1t", "host-2t", "host-1t-reference"]
    mine = profiles["mine"]
    assert (mine.threads, mine.affinity, mine.delegate, mine.description, mine.source) == (
        3, (0,), "none", "my box", str(path))
    assert profiles["host-2t"].affinity is None and profiles["host-2t"].cpus() is None
    bad = {
        "not json": ("{", "not valid JSON"),
        "list": ("[]", "expected a JSON object"),
        "unknown key": ({"x": {"threads": 1, "delegate": "none", "description": "d",
                               "cores": 2}}, "unknown keys ['cores']"),
        "missing key": ({"x": {"threads": 1, "description": "d"}}, "missing keys ['delegate']"),
        "threads": ({"x": {"threads": 0, "delegate": "none", "description": "d"}}, "threads"),
        "delegate": ({"x": {"threads": 1, "delegate": "gpu", "description": "d"}},
                     "delegate must be one of xnnpack, none"),
        "affinity": ({"x": {"threads": 1, "affinity": [], "delegate": "none",
                            "description": "d"}}, "affinity"),
        "description": ({"x": {"threads": 1, "delegate": "none", "description": " "}},
                        "description"),
        "name": ({"a b": {"threads": 1, "delegate": "none", "description": "d"}}, "device name"),
    }
    for case, (content, words) in bad.items():
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(benchmark.BenchmarkError, match=words.replace("[", r"\[")) as info:
            benchmark.load_profiles(path)
        assert isinstance(info.value, (TfcompressError, ValueError)), case
    with pytest.raises(benchmark.BenchmarkError, match="no-such.json: cannot read"):
        benchmark.load_profiles(tmp_path / "no-such.json")


def test_cpu_pinning_is_checked_and_applied(files):
    usable = benchmark.usable_cpus()
    too_many = benchmark.DeviceProfile("big", 1, len(usable) + 1, "xnnpack", "d")
    with pytest.raises(benchmark.BenchmarkError, match="pins .* CPUs but this process may use"):
        too_many.cpus()
    absent = benchmark.DeviceProfile("absent", 1, (max(usable) + 1,), "xnnpack", "d")
    with pytest.raises(benchmark.BenchmarkError, match="not available here"):
        absent.cpus()
    with pytest.raises(benchmark.BenchmarkError, match="not available here"):
        benchmark.benchmark_models([files["float32"]], devices=["absent"],
                                   profiles={"absent": absent}, **FAST)
    last = benchmark.DeviceProfile("last", 1, (usable[-1],), "none", "the last CPU, no XNNPACK")
    row = benchmark.benchmark_models([files["int8_full"]], devices=["last"],
                                     profiles={"last": last}, **FAST)["results"][0]
    assert row["error"] is None and row["cpus"] == [usable[-1]] and row["delegate"] == "none"


def test_bad_settings(files):
    good = [files["float32"]]
    cases = [
        (dict(paths=files["float32"]), "not one path"),
        (dict(paths=[]), "no .tflite files"),
        (dict(devices=[]), "no devices"),
        (dict(devices="host-1t"), "list of names"),
        (dict(devices=["host-9t"]), "unknown device.*host-9t.*host-1t"),
        (dict(runs=0), "runs must be an integer >= 1"),
        (dict(warmup=-1), "warmup"),
        (dict(min_seconds=-1.0), "min_seconds"),
        (dict(timeout_s=0), "timeout_s"),
    ]
    for overrides, words in cases:
        kwargs = dict(paths=good, log=None)
        kwargs.update(overrides)
        with pytest.raises(benchmark.BenchmarkError, match=words):
            benchmark.benchmark_models(**kwargs)


def test_crosscheck_with_litert_benchmark(files):
    result = benchmark.benchmark_models([files["float32"]],
                                        devices=["host-1t", "host-1t-reference"],
                                        crosscheck=True, **FAST)
    ours, reference = result["results"]
    check = ours["crosscheck"]
    assert "error" not in check, check
    assert check["tool"] == "litert-benchmark" and "--num_threads 1" in check["command"]
    assert check["runs"] == ours["runs"] and check["median_ms"] >= 0
    if check["median_ms"] > 0:  # it rounds to 0.01 ms: a tiny model may read 0.00
        assert check["median_ratio"] == pytest.approx(ours["median_ms"] / check["median_ms"])
    assert "always runs XNNPACK" in reference["crosscheck"]["skipped"]
    assert result["failures"] == 0
    assert "Cross-check with litert-benchmark" in benchmark.format_markdown(result)
