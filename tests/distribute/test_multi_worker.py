"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1 against one process, same global batch.

The workers are started by the local launcher (`python -m tfcompress.launch
--num_workers=2 -- ...`), which gives each its TF_CONFIG. The student has no
BatchNorm and no dropout, so two workers and one process compute the same steps
and only the all-reduce's float summation order differs (tolerances in
README.md, "Distributed training"). The teacher is a zoo small_cnn (BatchNorm):
it only runs in inference mode, where BatchNorm uses its moving statistics.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfcompress
from tfcompress import config as recipe_config
from tfcompress import pipeline, pruning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (16, 16, 1)
# Measured here (2-core x86, TF 2.21): losses equal to 2.4e-7, weights to 3e-8.
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-5
QAT_LOSS_TOL = 1e-2  # ranges averaged across replicas (see test_strategy.py)


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.normal(0.3, 0.2, (n,) + SHAPE).astype(np.float32)
    for c in range(10):
        x[y == c, c:c + 3, :, 0] += 0.6
    return np.clip(x, 0, 1), y


def _plain_cnn(seed):
    from tfcompress.keras import keras
    keras.utils.set_random_seed(seed)
    i = keras.Input(SHAPE)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv1")(i)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(16, activation="relu", name="fc")(h)
    o = keras.layers.Dense(10, activation="softmax", name="classifier")(h)
    return keras.Model(i, o, name="plain_cnn")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import models
    from tfcompress.keras import keras
    d = tmp_path_factory.mktemp("mw")
    x, y = _data(256, 0)
    xt, yt = _data(64, 1)
    np.savez(d / "data.npz", x=x, y=y, x_test=xt, y_test=yt)
    keras.utils.set_random_seed(0)
    tfcompress.save_model(models.get_model("small_cnn", SHAPE, 10, width=4), d / "teacher.keras")
    tfcompress.save_model(_plain_cnn(1), d / "plain.keras")
    return d


def _write_recipe(d, name, teacher, stages, export="[float32]"):
    path = d / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nseed: 0\n"
        f"data: {{dataset: 'npz:{d}/data.npz', calibration_samples: 16, eval_samples: 32}}\n"
        f"teacher: {{path: {d}/{teacher}}}\nstudent: {{path: {d}/plain.keras}}\n"
        f"stages:\n" + "".join(f"  - {s}\n" for s in stages) +
        f"export: {{modes: {export}}}\nbenchmark: {{devices: []}}\n")
    return path


