"""Keras 3 model files, built in a child process the way a Keras 3 user builds them."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BUILDER = os.path.join(HERE, "build_keras3_models.py")
MODELS = ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet50", "nested",
          "two_input", "shared", "mixed", "all_ops", "plain", "subclassed", "with_lambda",
          "unsupported_op", "rms_norm")


def build_keras3(out_dir, *args):
    """Runs the builder without TF_USE_LEGACY_KERAS, so `import keras` is Keras 3."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, BUILDER, str(out_dir), *args], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def keras3_builder():
    """`build_keras3(out_dir, *args)` for tests that build their own Keras 3 files."""
    return build_keras3


@pytest.fixture(scope="session")
def keras3_dir(tmp_path_factory):
    """A folder of Keras 3 files: NAME.keras (and NAME.npz: inputs and Keras 3's outputs)."""
    out = tmp_path_factory.mktemp("keras3_models")
    build_keras3(out, *MODELS)
    return out
