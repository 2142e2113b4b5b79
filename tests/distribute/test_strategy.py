"""MirroredStrategy over two logical CPU devices against one device, at the same global batch.

The stages run in a fresh process (`_strategy_script.py`): TensorFlow can split
the CPU into logical devices only before it starts. The model has no BatchNorm
and no dropout, so one device and two replicas compute the same steps and only
the all-reduce's float summation order differs (tolerances in README.md,
"Distributed training").
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tfcompress import distribute, stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_strategy_script.py")

# Measured here (2-core x86, TF 2.21): max |weight difference| 3e-8 (train) to 1.2e-6
# (prune: a weight at the pruning threshold); losses equal to 2.4e-7.
WEIGHT_TOL = 1e-5
LOSS_TOL = 1e-5
# QAT: TFMOT's range quantizers average the replicas' batch min/max (assign_moving_average
# reduces MEAN across replicas) where one device takes the whole batch's; measured after
# 4 steps: input range ends 0.094 apart, kernels 4e-4, loss 1.0e-3.
QAT_KERNEL_TOL, QAT_LOSS_TOL = 5e-3, 1e-2


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _max_diff(a, b):
    assert len(a) == len(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def train_and_prune():
    return _run("train", "prune", "library")


def test_mirrored_uses_two_replicas_and_splits_the_global_batch(train_and_prune):
    assert train_and_prune["replicas"] == 2
    for kind in ("train", "prune"):
        info = train_and_prune["mirrored"][kind]["info"]
        assert (info["strategy"], info["replicas"]) == ("mirrored", 2)
        assert (info["global_batch_size"], info["per_replica_batch_size"]) == (32, 16)
        assert "strategy" not in train_and_prune["default"][kind]["info"]


def test_mirrored_train_stage_matches_one_device(train_and_prune):
    one, two = train_and_prune["default"]["train"], train_and_prune["mirrored"]["train"]
    assert _max_diff(one["weights"], two["weights"]) < WEIGHT_TOL
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0, atol=LOSS_TOL)


def test_mirrored_prune_stage_matches_one_device_and_counts_global_steps(train_and_prune):
    one, two = train_and_prune["default"]["prune"], train_and_prune["mirrored"]["prune"]
    assert _max_diff(one["weights"], two["weights"]) < WEIGHT_TOL
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0, atol=LOSS_TOL)
    assert two["info"]["sparsity"] == one["info"]["sparsity"]
    assert abs(one["info"]["sparsity"] - 0.5) < 0.01
    # 128 samples / global batch 32 * 2 epochs = 8 optimizer steps; every layer's
    # pruning step (what the schedule reads) is that global count, not a per-replica one.
    assert one["steps"] == two["steps"] == [8]
    assert one["iterations"] == two["iterations"] == 8


def test_training_library_under_mirrored_matches_one_device(train_and_prune):
    # models.train_lib.train (the --strategy flag's path): 1 epoch, then pruning for 2.
    one, two = train_and_prune["library"]["default"], train_and_prune["library"]["mirrored"]
    assert _max_diff(one["weights"], two["weights"]) < WEIGHT_TOL
    assert one["sparsity"] == two["sparsity"] and abs(one["sparsity"] - 0.5) < 0.01
    assert two["metrics"]["strategy"] == "mirrored" and two["metrics"]["replicas"] == 2
    assert two["metrics"]["per_replica_batch_size"] == 16
    assert abs(two["metrics"]["test_accuracy"] - one["metrics"]["test_accuracy"]) < 1e-6


def _names(run):
    # Keras numbers a second run's new layers in one process (quantize_layer_1...).
    return [re.sub(r"_\d+(?=[/:_])", "", name) for name in run["names"]]


@pytest.fixture(scope="module")
def every_stage():
    return _run(*stages.kinds())


@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for k in stages.kinds() if k != "qat"])
def test_every_stage_under_mirrored_matches_one_device(every_stage, kind):
    one, two = every_stage["default"][kind], every_stage["mirrored"][kind]
    assert two["info"]["replicas"] == 2
    assert _names(one) == _names(two)
    assert _max_diff(one["weights"], two["weights"]) < WEIGHT_TOL, kind
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0, atol=LOSS_TOL, err_msg=kind)


@pytest.mark.slow
def test_qat_under_mirrored_differs_from_one_device_only_by_its_ranges(every_stage):
    one, two = every_stage["default"]["qat"], every_stage["mirrored"]["qat"]
    assert two["info"]["replicas"] == 2 and _names(one) == _names(two)
    ranges = [i for i, n in enumerate(one["names"]) if n.endswith(("_min:0", "_max:0"))]
    kernels = [i for i in range(len(one["names"])) if i not in ranges]
    assert ranges and kernels
    assert _max_diff([one["weights"][i] for i in kernels],
                     [two["weights"][i] for i in kernels]) < QAT_KERNEL_TOL
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=0, atol=QAT_LOSS_TOL)
    # The ranges really are what differs (not some other mistake hidden by the tolerance).
    assert _max_diff([one["weights"][i] for i in ranges],
                     [two["weights"][i] for i in ranges]) > 10 * WEIGHT_TOL