def _launch_workers(command, tmp, timeout=900):
    """Runs `command` as 2 workers through the launcher; worker temp dirs go under tmp."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp))
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "tfcompress.launch", "--num_workers=2", "--",
                           *command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _pipeline_both_ways(files, name, teacher, stages, export="[float32]"):
    recipe_path = _write_recipe(files, name, teacher, stages, export)
    out_mw, tmp = files / f"{name}-mw", files / f"{name}-tmp"
    tmp.mkdir()
    proc = _launch_workers([sys.executable, "-m", "tfcompress.cli", "run", "--recipe",
                            str(recipe_path), "--out", str(out_mw), "--set",
                            "strategy=multi_worker"], tmp)
    out_one = files / f"{name}-one"
    pipeline.run(recipe_config.load_recipe(str(recipe_path)), str(out_one), log=lambda line: None,
                 verbose=0)
    return {"proc": proc, "mw": out_mw, "one": out_one, "tmp": tmp}


def _metrics(out, stage):
    return json.loads((out / stage / "metrics.json").read_text())


def _weights(path):
    return tfcompress.load_model(path, compile=False).get_weights()


@pytest.fixture(scope="module")
def distill_prune(files):
    return _pipeline_both_ways(files, "distill_prune", "teacher.keras", [
        "distill: {epochs: 1, batch_size: 32, temperature: 4.0, alpha: 0.5}",
        "prune: {epochs: 2, batch_size: 32, sparsity: 0.5, skip_first_and_last: false}"])


def test_two_workers_finish_and_only_the_chief_writes(distill_prune):
    proc, out = distill_prune["proc"], distill_prune["mw"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all 2 workers finished" in proc.stdout
    assert "[worker 0] pipeline finished" in proc.stdout
    assert "[worker 1] pipeline finished" in proc.stdout and "on worker 1 of 2" in proc.stdout
    assert "batch_size 32 is the global batch = 16 per replica x 2" in proc.stdout
    for stage in ("00-input", "01-distill", "02-prune"):
        assert (out / stage / "model.keras").is_file() and (out / stage / "manifest.json").is_file()
        assert (out / stage / "tflite" / f"{stage}_float32.tflite").is_file()  # the chief's export
        assert not (out / stage / "backup").exists()
    assert json.loads((out / "report.json").read_text())["variants"]
    # Worker 1 wrote into a throwaway folder, named in its log and removed at its exit.
    line = next(line for line in proc.stdout.splitlines()
                if line.startswith("[worker 1]") and "this worker writes to" in line)
    throwaway = line.rsplit(" ", 1)[-1]
    assert throwaway.startswith(str(distill_prune["tmp"])) and not os.path.exists(throwaway)
    assert _metrics(out, "02-prune")["strategy"] == "multi_worker"
    assert _metrics(out, "02-prune")["replicas"] == 2


def test_multi_worker_sparsity_equals_the_single_process_run(distill_prune):
    mw, one = distill_prune["mw"], distill_prune["one"]
    assert distill_prune["proc"].returncode == 0
    assert _metrics(mw, "02-prune")["sparsity"] == _metrics(one, "02-prune")["sparsity"]
    for out in (mw, one):
        model = tfcompress.load_model(out / "02-prune" / "model.keras", compile=False)
        assert abs(pruning.sparsity_report(model)["total"]["sparsity"] - 0.5) < 0.01


def test_multi_worker_loss_curves_match_the_single_process_run(distill_prune):
    mw, one = distill_prune["mw"], distill_prune["one"]
    assert distill_prune["proc"].returncode == 0
    for stage, keys in (("01-distill", ("loss", "student_loss", "distillation_loss")),
                        ("02-prune", ("loss", "accuracy"))):
        h_mw, h_one = _metrics(mw, stage)["history"], _metrics(one, stage)["history"]
        for key in keys:
            assert len(h_mw[key]) == len(h_one[key])
            np.testing.assert_allclose(h_mw[key], h_one[key], rtol=0, atol=LOSS_TOL,
                                       err_msg=f"{stage} {key}")
    for stage in ("01-distill", "02-prune"):
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
            _weights(mw / stage / "model.keras"), _weights(one / stage / "model.keras")))
        assert diff < WEIGHT_TOL, stage


# ----------------------------------------------------------------------------- slow

@pytest.mark.slow
def test_every_other_stage_under_multi_worker_matches_the_single_process_run(files):
    # train (fine-tunes the plain teacher file), channel_prune (Taylor, distilling),
    # lowrank, cluster, qat (distilling): the multi_worker cells not covered above.
    run = _pipeline_both_ways(files, "chain", "plain.keras", [
        "train: {epochs: 1, batch_size: 32}",
        "channel_prune: {epochs: 1, batch_size: 32, ratio: 0.5, criterion: taylor, "
        "distill: true}",
        "lowrank: {epochs: 1, batch_size: 32, energy: 0.8}",
        "cluster: {epochs: 1, batch_size: 32, clusters: 8, preserve_sparsity: false}",
        "qat: {epochs: 1, batch_size: 32, scheme: default, distill: true}"],
        export="[int8_full]")
    proc = run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = ["01-train", "02-channel_prune", "03-lowrank", "04-cluster", "05-qat"]
    for stage in stages:
        m_mw, m_one = _metrics(run["mw"], stage), _metrics(run["one"], stage)
        assert m_mw["replicas"] == 2
        tol = QAT_LOSS_TOL if stage == "05-qat" else LOSS_TOL
        np.testing.assert_allclose(m_mw["history"]["loss"], m_one["history"]["loss"], rtol=0,
                                   atol=tol, err_msg=stage)
        assert (run["mw"] / stage / "tflite" / f"{stage}_int8_full.tflite").is_file()
    assert _metrics(run["mw"], "04-cluster")["max_unique_values"] <= 8
    assert _metrics(run["mw"], "02-channel_prune")["macs_after"] == \
        _metrics(run["one"], "02-channel_prune")["macs_after"]


@pytest.mark.slow
def test_multi_worker_training_binary_resumes_after_a_kill(files, tmp_path):
    """The chief's BackupAndRestore checkpoint resumes both workers; the result equals a
    single process's uninterrupted run."""
    from models.train_lib import TrainConfig, train
    x, y = _data(2048, 2)
    xt, yt = _data(64, 3)
    np.savez(tmp_path / "big.npz", x=x, y=y, x_test=xt, y_test=yt)
    flags = [f"--dataset=npz:{tmp_path}/big.npz", f"--init_model={files}/plain.keras",
             "--epochs=4", "--batch_size=32", "--seed=0"]
    model_dir = tmp_path / "mw"
    command = [sys.executable, "-m", "tfcompress.launch", "--num_workers=2", "--",
               sys.executable, "-m", "models.train", *flags, "--strategy=multi_worker",
               f"--model_dir={model_dir}"]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp_path))
    env.pop("TF_CONFIG", None)
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = model_dir / "01-train" / "backup" / "chief" / "checkpoint"
    deadline = time.time() + 600
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # launcher and workers at once: a crash
    first.wait()
    assert checkpoint.exists(), "no epoch finished before the deadline"
    assert not (model_dir / "model.keras").exists(), "finished before it could be killed"
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_run_this_time"] < 4  # it resumed, it did not start over
    one = train(TrainConfig(dataset=f"npz:{tmp_path}/big.npz", init_model=f"{files}/plain.keras",
                            epochs=4, batch_size=32, seed=0, model_dir=str(tmp_path / "one"),
                            verbose=0))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
        _weights(model_dir / "model.keras"), one.model.get_weights()))
    assert diff < WEIGHT_TOL


