"""Issue 4's quality bar on real data: the zoo baseline pruned to 80% (slow: ~6 min)."""

import gzip

import numpy as np
import pytest

from models.train_lib import TrainConfig, train
from tflite_export.convert import convert


@pytest.mark.slow
def test_fashion_mnist_baseline_pruned_to_80_percent(tmp_path, fashion_mnist):
    dense = train(TrainConfig(model="small_cnn", epochs=5, model_dir=str(tmp_path / "dense"),
                              verbose=0), dataset=fashion_mnist)
    pruned = train(TrainConfig(
        init_model=str(tmp_path / "dense" / "model.keras"), epochs=0, prune_sparsity=0.8,
        prune_epochs=3, prune_skip_first_and_last=False, prune_exclude=("conv1",),
        model_dir=str(tmp_path / "pruned"), verbose=0), dataset=fashion_mnist)
    dense_acc, pruned_acc = dense.metrics["test_accuracy"], pruned.metrics["test_accuracy"]
    assert pruned.metrics["dense_test_accuracy"] == pytest.approx(dense_acc, abs=1e-6)
    print(f"\ndense {dense_acc:.4f} -> pruned {pruned_acc:.4f}")
    assert dense_acc - pruned_acc <= 0.010
    for name in ("conv2", "conv3", "classifier"):
        kernel = pruned.model.get_layer(name).kernel.numpy()
        assert abs(np.mean(kernel == 0) - 0.8) < 0.01, name
    sizes = [len(gzip.compress(convert(r.model, "float32"), 9)) for r in (dense, pruned)]
    print(f"float32 TFLite gzip {sizes[0]:,} -> {sizes[1]:,} bytes")
    assert sizes[0] >= 3 * sizes[1]
