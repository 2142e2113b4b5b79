"""SIGKILL at random points: nothing half-written is left, and a rerun ends where an
uninterrupted run ends.

Three kinds of work, each as a user runs it, in its own process group:
- a training binary run (`python -m models.train`: dense phase, then pruning),
- a pipeline run (`tfcompress run`: train, distill, prune+distill; export, evaluate),
- an export (`tfcompress export` in three modes).

Each kind runs once uninterrupted (the reference, timed as T). Then per trial it
is killed (see `_kill_point`: mid-training right after a backup checkpoint
appears, or at a seeded random time in [0.15 T, 0.9 T]), checked for
half-written files, rerun to completion and compared with the reference: model
weights bit for bit, metrics and report rows equal, .tflite files
byte-identical. One trial per kind runs in `make test`; four more with
`make test-all` (slow).
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Trial 0 of each kind runs in `make test`; 1-4 are marked slow (`make test-all`).
TRIALS = [0] + [pytest.param(t, marks=pytest.mark.slow) for t in (1, 2, 3, 4)]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TFCOMPRESS_DEBUG", None)
    return env


def _run(cmd, timeout=900):
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return time.time() - start


def _run_and_kill(cmd, delay, after=None):
    """Starts `cmd` in its own process group and SIGKILLs the group `delay` s after the
    start, or, with `after` (a glob), `delay` s after a file matching it appears.

    Returns True when the kill landed (the command was still running)."""
    import tempfile
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
        try:
            if after:
                while proc.poll() is None and not glob.glob(after, recursive=True):
                    time.sleep(0.02)
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        stderr.seek(0)
        # Finished before the kill: the trial tested nothing; say why it ended.
        assert proc.returncode == 0, f"{cmd} failed before the kill:\n{stderr.read()[-3000:]}"
        return False


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    """A small learnable 4-class problem: class templates plus noise, 12x12x1."""
    rng = np.random.default_rng(0)
    templates = rng.random((4, 12, 12, 1)).astype(np.float32)

    def split(n):
        y = rng.integers(0, 4, n)
        x = np.clip(templates[y] + 0.35 * rng.standard_normal((n, 12, 12, 1)), 0, 1)
        return x.astype(np.float32), y.astype(np.int64)

    x, y = split(640)
    x_test, y_test = split(160)
    path = tmp_path_factory.mktemp("data") / "four.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return str(path)


def _check_nothing_half_written(out_dir):
    """Every file at a final name is whole: models open, JSON parses, .tflite parses."""
    from tflite_export.tflite_file import read_tflite
    checked = 0
    for path in glob.glob(os.path.join(out_dir, "**", "*"), recursive=True):
        name = os.path.basename(path)
        if name.startswith(".") or "/." in path[len(out_dir):] or os.path.isdir(path):
            continue  # temps: never read as results, swept by the next write
        if "/backup" in path or "/logs/" in path:
            continue  # checkpoint shards and TensorBoard events: not results
        if name.endswith(".keras"):
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None, f"{path} is corrupt"
                assert "model.weights.h5" in z.namelist(), f"{path} has no weights"
        elif name.endswith(".json"):
            with open(path) as f:
                json.load(f)
        elif name.endswith(".tflite"):
            read_tflite(path)
        checked += 1
    return checked


def _no_temps_left(out_dir):
    temps = [p for p in glob.glob(os.path.join(out_dir, "**", ".*"), recursive=True)
             if "/backup" not in p and "/logs/" not in p]
    assert not temps, f"temp files left after a finished rerun: {temps}"


def _weights(path):
    import tfcompress
    return tfcompress.load_model(path, compile=False).get_weights()


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y, err_msg=f"{a} and {b} differ")


def _state(out_dir):
    """Where a kill left a run: finished stages/phases, pending stage, backups, files."""
    if not os.path.isdir(out_dir):
        return "nothing written yet"
    done = sorted(os.path.basename(os.path.dirname(p))
                  for p in glob.glob(os.path.join(out_dir, "*", "manifest.json")))
    pending = sorted(os.path.basename(os.path.dirname(p))
                     for p in glob.glob(os.path.join(out_dir, "*", "pending.json")))
    backups = sorted(os.path.relpath(p, out_dir) for p in glob.glob(os.path.join(out_dir, "**",
                     "backup*", "**", "checkpoint"), recursive=True))
    files = sorted(os.path.relpath(p, out_dir) for p in glob.glob(os.path.join(out_dir, "**", "*"),
                   recursive=True) if p.endswith((".keras", ".tflite", "report.json")))
    return f"done={done} pending={pending} backups={backups} files={files}"


def _report_kill(kind, trial, delay, killed, out_dir, after=None):
    # Shown with `pytest -s`: the note reports where the kills landed.
    state = _state(out_dir)
    print(f"\nkill {kind} trial {trial}: {delay:.2f} s after {after or 'the start'}, "
          f"killed={killed}: {state}", flush=True)
    assert killed, f"{kind} finished before the kill at {delay:.1f} s: the trial tested nothing"
    if after and "checkpoint" in after:
        assert "backups=[]" not in state, "the kill was to land mid-training, with a backup"


def _kill_point(reference_seconds, trial, event_globs, latest=0.9):
    """(delay, glob) of a trial. The first len(event_globs) trials kill right after a
    file matching that glob appears (a BackupAndRestore checkpoint: mid-training; a
    first .tflite: between an export's writes); the others at a seeded random time
    in [0.15 T, latest T] of the reference run's T."""
    rng = np.random.default_rng(1000 + trial)
    if trial < len(event_globs):
        # Within the epoch after the first backup: an epoch here takes ~0.1-0.3 s, and
        # the backup is deleted when the stage ends (a kill 0.3 s late once found none).
        return float(rng.uniform(0.0, 0.1)), event_globs[trial]
    return float(rng.uniform(0.15, latest) * reference_seconds), None


def _kill_check_rerun(kind, cmd, out, trial, delay, after=None):
    """Kills `cmd` at the trial's point, checks nothing is half-written, reruns it to the end."""
    killed = _run_and_kill(cmd, delay, after)
    _report_kill(kind, trial, delay, killed, out, after)
    if os.path.isdir(out):
        _check_nothing_half_written(out)
    _run(cmd)
    _no_temps_left(out)


def _assert_same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read(), f"{b} differs from {a} after the rerun"


# ----------------------------------------------------------------------------- train

def _train_cmd(data, out):
    return [sys.executable, "-m", "models.train", "--model=small_cnn", "--model_options=width=4",
            f"--dataset=npz:{data}", "--epochs=3", "--batch_size=32", "--prune_sparsity=0.5",
            "--prune_epochs=3", f"--model_dir={out}"]


@pytest.fixture(scope="module")
def train_reference(npz_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train_ref"))
    seconds = _run(_train_cmd(npz_data, out))
    return out, seconds


def _train_trial(npz_data, train_reference, tmp_path, trial):
    ref, seconds = train_reference
    out = str(tmp_path / "train")
    delay, after = _kill_point(seconds, trial, [
        os.path.join(out, "01-train", "backup", "**", "checkpoint"),
        os.path.join(out, "02-prune", "backup", "**", "checkpoint")])
    _kill_check_rerun("train", _train_cmd(npz_data, out), out, trial, delay, after)
    _assert_same_weights(os.path.join(ref, "model.keras"), os.path.join(out, "model.keras"))
    with open(os.path.join(ref, "metrics.json")) as f:
        expected = json.load(f)
    with open(os.path.join(out, "metrics.json")) as f:
        got = json.load(f)
    for key in ("test_accuracy", "test_loss", "dense_test_accuracy", "sparsity"):
        assert got[key] == expected[key], key


@pytest.mark.parametrize("trial", TRIALS)
def test_training_binary_killed_and_rerun(npz_data, train_reference, tmp_path, trial):
    _train_trial(npz_data, train_reference, tmp_path, trial)


# ----------------------------------------------------------------------------- pipeline

RECIPE = """
name: kill_test
seed: 0
data: {{dataset: "npz:{data}", calibration_samples: 32}}
teacher: {{model: small_cnn, options: {{width: 6}}}}
student: {{model: small_cnn, options: {{width: 4}}}}
stages:
  - train: {{epochs: 2, batch_size: 32}}
  - distill: {{epochs: 3, batch_size: 32}}
  - prune: {{sparsity: 0.5, epochs: 3, batch_size: 32, distill: true}}
export: {{modes: [float32, int8_full]}}
benchmark: {{devices: []}}
"""


def _pipeline_cmd(recipe, out):
    return [sys.executable, "-m", "tfcompress.cli", "run", "--recipe", recipe, "--out", out]


@pytest.fixture(scope="module")
def recipe_file(npz_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "kill_test.yaml"
    path.write_text(RECIPE.format(data=npz_data))
    return str(path)


@pytest.fixture(scope="module")
def pipeline_reference(recipe_file, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pipeline_ref"))
    seconds = _run(_pipeline_cmd(recipe_file, out))
    return out, seconds


def _rows(out):
    """The report's variant rows and stage metrics, less what may differ (paths, times)."""
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    variants = [{k: v for k, v in row.items() if k not in ("file", "latency")}
                for row in report["variants"]]
    stages = [{k: v for k, v in stage.items() if k not in ("seconds", "train_seconds")}
              for stage in report["stages"]]
    return variants, stages


def _pipeline_trial(recipe_file, pipeline_reference, tmp_path, trial):
    ref, seconds = pipeline_reference
    out = str(tmp_path / "pipeline")
    delay, after = _kill_point(seconds, trial, [
        os.path.join(out, "02-distill", "backup", "**", "checkpoint"),
        os.path.join(out, "03-prune", "backup", "**", "checkpoint")])
    _kill_check_rerun("pipeline", _pipeline_cmd(recipe_file, out), out, trial, delay, after)
    for stage in ("01-train", "02-distill", "03-prune"):
        _assert_same_weights(os.path.join(ref, stage, "model.keras"),
                             os.path.join(out, stage, "model.keras"))
        for tflite in sorted(glob.glob(os.path.join(ref, stage, "tflite", "*.tflite"))):
            _assert_same_bytes(tflite, os.path.join(out, stage, "tflite",
                                                    os.path.basename(tflite)))
    assert _rows(out) == _rows(ref)


@pytest.mark.parametrize("trial", TRIALS)
def test_pipeline_killed_and_rerun(recipe_file, pipeline_reference, tmp_path, trial):
    _pipeline_trial(recipe_file, pipeline_reference, tmp_path, trial)


# ----------------------------------------------------------------------------- export

def _export_cmd(model, data, out):
    return [sys.executable, "-m", "tfcompress.cli", "export", model, "--mode", "float32",
            "--mode", "float16", "--mode", "int8_full", "--calibration", f"npz:{data}",
            "--calibration_samples", "32", "--out", out]


@pytest.fixture(scope="module")
def export_reference(npz_data, train_reference, tmp_path_factory):
    model = os.path.join(train_reference[0], "01-train", "model.keras")  # the dense phase
    out = str(tmp_path_factory.mktemp("export_ref"))
    seconds = _run(_export_cmd(model, npz_data, out))
    return model, out, seconds


def _export_trial(npz_data, export_reference, tmp_path, trial):
    model, ref, seconds = export_reference
    out = str(tmp_path / "export")
    # Conversion takes most of T and the writes come last: kill early enough.
    delay, after = _kill_point(seconds, trial, [os.path.join(out, "*.tflite")], latest=0.6)
    delay = 0.0 if after else delay  # the writes follow each other within milliseconds
    _kill_check_rerun("export", _export_cmd(model, npz_data, out), out, trial, delay, after)
    names = sorted(os.listdir(ref))
    assert names == sorted(os.listdir(out))
    for name in names:
        _assert_same_bytes(os.path.join(ref, name), os.path.join(out, name))


@pytest.mark.parametrize("trial", TRIALS)
def test_export_killed_and_rerun(npz_data, export_reference, tmp_path, trial):
    _export_trial(npz_data, export_reference, tmp_path, trial)
