"""Acceptance: classifiers built the ways users build them, through every path a user takes.

The models come from `foreign.py` (plain tf_keras, trained on real Fashion-MNIST subsets, saved
as .keras, .h5 and SavedModel; compiled with categorical / sparse / from_logits / top-k-first /
no metrics / not at all; softmax, logits and one-sigmoid heads; Rescaling inside with uint8 data,
[0, 1] and [-1, 1] inputs; a registered custom layer; two outputs). Each case checks numbers
against the model's own accuracy, computed in `foreign.accuracy` with plain numpy:
float32 through the interpreter = that accuracy; int8_full within 2 points; a pruned logits model
within 2 points of the same recipe on its softmax twin (the same weights under a softmax).
The MLPerf DS-CNN in ../shared runs through `run --model` too.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfcompress import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import foreign  # noqa: E402

NO_BENCH = ["--set", "benchmark.devices=[]", "--set", "export.modes=[float32, int8_full]",
            "--set", "data.calibration_samples=100"]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    out = foreign.build_all(str(tmp_path_factory.mktemp("foreign")))
    if out is None:
        pytest.skip("Fashion-MNIST is not installed")
    return out


def _run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _variants(out_dir):
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    return {(v["stage"], v["mode"]): v["top1"] for v in report["variants"]}, report


def _ptq(built, capsys, tmp_path, name, *extra):
    data_paths, models = built
    case = models[name]
    out = tmp_path / name
    code, log, err = _run_cli(capsys, "run", "--model", case["path"], "--data",
                              f"npz:{data_paths[case['data']]}", "--out", out, *NO_BENCH, *extra)
    assert code == 0, err
    return case, _variants(out)[0], log


# Every compile/head/input/format a user brings: `run --model` (post-training quantization).
PTQ_CASES = {
    "softmax_categorical": (),      # crashed at 00-input with one-hot labels
    "softmax_topk_first": (),       # reported its top-5 as "accuracy"
    "softmax_no_metrics": (),       # "'float' object is not subscriptable"
    "softmax_uncompiled": (),
    "logits": (),
    "sigmoid_binary": (),           # "has 1 outputs but the data has 2 classes"
    "rescaling_uint8": ("--set", "data.scale=none"),   # scored chance with exit 0
    "symmetric": (),
    "h5": (),
    "savedmodel": (),
    "custom_layer": ("--custom_objects", foreign.USER_LAYERS_PATH),
}


@pytest.mark.parametrize("name", sorted(PTQ_CASES))
def test_run_model_measures_the_models_own_accuracy(built, capsys, tmp_path, name):
    case, top1, log = _ptq(built, capsys, tmp_path, name, *PTQ_CASES[name])
    assert case["accuracy"] > (0.9 if case["head"] == "sigmoid" else 0.75)  # a real model
    assert top1[("00-input", "float32")] == pytest.approx(case["accuracy"], abs=0.003)
    assert top1[("00-input", "int8_full")] >= case["accuracy"] - 0.02
    saved_compiled = name != "softmax_uncompiled"
    assert ("was saved compiled" in log) == saved_compiled
    assert "trained in" not in log  # 00-input loads; nothing trains


def test_uint8_data_for_a_rescaling_model_stops_with_the_fix(built, capsys, tmp_path):
    data_paths, models = built
    case = models["rescaling_uint8"]
    code, _, err = _run_cli(capsys, "run", "--model", case["path"], "--data",
                            f"npz:{data_paths['uint8']}", "--out", tmp_path / "r", *NO_BENCH)
    assert code == 1
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "at chance" in err and "--set data.scale=none" in err
    assert not (tmp_path / "r" / "report.json").exists()
    assert not (tmp_path / "r" / "00-input").exists()  # nothing half-made is left
    # The advice works: test_run_model_measures_the_models_own_accuracy[rescaling_uint8].


def test_two_outputs_are_refused_by_run_and_converted_by_export(built, capsys, tmp_path):
    data_paths, models = built
    case = models["two_outputs"]
    code, _, err = _run_cli(capsys, "run", "--model", case["path"], "--data",
                            f"npz:{data_paths['unit']}", "--out", tmp_path / "r", *NO_BENCH)
    assert code == 1 and err.count("error:") == 1
    assert "2 outputs" in err and "single-output" in err and "tfcompress export" in err
    code, _, err = _run_cli(capsys, "export", case["path"], "--mode", "float32",
                            "--out", tmp_path / "x")
    assert code == 0, err
    assert (tmp_path / "x" / "two_outputs_float32.tflite").stat().st_size > 10_000


def test_custom_layer_error_names_the_flag_and_the_flag_works(built, tmp_path):
    """In fresh processes: this one imported user_layers while building the models."""
    path = built[1]["custom_layer"]["path"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    refused = subprocess.run([sys.executable, "-m", "tfcompress.cli", "export", path,
                              "--out", str(tmp_path / "a")], cwd=HERE, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    error_lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--custom_objects user_layers" in error_lines[0]
    # --allow_unsafe cannot help Keras find code it cannot import: it says what can.
    unsafe = subprocess.run([sys.executable, "-m", "tfcompress.cli", "export", path,
                             "--allow_unsafe", "--out", str(tmp_path / "u")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert unsafe.returncode == 1
    assert "Keras does not know the class 'Swish'" in unsafe.stderr
    assert "--custom_objects MODULE" in unsafe.stderr and "Traceback" not in unsafe.stderr
    # Following the advice from the folder that holds user_layers.py.
    done = subprocess.run([sys.executable, "-m", "tfcompress.cli", "export", path,
                           "--custom_objects", "user_layers", "--out", str(tmp_path / "b")],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "b" / "custom_layer_float32.tflite").exists()
    # The same flag on sparsity and on the training binary (which also takes the prune
    # error's advice as --prune_exclude).
    sparsity = subprocess.run([sys.executable, "-m", "tfcompress.cli", "sparsity", path,
                               "--custom_objects", foreign.USER_LAYERS_PATH, "--json"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert sparsity.returncode == 0, sparsity.stderr[-2000:]
    assert json.loads(sparsity.stdout)["total"]["sparsity"] < 0.05  # a dense model
    data_paths = built[0]
    train = subprocess.run(
        [sys.executable, "-m", "models.train", f"--init_model={path}", "--epochs=0",
         f"--custom_objects={foreign.USER_LAYERS_PATH}", f"--dataset=npz:{data_paths['unit']}",
         "--max_train_samples=1000", "--prune_sparsity=0.5", "--prune_epochs=1",
         "--prune_skip_first_and_last=false", "--prune_exclude=swish,swish_1,scaled_dense",
         f"--model_dir={tmp_path / 't'}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    with open(tmp_path / "t" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["dense_test_accuracy"] == pytest.approx(
        built[1]["custom_layer"]["accuracy"], abs=0.003)


def _recipe(tmp_path, name, teacher, dataset, stages, **extra):
    """A recipe file compressing `teacher` on the npz `dataset` (2,000 training rows)."""
    recipe = {"name": name, "seed": 0,
              "data": {"dataset": f"npz:{dataset}", "max_train_samples": 2000,
                       "calibration_samples": 100},
              "teacher": {"path": teacher}, "stages": stages,
              "export": {"modes": ["float32", "int8_full"]}, "benchmark": {"devices": []},
              **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(recipe))
    return path


PRUNE_QAT = [{"prune": {"sparsity": 0.5, "epochs": 1}}, {"qat": {"epochs": 1}}]


def test_custom_layers_follow_each_errors_advice_to_a_quantized_model(built, capsys, tmp_path):
    """Layers TFMOT does not know: each error names the recipe key that gets past it, and
    setting exactly what it says (read from the message) gets to a report."""
    import re
    data_paths, models = built
    recipe = _recipe(tmp_path, "custom", models["custom_layer"]["path"], data_paths["unit"],
                     PRUNE_QAT)
    argv = ["run", "--recipe", recipe, "--out", tmp_path / "c", "--custom_objects",
            foreign.USER_LAYERS_PATH]
    advice = [(r"prune: \{exclude: \[([^\]]+)\]\}", "stages.0.prune.exclude=[{}]"),
              (r"qat: \{exclude_layers: \[([^\]]+)\]\}", "stages.1.qat.exclude_layers=[{}]"),
              (r"the qat stage's (export): \[(int8)\]", "stages.1.qat.export=[int8]")]
    for pattern, setting in advice:
        code, _, err = _run_cli(capsys, *argv)
        assert code == 1 and err.count("error:") == 1, err
        found = re.search(pattern, err)
        assert found, err
        argv += ["--set", setting.format(found.group(1))]
    assert "swish, swish_1, scaled_dense" in " ".join(map(str, argv))
    code, _, err = _run_cli(capsys, *argv)
    assert code == 0, err
    top1 = _variants(tmp_path / "c")[0]
    accuracy = models["custom_layer"]["accuracy"]
    assert top1[("00-input", "float32")] == pytest.approx(accuracy, abs=0.003)
    assert top1[("02-qat", "int8")] > accuracy - 0.05


def test_a_logits_model_prunes_like_its_softmax_twin(built, capsys, tmp_path):
    """The logits bug: trained with a probabilities loss, prune 50% gave 26.7% where the same
    weights under a softmax gave 63.6%. With the head's own loss they match."""
    data_paths, models = built
    results = {}
    for name in ("logits", "softmax_twin"):
        recipe = _recipe(tmp_path, name, models[name]["path"], data_paths["unit"], PRUNE_QAT)
        code, _, err = _run_cli(capsys, "run", "--recipe", recipe, "--out", tmp_path / name)
        assert code == 0, err
        results[name] = _variants(tmp_path / name)[0]
    accuracy = models["logits"]["accuracy"]
    for key in [("01-prune", "float32"), ("01-prune", "int8_full"), ("02-qat", "int8_full")]:
        assert results["logits"][key] == pytest.approx(results["softmax_twin"][key], abs=0.02)
        assert results["logits"][key] > accuracy - 0.1   # not collapsed


