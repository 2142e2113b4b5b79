"""Many models in one command: the calling process's memory stays flat.

50 distinct small `.tflite` files (5 widths x 10 seeded weight variants, 1-3 MB
each, mostly one dense kernel) go through `tfcompress bench` and through
`evaluate_tflite` in one process. The memory of the process that runs them is
read from /proc/<pid>/status (VmRSS now, VmHWM peak) after 10, 25 and 50
models, in a fresh process so that pytest's own TensorFlow does not blur it.

Bounds, and what they guard against: keeping each interpreter alive (or a
result holding its arrays) grew VmRSS by ~6 MB a model here (310 MB after 50),
so the peak may grow at most GROWTH_BOUND_MB between 10 and 50 models.

Measured here (2-core shared host; MB, VmHWM peak after 10 / 25 / 50 models):
    evaluate_tflite, one process        60.0 / 60.0 / 60.0  (VmRSS 57.5 / 58.5 / 51.6)
    evaluate's probe process (VmRSS)    56.5 / 56.5 / 55.5
    tfcompress bench, 50 files          48.3 / 48.4 / 48.5  (each model in a child)
    benchmark_models, library           48.0 / 48.1 (10 / 25 models)
Reproduce: pytest -s -p no:cacheprovider --import-mode=importlib
tests/reliability/test_load.py (prints the figures; `-m slow` runs 150 models).
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GROWTH_BOUND_MB = 25.0
CHECKPOINTS = (10, 25, 50)


def _make_models(folder, variants):
    """5 widths x `variants` distinct float32 files (weights scaled by seeded noise)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from tfcompress.keras import keras
    from tflite_export.convert import convert
    paths = []
    for width in (128, 192, 256, 320, 384):
        keras.utils.set_random_seed(width)
        model = keras.Sequential([
            keras.Input((16, 16, 8)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10, activation="softmax")])
        data = convert(model, "float32")
        for variant in range(variants):
            parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
            rng = np.random.default_rng([width, variant])
            for buf in parsed.buffers:
                if buf.data is not None and len(buf.data) >= 4096:
                    weights = np.asarray(buf.data, np.uint8).view(np.float32)
                    noise = rng.uniform(0.9, 1.1, weights.shape).astype(np.float32)
                    buf.data = (weights * noise).view(np.uint8)
            builder = flatbuffers.Builder(1 << 20)
            builder.Finish(parsed.Pack(builder), file_identifier=b"TFL3")
            path = os.path.join(folder, f"w{width}_v{variant:02d}.tflite")
            with open(path, "wb") as f:
                f.write(builder.Output())
            paths.append(path)
    # Interleave the widths: every checkpoint has seen files of every size.
    return sorted(paths, key=lambda p: (p.rsplit("_v", 1)[1], p))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    paths = _make_models(str(folder), 10)
    assert len({open(p, "rb").read() for p in paths}) == 50  # all distinct: no cache hits
    return paths


def _status(pid="self"):
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(line.split()[1]) / 1024
    return round(values["VmRSS"], 1), round(values["VmHWM"], 1)


# Runs in a fresh process: evaluate or benchmark the files, memory at each checkpoint.
_DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np

def status(pid="self"):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                values[key] = round(int(line.split()[1]) / 1024, 1)
    return values["VmRSS"], values["VmHWM"]

what, files, checkpoints = sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
memory = {}
if what == "evaluate":
    from tflite_export import tflite_file
    from tflite_export.evaluate import evaluate_tflite
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 8)).astype(np.float32)
    for done, path in enumerate(files, 1):
        result = evaluate_tflite(path, x, np.arange(4), progress=False)
        assert result["samples"] == 4
        if done in checkpoints:
            probe = status(tflite_file._probe_process.proc.pid)[0]
            memory[done] = status() + (probe,)
else:
    from tflite_export.benchmark import benchmark_models
    done = []
    def log(line):
        done.append(line)
        if len(done) in checkpoints:
            memory[len(done)] = status()
    result = benchmark_models(files, runs=1, min_seconds=0, warmup=0, log=log)
    assert result["failures"] == 0, result["results"]
print(json.dumps(memory))
"""


def _driver(what, files, checkpoints):
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, ROOT, what, json.dumps(files), json.dumps(checkpoints)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return {int(k): v for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


def _assert_flat(memory, what):
    first, last = min(memory), max(memory)
    growth = memory[last][1] - memory[first][1]
    print(f"{what}: MB (VmRSS, VmHWM[, probe VmRSS]) after N models: {json.dumps(memory)}; "
          f"peak growth {growth:.1f} MB from {first} to {last} models")
    assert growth < GROWTH_BOUND_MB, (what, memory)
    return growth


def test_evaluate_many_models_in_one_process(models):
    memory = _driver("evaluate", models, CHECKPOINTS)
    assert sorted(memory) == list(CHECKPOINTS)
    _assert_flat(memory, "evaluate_tflite")
    # The probe process (one for all 50 models) stays flat too.
    assert memory[50][2] - memory[10][2] < GROWTH_BOUND_MB


def test_cli_bench_50_files(models, tmp_path):
    # The console command, watched from outside: its memory as each model finishes.
    # It is a thin wrapper of benchmark_models (a child process per model, 0.6-1.4 s
    # each here), so this is also the library's figure; the library is called
    # directly in the slow test.
    out = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfcompress.cli", "bench", *models, "--runs", "1",
         "--min_seconds", "0", "--warmup", "0", "--json", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = {}
    for line in proc.stderr:  # one "[k/50] file on device: ..." line per model
        if line.startswith("["):
            done = int(line[1:].split("/")[0])
            if done in CHECKPOINTS:
                memory[done] = _status(proc.pid)
    stdout = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, stdout[-2000:]
    assert sorted(memory) == list(CHECKPOINTS)
    _assert_flat(memory, "tfcompress bench")
    result = json.loads(out.read_text())
    assert len(result["results"]) == 50 and result["failures"] == 0
    assert len(glob.glob(str(tmp_path / "*"))) == 1  # only the JSON: no leftovers


@pytest.mark.slow
def test_evaluate_and_benchmark_150_models(tmp_path):
    # ~3 min here: 150 benchmark child processes.
    paths = _make_models(str(tmp_path), 30)
    assert len(paths) == 150
    for what in ("evaluate", "benchmark"):
        memory = _driver(what, paths, (10, 25, 50, 100, 150))
        assert sorted(memory) == [10, 25, 50, 100, 150]
        _assert_flat(memory, f"{what} (150 models)")
