"""Post-training int8 of a real model nobody here trained: the MLPerf Tiny DS-CNN.

Figures are printed (pytest -s) so the note on the issue can quote them.
"""

import os

import numpy as np
import pytest

import tfcompress
from tflite_export.convert import convert
from tflite_export.evaluate import evaluate_tflite
from tflite_export.inspect import inspect_tflite

REFERENCE_INT8_BYTES = 53936


@pytest.fixture(scope="module")
def kws(shared_dir):
    root = os.path.join(shared_dir, "data", "mlperf_tiny_kws")
    with np.load(os.path.join(root, "kws01_test.npz")) as f:
        x_int8, y = f["x_int8"], f["y"]
        scale, zero_point = float(f["input_scale"]), int(f["input_zero_point"])
    # The float features the float model takes (README of the data folder).
    x = ((x_int8.astype(np.float32) - zero_point) * scale).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    return dict(root=root, x=x, y=y, calib=order[:200], held_out=order[200:])


def test_int8_full_ptq_of_mlperf_ds_cnn(kws):
    model = tfcompress.load_model(os.path.join(kws["root"], "ds_cnn_savedmodel"))
    ours = convert(model, "int8_full", representative_data=kws["x"][kws["calib"]])
    reference = os.path.join(kws["root"], "ds_cnn_reference_int8.tflite")
    x, y, held = kws["x"], kws["y"], kws["held_out"]

    info = inspect_tflite(ours)
    assert info["is_full_integer"]
    assert info["inputs"][0]["dtype"] == "INT8" and info["outputs"][0]["dtype"] == "INT8"

    # Both files get the same float features, each quantized with its own input scale.
    ours_800 = evaluate_tflite(ours, x[held], y[held], progress=False)["top1"]
    ours_all = evaluate_tflite(ours, x, y, progress=False)["top1"]
    ref_800 = evaluate_tflite(reference, x[held], y[held], progress=False)["top1"]
    ref_all = evaluate_tflite(reference, x, y, progress=False)["top1"]
    print(f"\nDS-CNN int8_full (ours): {len(ours):,} bytes, top-1 {ours_800:.1%} on 800 held-out "
          f"clips, {ours_all:.1%} on all 1,000; MLPerf reference int8: "
          f"{os.path.getsize(reference):,} bytes, {ref_800:.1%} / {ref_all:.1%}")
    assert ours_800 >= 0.900
    assert ours_all >= 0.900
    assert len(ours) <= REFERENCE_INT8_BYTES == os.path.getsize(reference)
    # The reference fed the same way reproduces its published 90.2% on the 1,000 clips.
    assert abs(ref_all - 0.902) < 1e-9