_PARAMETER_SERVER_SCRIPT = r"""
import json, socket
from tfcompress.keras import keras, tf
import numpy as np
from tfcompress import pruning, resume

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

spec = tf.train.ClusterSpec({"worker": [f"127.0.0.1:{port()}" for _ in range(2)],
                             "ps": [f"127.0.0.1:{port()}"]})
config = tf.compat.v1.ConfigProto()
config.inter_op_parallelism_threads = 8  # in-process servers deadlock with fewer here
servers = [tf.distribute.Server(spec, job_name="worker", task_index=i, config=config,
                                protocol="grpc", start=True) for i in range(2)]
servers.append(tf.distribute.Server(spec, job_name="ps", task_index=0, protocol="grpc",
                                    start=True))
strategy = tf.distribute.experimental.ParameterServerStrategy(
    tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc"))
rng = np.random.default_rng(0)
x = rng.normal(0, 1, (256, 8, 8, 1)).astype(np.float32)
y = rng.integers(0, 10, 256)

def model():
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, name="conv")(i)
    o = keras.layers.Dense(10, activation="softmax", name="dense")(keras.layers.Flatten()(h))
    return keras.Model(i, o)

def dataset(context):
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)

with strategy.scope():
    pruned = pruning.prune(model(), pruning.PruningConfig(0.5, skip_first_and_last=False),
                           steps_per_epoch=8, total_epochs=8)
    pruned.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
pruned.fit(keras.utils.experimental.DatasetCreator(dataset), epochs=8, steps_per_epoch=8,
           callbacks=pruning.pruning_callbacks(), verbose=0)
result = {"iterations": int(pruned.optimizer.iterations.numpy()),
          "steps": [int(l.pruning_step.numpy()) for l in pruning._wrappers(pruned)],
          "sparsity": pruning.sparsity_report(pruning.strip_pruning(pruned))["total"]["sparsity"]}
with strategy.scope():
    plain = model()
    plain.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
try:
    plain.fit(resume.EpochBatches(x, y, 32), epochs=1, steps_per_epoch=8, verbose=0)
    result["sequence"] = "accepted"
except NotImplementedError as e:
    result["sequence"] = str(e)
print("RESULT " + json.dumps(result), flush=True)
import os; os._exit(0)  # the in-process servers never stop by themselves
"""


@pytest.mark.slow
def test_parameter_server_evidence_for_the_support_matrix():
    """Why parameter_server fails with a message for every stage (re-check on upgrades)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", _PARAMETER_SERVER_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    # TFMOT's pruning under ParameterServerStrategy: two workers increment the layers'
    # step counters with unsynchronized read-modify-writes, updates are lost and the
    # schedule falls behind the optimizer (measured: 15-21 of 24 steps; one run of the
    # zoo small_cnn ended at 0% sparsity instead of 50%, another tiny model at 50%).
    print(result)
    assert result["iterations"] == 64
    assert min(result["steps"]) < 64
    # Keras's fit under ParameterServerStrategy refuses the Sequence tfcompress trains from.
    assert "Only `tf.keras.utils.experimental.DatasetCreator`" in result["sequence"]
