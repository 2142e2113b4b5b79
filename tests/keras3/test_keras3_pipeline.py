"""A Keras 3 user's trained model through `tfcompress run`, as the user runs it.

The model is a small Keras 3 CNN (uint8 pixels in, Rescaling inside, BatchNorm,
depthwise, hard-swish, a residual add) trained by Keras 3 on a fixed subset of the
real Fashion-MNIST; its own test accuracy is the baseline every variant is held to.
"""

import json

import numpy as np
import pytest
import yaml

from tfcompress import cli


@pytest.fixture(scope="module")
def fashion_k3(tmp_path_factory, keras3_builder):
    from tfcompress import data
    try:
        full = data.load_fashion_mnist(download=False)
    except data.DataError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    rng = np.random.default_rng(0)
    train = rng.choice(len(full.x_train), 6000, replace=False)
    test = rng.choice(len(full.x_test), 2000, replace=False)
    root = tmp_path_factory.mktemp("fashion_k3")
    npz = root / "fashion_subset.npz"
    np.savez(npz, x=full.x_train[train].reshape(-1, 28, 28, 1),
             y=full.y_train[train], x_test=full.x_test[test].reshape(-1, 28, 28, 1),
             y_test=full.y_test[test])
    keras3_builder(root, "fashion", str(npz))
    with open(root / "fashion.json") as f:
        accuracy = json.load(f)["accuracy"]
    assert accuracy > 0.8, f"the Keras 3 model trained to only {accuracy:.1%}"
    print(f"\nKeras 3's own test accuracy: {accuracy:.2%}")
    return root, npz, accuracy


def _run(args):
    assert cli.main(args) in (0, None)


def _rows(out):
    with open(out / "report.json") as f:
        rows = {(row["stage"], row["mode"]): row for row in json.load(f)["variants"]}
    # Shown with `pytest -s`: the figures the note reports.
    print("\n" + "\n".join(f"{stage} {mode}: {row['top1']:.2%}, {row['gzip_bytes']:,} gzip bytes"
                            for (stage, mode), row in rows.items()))
    return rows


def test_run_model_on_a_keras3_file(fashion_k3, tmp_path):
    root, npz, accuracy = fashion_k3
    out = tmp_path / "ptq"
    _run(["run", "--model", str(root / "fashion.keras"), "--data", f"npz:{npz}",
          "--out", str(out)])
    rows = _rows(out)
    float32 = next(row for (stage, mode), row in rows.items() if mode == "float32")
    int8 = next(row for (stage, mode), row in rows.items() if mode == "int8_full")
    assert float32["eval_samples"] == 2000
    # The interpreter on the imported model scores what Keras 3 scored (2 images of slack
    # for float rounding between the two runtimes).
    assert abs(float32["top1"] - accuracy) <= 2 / 2000
    assert int8["top1"] >= accuracy - 0.02


def test_prune_and_qat_recipe_with_a_keras3_teacher(fashion_k3, tmp_path):
    root, npz, accuracy = fashion_k3
    recipe = {
        "name": "keras3_prune_qat", "seed": 0,
        "data": {"dataset": f"npz:{npz}", "calibration_samples": 100},
        "teacher": {"path": str(root / "fashion.keras")},
        "stages": [{"prune": {"sparsity": 0.5, "epochs": 2, "learning_rate": 0.0005}},
                   {"qat": {"epochs": 1, "learning_rate": 0.0001}}],
        "export": {"modes": ["float32", "int8_full"], "keras3": True},
        "benchmark": {"devices": []},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    _run(["run", "--recipe", str(path), "--out", str(out)])
    rows = _rows(out)
    qat = [row for (stage, mode), row in rows.items() if stage.endswith("qat")]
    assert qat and all(row["is_full_integer"] for row in qat)
    assert max(row["top1"] for row in qat) >= accuracy - 0.03
    pruned = next(row for (stage, mode), row in rows.items()
                  if stage.endswith("prune") and mode == "float32")
    assert pruned["zero_fraction"] >= 0.4
    # export: {keras3: true}: the pruned model as a Keras 3 file, zeros kept; none for QAT.
    import keras as keras3
    pruned3 = keras3.saving.load_model(out / "01-prune" / "01-prune_keras3.keras")
    kernels = [w.numpy() for w in pruned3.weights if w.path.endswith("kernel")]
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros >= 0.4
    assert not list(out.glob("02-qat/*keras3*"))


def test_training_binary_prunes_a_keras3_model(fashion_k3, tmp_path):
    import os
    import subprocess
    import sys
    root, npz, accuracy = fashion_k3
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "train"
    proc = subprocess.run(
        [sys.executable, "-m", "models.train", f"--init_model={root / 'fashion.keras'}",
         "--epochs=0", f"--dataset=npz:{npz}", "--prune_sparsity=0.5", "--prune_epochs=1",
         f"--model_dir={out}"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["dense_test_accuracy"] - accuracy) <= 2 / 2000  # Keras's own, imported
    # First and last layers are skipped by default; the others' kernels are 50% zeros.
    import tfcompress
    model = tfcompress.load_model(out / "model.keras")
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    assert np.mean(kernels[0] == 0) < 0.1 and np.mean(kernels[-1] == 0) < 0.1
    assert len(kernels) > 2 and all(abs(np.mean(k == 0) - 0.5) < 0.02 for k in kernels[1:-1])
