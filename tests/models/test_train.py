import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfcompress
from models.train_lib import TrainConfig, train
from tfcompress.keras import keras

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _binary(*flags, **kwargs):
    return subprocess.run([sys.executable, "-m", "models.train", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture()
def tiny_npz(tmp_path):
    # Two separable classes: the class decides the mean brightness.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = (rng.uniform(0, 0.5, (300, 8, 8)) + 0.5 * y[:, None, None]).astype(np.float32)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x[:240], y=y[:240], x_test=x[240:], y_test=y[240:])
    return str(path)


def test_binary_end_to_end_on_fashion_mnist_subset(tmp_path, fashion_mnist):
    model_dir = tmp_path / "run"
    result = _binary("--model=small_cnn", "--model_options=width=8", "--dataset=fashion_mnist",
                     "--epochs=2", "--max_train_samples=2048", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy:" in result.stdout
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["train_samples"] == 2048 and metrics["test_samples"] == 10000
    assert metrics["epochs"] == 2 and metrics["parameters"] > 0 and metrics["wall_time_s"] > 0
    # Two epochs on 2k images are far better than chance (10%).
    assert metrics["test_accuracy"] > 0.5
    # The saved model reproduces the reported accuracy.
    model = tfcompress.load_model(model_dir / "model.keras")
    pred = model.predict(fashion_mnist.x_test, batch_size=512, verbose=0).argmax(1)
    assert abs(np.mean(pred == fashion_mnist.y_test) - metrics["test_accuracy"]) < 1e-6
    assert os.listdir(model_dir / "logs")  # TensorBoard event files
    assert not (model_dir / "01-train" / "backup").exists()  # removed after a finished run


def test_interrupted_training_resumes_from_backup(tmp_path, tiny_npz):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated interruption")

    config = TrainConfig(model="small_cnn", model_options=dict(width=2), dataset=f"npz:{tiny_npz}",
                         epochs=4, batch_size=32, model_dir=str(tmp_path / "run"), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt()])
    assert (tmp_path / "run" / "01-train" / "backup").is_dir()
    assert not (tmp_path / "run" / "model.keras").exists()
    result = train(config)
    # Epochs 0 and 1 were backed up; only epochs 2 and 3 run again.
    assert result.metrics["epochs_run_this_time"] == 2
    assert not (tmp_path / "run" / "01-train" / "backup").exists()


def test_binary_resumes_after_sigkill(tmp_path, tiny_npz):
    model_dir = tmp_path / "run"
    flags = ["--model=small_cnn", "--model_options=width=2", f"--dataset=npz:{tiny_npz}",
             "--epochs=40", "--batch_size=16", f"--model_dir={model_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "models.train", *flags], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        backup = model_dir / "01-train" / "backup"
        if any(files for _, _, files in os.walk(backup)):  # first epoch's checkpoint
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (model_dir / "metrics.json").exists()
    result = _binary(*flags)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert 0 < metrics["epochs_run_this_time"] < 40
    assert metrics["test_accuracy"] > 0.9


@pytest.mark.parametrize("flags, message", [
    (["--model=vgg"], "flag --model=vgg: value should be one of"),
    (["--dataset=npz:/nonexistent/x.npz", "--epochs=1"], "/nonexistent/x.npz: no such npz file"),
    (["--dataset=mnist"], "unknown dataset 'mnist'"),
    (["--epochs=0"], "epochs must be >= 1 (>= 0 with init_model), got 0"),
    (["--init_model=/nonexistent/m.keras"], "/nonexistent/m.keras: no such file"),
    (["--prune_sparsity=1.5"], "flag --prune_sparsity=1.5"),
    (["--model_options=depth"], "'depth' is not key=value"),
    (["--model_options=alpha=0.5"], "has no option alpha"),
])
def test_bad_flags_give_one_line(tmp_path, flags, message):
    result = _binary(*flags, f"--model_dir={tmp_path}/run")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_tfcompress_cli_version_and_train_errors(tmp_path):
    version = subprocess.run([sys.executable, "-m", "tfcompress.cli", "--version"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert version.returncode == 0 and version.stdout.strip() == f"tfcompress {tfcompress.__version__}"
    bad = subprocess.run([sys.executable, "-m", "tfcompress.cli", "train", "--model=nope",
                          f"--model_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "error: flag --model=nope" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_binary_prunes_a_trained_model_and_cli_reports_it(tmp_path, tiny_npz):
    base = tmp_path / "base"
    result = _binary("--model=small_cnn", "--model_options=width=4", f"--dataset=npz:{tiny_npz}",
                     "--epochs=2", "--batch_size=16", f"--model_dir={base}")
    assert result.returncode == 0, result.stderr[-2000:]
    pruned_dir = tmp_path / "pruned"
    result = _binary(f"--init_model={base}/model.keras", "--epochs=0", f"--dataset=npz:{tiny_npz}",
                     "--prune_sparsity=0.75", "--prune_epochs=4", "--batch_size=16",
                     "--prune_skip_first_and_last=false", "--prune_exclude=conv1",
                     f"--model_dir={pruned_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pruned:" in result.stdout
    metrics = json.loads((pruned_dir / "metrics.json").read_text())
    dense = json.loads((base / "metrics.json").read_text())
    assert abs(metrics["dense_test_accuracy"] - dense["test_accuracy"]) < 1e-6
    assert metrics["epochs_run_this_time"] == 4
    # The saved model is stripped (plain layers) and its pruned kernels are 75% zeros.
    model = tfcompress.load_model(pruned_dir / "model.keras")
    assert [layer.name for layer in model.layers] == [
        layer.name for layer in tfcompress.load_model(base / "model.keras").layers]
    for name in ("conv2", "conv3", "classifier"):
        kernel = model.get_layer(name).kernel.numpy()
        assert abs(np.mean(kernel == 0) - 0.75) < 0.01, name
    assert np.mean(model.get_layer("conv1").kernel.numpy() == 0) == 0.0

    report = subprocess.run([sys.executable, "-m", "tfcompress.cli", "sparsity",
                             str(pruned_dir / "model.keras"), "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    rows = {row["layer"]: row for row in json.loads(report.stdout)["layers"]}
    assert abs(rows["conv2"]["sparsity"] - 0.75) < 0.01 and rows["conv1"]["sparsity"] == 0.0


def test_dense_phase_is_reused_only_with_the_same_settings(tmp_path, tiny_npz):
    flags = ["--model=small_cnn", "--model_options=width=2", f"--dataset=npz:{tiny_npz}",
             "--epochs=1", "--batch_size=32", "--prune_sparsity=0.5", "--prune_epochs=1",
             f"--model_dir={tmp_path / 'run'}"]
    first = _binary(*flags)
    assert first.returncode == 0, first.stderr[-2000:]
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recipe["stages"][0]["train"]["learning_rate"] == 2e-3
    # Another learning rate: the saved dense model is not this run's, so it is retrained.
    other = _binary(*flags, "--learning_rate=0.01")
    assert other.returncode == 0, other.stderr[-2000:]
    assert "01-train: running" in other.stdout
    assert "01-train: done in an earlier run" not in other.stdout
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recipe["stages"][0]["train"]["learning_rate"] == 0.01
    # The same settings again: the dense phase (the pipeline's manifest) is reused.
    again = _binary(*flags, "--learning_rate=0.01")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "01-train: done in an earlier run" in again.stdout
