"""tfcompress: distillation, pruning, QAT and TFLite export for mobile, on tf_keras + TFMOT."""

import re

from setuptools import find_packages, setup

with open("tfcompress/__init__.py") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="tfcompress",
    version=VERSION,
    description="Compress tf_keras models for mobile and Edge TPU: distill, prune, QAT, "
                "TFLite export, evaluation and benchmarks.",
    python_requires=">=3.10",
    packages=find_packages(include=["tfcompress", "tfcompress.*", "models", "models.*",
                                    "tflite_export", "tflite_export.*"]),
    package_data={"tfcompress": ["recipes/*.yaml"]},
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-model-optimization==0.8.1",
        "ai-edge-litert==2.3.*",
        # TF 2.21 no longer pulls TensorBoard in, but Keras's TensorBoard callback needs it.
        "tensorboard==2.21.*",
        # Keras 3 files are imported (keras3_import) and written (keras3_export) with Keras 3
        # itself; TF 2.21 pulls it in. The translation is tested on 3.15 (TESTED_VERSIONS).
        "keras==3.15.*",
        # int4 export modes: Google's AI Edge Quantizer works on a float .tflite without
        # TensorFlow; 0.10.0 requires ai-edge-litert 2.3.0, the runtime pinned above.
        "ai-edge-quantizer==0.10.0",
        # The Ethos-U device profiles: Arm's Vela compiler, run in a child process, reports the
        # NPU's cycles, SRAM and flash for an int8/int16 .tflite (tflite_export/vela.py).
        "ethos-u-vela==5.2.0",
        "absl-py>=1.4",
        "numpy>=1.26",
        # TFMOT imports distutils.version, which Python 3.12 removed; setuptools provides it.
        "setuptools>=65",
        # Recipes are YAML (loaded with yaml.safe_load); reports and benchmarks draw PNG plots.
        "pyyaml>=6",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "tfds": ["tensorflow-datasets"],
    },
    entry_points={
        "console_scripts": [
            "tfcompress=tfcompress.cli:main",
            "tfcompress-train=models.train:run",
        ],
    },
)