def test_a_binary_sigmoid_model_prunes_and_trains_quantized_while_distilling(built, capsys,
                                                                             tmp_path):
    """A wake-word-style one-sigmoid model: binary cross-entropy, thresholded accuracy, the
    Distiller reading its one unit as two-class logits, end to end."""
    data_paths, models = built
    case = models["sigmoid_binary"]
    stages = [{"prune": {"sparsity": 0.5, "epochs": 1, "distill": True}},
              {"qat": {"epochs": 1, "distill": True}}]
    recipe = _recipe(tmp_path, "binary", case["path"], data_paths["binary"], stages)
    code, _, err = _run_cli(capsys, "run", "--recipe", recipe, "--out", tmp_path / "b")
    assert code == 0, err
    top1, report = _variants(tmp_path / "b")
    assert top1[("00-input", "float32")] == pytest.approx(case["accuracy"], abs=0.003)
    for key, value in top1.items():
        assert value > case["accuracy"] - 0.05, key  # 2 classes: chance is 50%
    assert report["stages"][0]["head"] == {"kind": "sigmoid", "units": 1}
    # The interpreter's thresholded accuracy of the sigmoid file, through `evaluate`.
    flat = tmp_path / "b" / "02-qat" / "tflite" / "02-qat_int8_full.tflite"
    code, out, err = _run_cli(capsys, "evaluate", flat, "--data",
                              f"npz:{data_paths['binary']}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["binary_threshold"] == 0.5
    assert result["top1"] == pytest.approx(top1[("02-qat", "int8_full")], abs=1e-9)


@pytest.mark.slow
def test_a_binary_sigmoid_teacher_distills_into_a_two_class_zoo_student(built, capsys, tmp_path):
    data_paths, models = built
    case = models["sigmoid_binary"]
    stages = [{"distill": {"epochs": 3, "batch_size": 32}},
              {"prune": {"sparsity": 0.5, "epochs": 3, "batch_size": 32}}]
    recipe = _recipe(tmp_path, "binary", case["path"], data_paths["binary"], stages,
                     student={"model": "small_cnn", "options": {"width": 4}})
    code, _, err = _run_cli(capsys, "run", "--recipe", recipe, "--out", tmp_path / "b")
    assert code == 0, err
    top1, report = _variants(tmp_path / "b")
    assert report["stages"][1]["head"] == {"kind": "softmax", "units": 2}  # the zoo student
    for key, value in top1.items():
        assert value > 0.85, key


def test_a_logits_teacher_distills_into_a_zoo_student_as_its_softmax_twin(built, capsys,
                                                                         tmp_path):
    """Soft targets come from the logits either way: the students agree."""
    data_paths, models = built
    results, learned = {}, {}
    for name in ("logits", "softmax_twin"):
        recipe = _recipe(tmp_path, name, models[name]["path"], data_paths["unit"],
                         [{"distill": {"epochs": 2, "batch_size": 32}}],
                         student={"model": "small_cnn", "options": {"width": 4}})
        code, _, err = _run_cli(capsys, "run", "--recipe", recipe, "--out", tmp_path / name)
        assert code == 0, err
        top1, report = _variants(tmp_path / name)
        results[name] = top1[("01-distill", "float32")]
        with open(tmp_path / name / "01-distill" / "metrics.json") as f:
            learned[name] = json.load(f)["history"]["accuracy"][-1]
    assert results["logits"] == pytest.approx(results["softmax_twin"], abs=0.01)
    assert learned["logits"] == pytest.approx(learned["softmax_twin"], abs=0.01)
    # Training accuracy, not test: after 125 steps the zoo student's BatchNorm moving
    # statistics still hold much of their initial values (measured: test top-1 19% with
    # them, 72% with batch statistics), which no head handling changes.
    assert learned["logits"] > 0.65


@pytest.mark.parametrize("name, flags", [("logits", []),
                                         ("rescaling_uint8", ["--data_scale=none"])])
def test_training_binary_prunes_a_foreign_init_model(built, tmp_path, name, flags):
    data_paths, models = built
    case = models[name]
    proc = subprocess.run(
        [sys.executable, "-m", "models.train", f"--init_model={case['path']}", "--epochs=0",
         f"--dataset=npz:{data_paths[case['data']]}", "--max_train_samples=2000",
         "--prune_sparsity=0.5", "--prune_epochs=1", "--prune_skip_first_and_last=false",
         f"--model_dir={tmp_path / 't'}", "--seed=0", *flags],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "t" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["dense_test_accuracy"] == pytest.approx(case["accuracy"], abs=0.003)
    assert metrics["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert metrics["test_accuracy"] > case["accuracy"] - 0.1


def test_lambda_model_needs_allow_unsafe_on_run(built, capsys, tmp_path):
    from tfcompress.keras import keras
    data_paths, models = built
    inner = keras.models.load_model(models["softmax_no_metrics"]["path"], compile=False)
    inputs = keras.Input((28, 28, 1))
    outer = keras.Model(inputs, inner(keras.layers.Lambda(lambda t: t * 1.0)(inputs)))
    outer.save(tmp_path / "lambda.keras")
    argv = ["run", "--model", tmp_path / "lambda.keras", "--data", f"npz:{data_paths['unit']}",
            "--out", tmp_path / "r", *NO_BENCH]
    code, _, err = _run_cli(capsys, *argv)
    assert code == 1 and "Lambda layer" in err and "--allow_unsafe" in err
    code, _, err = _run_cli(capsys, *argv, "--allow_unsafe")
    assert code == 0, err
    assert _variants(tmp_path / "r")[0][("00-input", "float32")] == pytest.approx(
        models["softmax_no_metrics"]["accuracy"], abs=0.003)


def test_an_error_inside_keras_is_one_line_naming_stage_and_model(built, capsys, tmp_path,
                                                                  monkeypatch):
    from tfcompress import stages
    data_paths, models = built

    def keras_fails(*args, **kwargs):  # what a shape clash inside fit looks like
        raise ValueError("in user code:\n\n    File \"training.py\", line 1, in train_function"
                         "\n\n    ValueError: Shapes (None, 1) and (None, 10) are incompatible")

    monkeypatch.setattr(stages.context, "fit", keras_fails)
    recipe = _recipe(tmp_path, "fails", models["softmax_no_metrics"]["path"],
                     data_paths["unit"], PRUNE_QAT)
    code, _, err = _run_cli(capsys, "run", "--recipe", recipe, "--out", tmp_path / "f")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0] == (
        f"error: stage 01-prune failed on {tmp_path / 'f' / '00-input' / 'model.keras'}: "
        "ValueError: Shapes (None, 1) and (None, 10) are incompatible (set "
        "TFCOMPRESS_DEBUG=1 for the traceback)")
    monkeypatch.setenv("TFCOMPRESS_DEBUG", "1")
    with pytest.raises(ValueError, match="in user code"):
        cli.main(["run", "--recipe", str(recipe), "--out", str(tmp_path / "f")])


def test_mlperf_ds_cnn_runs_through_run_model(shared_dir, capsys, tmp_path):
    kws = os.path.join(shared_dir, "data", "mlperf_tiny_kws")
    code, log, err = _run_cli(capsys, "run", "--model", os.path.join(kws, "ds_cnn_savedmodel"),
                              "--data", f"npz:{os.path.join(kws, 'kws01_test.npz')}",
                              "--out", tmp_path / "kws", *NO_BENCH)
    assert code == 0, err
    top1, report = _variants(tmp_path / "kws")
    # 200 held-out clips of 1,000 (no training split); 91.3% on all 1,000 (its README).
    assert report["stages"][0]["head"]["kind"] == "softmax"
    assert top1[("00-input", "float32")] == pytest.approx(
        report["stages"][0]["keras_test_accuracy"], abs=0.005)
    assert top1[("00-input", "float32")] > 0.85
    assert top1[("00-input", "int8_full")] >= top1[("00-input", "float32")] - 0.02


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(PTQ_CASES) - {"logits", "custom_layer"}))
def test_every_case_prunes_and_trains_quantized(built, capsys, tmp_path, name):
    data_paths, models = built
    case = models[name]
    extra = {"data": {"dataset": f"npz:{data_paths[case['data']]}", "max_train_samples": 2000,
                      "calibration_samples": 100, "scale": "none"}}
    recipe = _recipe(tmp_path, name, case["path"], data_paths[case["data"]], PRUNE_QAT)
    values = json.loads(recipe.read_text())
    values.update(extra)
    recipe.write_text(json.dumps(values))
    code, _, err = _run_cli(capsys, "run", "--recipe", recipe, "--out", tmp_path / name)
    assert code == 0, err
    top1 = _variants(tmp_path / name)[0]
    assert top1[("00-input", "float32")] == pytest.approx(case["accuracy"], abs=0.003)
    assert top1[("02-qat", "int8_full")] > case["accuracy"] - 0.1
