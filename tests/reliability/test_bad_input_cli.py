"""Bad input to every `tfcompress` subcommand: exit code != 0, one `error:` line, no traceback.

Most cases call `tfcompress.cli.main(argv)` in-process (TensorFlow is imported
once); a handful at the end run the real console entry point in subprocesses
to prove the exit status and the absence of a traceback end to end.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _expand(argv, good_files, corrupt_files, tmp_path):
    """Fills {good[name]}, {bad[name]} and {tmp} placeholders in argv."""
    return [a.format(good=good_files, bad=corrupt_files, tmp=tmp_path) for a in argv]


def _case_table(table):
    return [pytest.param(argv, fragments, id=name) for name, (argv, fragments) in table.items()]


INSPECT = {
    "missing_file": (["inspect", "{tmp}/nope.tflite"], ["nope.tflite: no such file"]),
    "directory": (["inspect", "{tmp}"], ["is a directory, not a .tflite file"]),
    "truncated": (["inspect", "{bad[truncated_tflite]}"],
                  ["truncated.tflite: corrupt or truncated TFLite flatbuffer"]),
    "garbled_after_header": (["inspect", "{bad[garbled_tflite]}"],
                             ["garbled.tflite: corrupt or truncated TFLite flatbuffer"]),
    "random_bytes": (["inspect", "{bad[random_tflite]}", "--edgetpu"],
                     ["random.tflite: not a TFLite flatbuffer (no 'TFL3' identifier"]),
    "empty_file": (["inspect", "{bad[empty_tflite]}", "--json"],
                   ["empty.tflite: not a TFLite flatbuffer", "0 bytes"]),
    "keras_file": (["inspect", "{good[keras]}"], ["tiny.keras: not a TFLite flatbuffer"]),
}

EVALUATE = {
    "truncated_tflite": (["evaluate", "{bad[truncated_tflite]}", "--data", "npz:{good[npz]}"],
                         ["truncated.tflite: corrupt or truncated TFLite flatbuffer"]),
    "data_12x12x3_for_8x8x1_model": (
        ["evaluate", "{good[tflite]}", "--data", "npz:{good[rgb_npz]}"],
        ["data of shape (4, 12, 12, 3) does not fit", "so the data must be (N,) + (8, 8, 1)"]),
    "labels_beyond_model_classes": (
        ["evaluate", "{good[tflite]}", "--data", "npz:{good[many_classes_npz]}"],
        ["labels span", "has 3 classes"]),
    "nan_in_test_images": (["evaluate", "{good[tflite]}", "--data", "npz:{tmp}/nan.npz"],
                           ["nan.npz: 'x_test' contains NaN or Inf values"]),
    "empty_dataset": (["evaluate", "{good[tflite]}", "--data", "npz:{tmp}/empty.npz"],
                      ["empty.npz: 'x' is empty"]),
    "max_samples_0": (["evaluate", "{good[tflite]}", "--data", "npz:{good[npz]}",
                       "--max_samples", "0"], ["--max_samples must be >= 1, got 0"]),
    "keras_model_corrupt": (["evaluate", "{good[tflite]}", "--data", "npz:{good[npz]}",
                             "--keras", "{bad[random_keras]}"],
                            ["random.keras: cannot load model: it is not a .keras archive"]),
    "keras_model_nan_weights": (["evaluate", "{good[tflite]}", "--data", "npz:{good[npz]}",
                                 "--keras", "{good[nan_keras]}"],
                                ["the Keras model to compare with ('nan_model') has 1 NaN"]),
    "layer_errors_without_keras": (["evaluate", "{good[tflite]}", "--data", "npz:{good[npz]}",
                                    "--layer_errors"], ["--layer_errors needs --keras MODEL"]),
    "unknown_dataset": (["evaluate", "{good[tflite]}", "--data", "mnist"],
                        ["unknown dataset 'mnist'", "npz:PATH"]),
    "missing_npz": (["evaluate", "{good[tflite]}", "--data", "npz:{tmp}/nope.npz"],
                    ["nope.npz: no such npz file"]),
    "corrupt_npz": (["evaluate", "{good[tflite]}", "--data", "npz:{bad[truncated_npz]}"],
                    ["truncated.npz: cannot read npz file"]),
    "bad_split_choice": (["evaluate", "{good[tflite]}", "--data", "npz:{good[npz]}",
                          "--split", "validation"], ["invalid choice: 'validation'"]),
}

EXPORT = {
    "missing_model": (["export", "{tmp}/nope.keras", "--out", "{tmp}/out"],
                      ["nope.keras: no such file or directory"]),
    "truncated_keras": (["export", "{bad[truncated_keras]}", "--out", "{tmp}/out"],
                        ["truncated.keras: cannot load model: it is not a .keras archive"]),
    "random_keras": (["export", "{bad[random_keras]}", "--out", "{tmp}/out"],
                     ["random.keras: cannot load model: it is not a .keras archive"]),
    "truncated_h5": (["export", "{bad[truncated_h5]}", "--out", "{tmp}/out"],
                     ["truncated.h5: cannot load model: truncated or corrupt HDF5 file"]),
    "random_h5": (["export", "{bad[random_h5]}", "--out", "{tmp}/out"],
                  ["random.h5: cannot load model: it is not an HDF5 file"]),
    "empty_keras": (["export", "{bad[empty_keras]}", "--out", "{tmp}/out"],
                    ["empty.keras: cannot load model: it is not a .keras archive (a zip file): "
                     "empty"]),
    "folder_not_savedmodel": (["export", "{tmp}", "--out", "{tmp}/out"],
                              ["directory has no saved_model.pb"]),
    "tflite_as_model": (["export", "{good[tflite]}", "--out", "{tmp}/out"],
                        ["tiny.tflite: unknown model format"]),
    "unknown_mode": (["export", "{good[keras]}", "--mode", "int4", "--out", "{tmp}/out"],
                     ["unknown TFLite mode 'int4'", "int8_full"]),
    "int8_without_calibration": (["export", "{good[keras]}", "--mode", "int8", "--out",
                                  "{tmp}/out"], ["mode int8 needs representative_data",
                                                 "--calibration DATA"]),
    "calibration_wrong_shape": (["export", "{good[keras]}", "--mode", "int8", "--calibration",
                                 "npz:{good[rgb_npz]}", "--out", "{tmp}/out"],
                                ["sample has shape (12, 12, 3) but the model input is (8, 8, 1)"]),
    "calibration_corrupt": (["export", "{good[keras]}", "--mode", "int8", "--calibration",
                             "npz:{bad[random_npz]}", "--out", "{tmp}/out"],
                            ["random.npz: cannot read npz file"]),
    "calibration_samples_0": (["export", "{good[keras]}", "--mode", "int8", "--calibration",
                               "npz:{good[npz]}", "--calibration_samples", "0", "--out",
                               "{tmp}/out"], ["--calibration_samples must be >= 1, got 0"]),
    "batch_size_0": (["export", "{good[keras]}", "--batch_size", "0", "--out", "{tmp}/out"],
                     ["batch_size must be an integer >= 1, got 0"]),
    "out_is_a_file": (["export", "{good[keras]}", "--out", "{good[npz]}"],
                      ["data.npz is a file; give a folder (CLI: --out DIR)"]),
    "nan_weights": (["export", "{good[nan_keras]}", "--out", "{tmp}/out"],
                    ["the model to convert ('nan_model') has 1 NaN value(s) in weight "
                     "'conv/kernel:0' of layer 'conv'", "lower the learning rate"]),
    "missing_out_flag": (["export", "{good[keras]}"], ["the following arguments are required: "
                                                       "--out"]),
}

SPARSITY = {
    "missing_model": (["sparsity", "{tmp}/nope.keras"], ["nope.keras: no such file"]),
    "random_bytes": (["sparsity", "{bad[random_keras]}"], ["random.keras: cannot load model"]),
    "truncated_h5": (["sparsity", "{bad[truncated_h5]}"], ["truncated.h5: cannot load model"]),
    "structure_5_of_4": (["sparsity", "{good[keras]}", "--structure", "5:4"],
                         ["structure '5:4'", "0 < M < N"]),
    "structure_word": (["sparsity", "{good[keras]}", "--structure", "banana"],
                       ["'banana' is not 'M:N'"]),
}

OTHERS = {
    "recipes_extra_argument": (["recipes", "extra"], ["unrecognized arguments: extra"]),
    "unknown_subcommand": (["compress"], ["invalid choice: 'compress'", "--help"]),
    "run_without_recipe": (["run", "--out", "{tmp}/run"], ["give --recipe NAME|FILE"]),
    "run_unknown_recipe": (["run", "--recipe", "nope", "--out", "{tmp}/run"],
                           ["no built-in recipe 'nope'; built-in: fashion_mnist"]),
    "run_recipe_is_binary": (["run", "--recipe", "{bad[random_keras]}", "--out", "{tmp}/run"],
                             ["random.keras is not a text (YAML or JSON) recipe file"]),
    "run_recipe_is_a_folder": (["run", "--recipe", "{tmp}", "--out", "{tmp}/run"],
                               ["is a folder; give a YAML or JSON recipe file"]),
    "run_missing_model": (["run", "--model", "{tmp}/nope.keras", "--data", "npz:{good[npz]}",
                           "--out", "{tmp}/run"], ["--model", "nope.keras: no such file"]),
    "run_corrupt_model": (["run", "--model", "{bad[random_keras]}", "--data", "npz:{good[npz]}",
                           "--set", "benchmark.devices=[]", "--out", "{tmp}/run"],
                          ["random.keras: cannot load model: it is not a .keras archive"]),
    "run_model_does_not_fit_data": (["run", "--model", "{good[keras]}", "--data",
                                     "npz:{good[rgb_npz]}", "--set", "benchmark.devices=[]",
                                     "--out", "{tmp}/run"],
                                    ["takes inputs of shape (8, 8, 1) but the data",
                                     "(12, 12, 3)"]),
    "run_unknown_device": (["run", "--model", "{good[keras]}", "--data", "npz:{good[npz]}",
                            "--set", "benchmark.devices=[pixel9]", "--out", "{tmp}/run"],
                           ["benchmark.devices: unknown device profile 'pixel9'", "host-1t"]),
    "run_empty_dataset": (["run", "--model", "{good[keras]}", "--data", "npz:{tmp}/empty.npz",
                           "--out", "{tmp}/run"], ["empty.npz: 'x' is empty"]),
    "run_nan_weights": (["run", "--model", "{good[nan_keras]}", "--data", "npz:{good[npz]}",
                         "--set", "benchmark.devices=[]", "--out", "{tmp}/run"],
                        ["('nan_model') has 1 NaN value(s)", "layer 'conv'"]),
    "report_missing_folder": (["report", "{tmp}/nowhere"],
                              ["holds no pipeline run (no recipe.json)"]),
    "report_corrupt_recipe_json": (["report", "{tmp}/corrupt_run"],
                                   ["corrupt_run/recipe.json: cannot read it",
                                    "rerun `tfcompress run` with the same --out"]),
    "report_corrupt_metrics_json": (["report", "{tmp}/corrupt_stage"],
                                    ["corrupt_stage/01-train/metrics.json: cannot read it"]),
    "bench_no_files": (["bench"], ["bench needs at least one .tflite file"]),
    "bench_unknown_device": (["bench", "{good[tflite]}", "--device", "pixel9"],
                             ["unknown device 'pixel9'", "--devices-file"]),
    "bench_runs_0": (["bench", "{good[tflite]}", "--runs", "0"],
                     ["runs must be an integer >= 1, got 0"]),
    "bench_timeout_0": (["bench", "{good[tflite]}", "--timeout", "0"],
                        ["timeout_s must be a number > 0"]),
    "bench_min_seconds_nan": (["bench", "{good[tflite]}", "--min_seconds", "nan"],
                              ["min_seconds must be a number >= 0, got nan"]),
    "bench_missing_devices_file": (["bench", "--devices-file", "{tmp}/nope.json",
                                    "--list-devices"], ["nope.json: cannot read the device"]),
    "bench_binary_devices_file": (["bench", "--devices-file", "{bad[random_keras]}",
                                   "--list-devices"], ["random.keras: not a JSON text file"]),
    "bench_runs_not_a_number": (["bench", "{good[tflite]}", "--runs", "many"],
                                ["argument --runs: invalid int value: 'many'"]),
}


@pytest.fixture
def workspace(tmp_path):
    """tmp_path with the data sets and damaged run folders the tables refer to."""
    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(10) % 3,
             x_test=np.full((2, 8, 8, 1), np.nan, np.float32), y_test=np.array([0, 1]))
    np.savez(tmp_path / "empty.npz", x=x[:0], y=np.zeros(0, int))
    (tmp_path / "corrupt_run").mkdir()
    (tmp_path / "corrupt_run" / "recipe.json").write_bytes(b"\x8f\x00garbage")
    stage = tmp_path / "corrupt_stage" / "01-train"
    stage.mkdir(parents=True)
    (tmp_path / "corrupt_stage" / "recipe.json").write_text(json.dumps({"name": "r"}))
    (stage / "manifest.json").write_text(json.dumps({"stage": "train"}))
    (stage / "metrics.json").write_text('{"keras_test_accuracy": 0.')  # cut short
    return tmp_path


@pytest.mark.parametrize("argv, fragments", _case_table(
    {**{f"inspect_{k}": v for k, v in INSPECT.items()},
     **{f"evaluate_{k}": v for k, v in EVALUATE.items()},
     **{f"export_{k}": v for k, v in EXPORT.items()},
     **{f"sparsity_{k}": v for k, v in SPARSITY.items()},
     **OTHERS}))
def test_subcommand_bad_input(cli_error, good_files, corrupt_files, workspace, argv, fragments):
    argv = _expand(argv, good_files, corrupt_files, workspace)
    cli_error(*argv, fragments=[f.format(tmp=workspace) for f in fragments])
    # A failed export leaves no .tflite behind.
    out = workspace / "out"
    assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize("name, fragment", [
    ("missing", "nope.tflite: no such file"),
    ("random_tflite", "not a TFLite flatbuffer"),
])
def test_bench_reports_each_bad_model_and_exits_1(run_main, good_files, corrupt_files, tmp_path,
                                                  name, fragment):
    """bench keeps going past a bad model (the others still run), then exits 1."""
    from tfcompress import cli
    path = str(tmp_path / "nope.tflite") if name == "missing" else corrupt_files[name]
    code, out, err = run_main(cli.main, ["bench", path, "--runs", "1", "--min_seconds", "0"])
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"[1/1] {path} on host-1t: error: ")
    assert fragment in lines[0]


# ------------------------------------------------------------------------------ train

TRAIN = {
    "sparsity_above_range": (["--prune_sparsity=1.5"], 2,
                             ["flag --prune_sparsity=1.5", "range [0.0, 0.99]"]),
    "sparsity_nan": (["--prune_sparsity=nan"], 1, ["--prune_sparsity must be a finite number"]),
    "learning_rate_inf": (["--learning_rate=inf"], 1,
                          ["--learning_rate must be a finite number, got inf"]),
    "learning_rate_0": (["--learning_rate=0"], 1, ["learning_rate must be > 0, got 0.0"]),
    "learning_rate_diverges": (["--learning_rate=1e30"], 1,
                               ["the trained model (saved as {tmp}/run/model.keras)",
                                "NaN", "lower the learning rate"]),
    "learning_rate_nan": (["--learning_rate=nan"], 1, ["--learning_rate must be a finite"]),
    "epochs_negative": (["--epochs=-1"], 2, ["flag --epochs=-1", "non-negative"]),
    "batch_size_0": (["--batch_size=0"], 2, ["flag --batch_size=0", "positive"]),
    "clusters_1": (["--cluster_clusters=1"], 2, ["flag --cluster_clusters=1", ">= 2"]),
    "clusters_not_a_number": (["--cluster_clusters=abc"], 2, ["--cluster_clusters=abc",
                                                              "invalid literal"]),
    "temperature_0": (["--teacher={good[keras]}", "--distill_temperature=0"], 1,
                      ["distill_temperature must be > 0"]),
    "temperature_inf": (["--teacher={good[keras]}", "--distill_temperature=inf"], 1,
                        ["--distill_temperature must be a finite number, got inf"]),
    "alpha_1.5": (["--teacher={good[keras]}", "--distill_alpha=1.5"], 1,
                  ["distill_alpha (the student loss weight) must be in [0, 1], got 1.5"]),
    "teacher_missing": (["--teacher={tmp}/nope.keras"], 1, ["--teacher", "nope.keras: no such"]),
    "init_model_random_bytes": (["--init_model={bad[random_keras]}"], 1,
                                ["random.keras: cannot load model: it is not a .keras"]),
    "init_model_missing": (["--init_model={tmp}/nope.keras"], 1, ["nope.keras: no such file"]),
    "init_model_does_not_fit_data": (["--init_model={good[keras]}",
                                      "--dataset=npz:{good[rgb_npz]}"], 1,
                                     ["--init_model", "takes inputs (8, 8, 1) but",
                                      "(12, 12, 3)"]),
    "unknown_model": (["--model=resnet50"], 2, ["flag --model=resnet50", "small_cnn"]),
    "model_options_not_key_value": (["--model_options=width"], 1,
                                    ["--model_options entry 'width' is not key=value"]),
    "model_options_unknown": (["--model_options=depth=3"], 1,
                              ["model 'small_cnn' has no option depth", "width"]),
    "structure_word": (["--prune_sparsity=0.5", "--prune_structure=banana"], 1,
                       ["--prune_structure: structure 'banana' is not 'M:N'"]),
    "dataset_missing": (["--dataset=npz:{tmp}/nope.npz"], 1, ["nope.npz: no such npz file"]),
    "dataset_unknown": (["--dataset=mnist"], 1, ["unknown dataset 'mnist'"]),
    "dataset_corrupt": (["--dataset=npz:{bad[truncated_npz]}"], 1,
                        ["truncated.npz: cannot read npz file"]),
    "dataset_one_sample": (["--dataset=npz:{tmp}/one.npz"], 1,
                           ["cannot split 1 sample(s) into training and test sets"]),
    "channel_ratio_1.5": (["--channel_prune_ratio=1.5"], 1,
                          ["channel_prune_ratio must be in (0, 1), got 1.5"]),
    "lowrank_energy_0": (["--lowrank_energy=0"], 1, ["lowrank_energy must be in (0, 1]"]),
    "qat_learning_rate_negative": (["--qat_learning_rate=-1"], 1,
                                   ["qat_learning_rate must be > 0, got -1.0"]),
    "qat_scheme_unknown": (["--qat_scheme=int4"], 2, ["flag --qat_scheme=int4", "default"]),
    "stray_argument": (["stray"], 2, ["unexpected arguments 'stray'", "--name=value"]),
    "unknown_flag": (["--sparsity=0.5"], 2, ["Unknown command line flag 'sparsity'"]),
    "teacher_nan_weights": (["--teacher={good[nan_keras]}", "--epochs=1"], 1,
                            ["the teacher ('nan_model') has 1 NaN value(s)", "layer 'conv'"]),
    "init_model_nan_then_prune": (["--init_model={good[nan_keras]}", "--epochs=0",
                                   "--prune_sparsity=0.5"], 1,
                                  ["the model to prune ('nan_model') has 1 NaN value(s)"]),
}


@pytest.mark.parametrize("flags, code, fragments", [
    pytest.param(flags, code, fragments, id=name)
    for name, (flags, code, fragments) in TRAIN.items()])
def test_train_bad_flags(run_main, one_error_line, good_files, corrupt_files, tmp_path, flags,
                         code, fragments):
    from absl import flags as absl_flags

    from tfcompress import cli
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 8, 8, 1), np.float32), y=np.zeros(1, int))
    if absl_flags.FLAGS.is_parsed():
        absl_flags.FLAGS.unparse_flags()  # absl flags are global: no values from earlier cases
    argv = ["train", f"--model_dir={tmp_path}/run", f"--dataset=npz:{good_files['npz']}",
            "--model_options=width=2", "--epochs=1", "--batch_size=8"]
    argv += _expand(flags, good_files, corrupt_files, tmp_path)
    exit_code, _, err = run_main(cli.main, argv)
    assert exit_code == code
    one_error_line(exit_code, err, *[f.format(tmp=tmp_path) for f in fragments])


# ---------------------------------------------------------- end to end, in processes

END_TO_END = {
    "inspect_random_bytes": (["inspect", "{bad[random_tflite]}"], 1,
                             ["not a TFLite flatbuffer"]),
    "run_set_through_a_number": (["run", "--recipe", "fashion_mnist", "--set", "seed.x.y=1",
                                  "--out", "{tmp}/run"], 1,
                                 ["--set seed.x.y: seed is 0, not a mapping or list, so it "
                                  "has no key 'x'"]),
    "train_learning_rate_inf": (["train", "--learning_rate=inf", "--model_dir={tmp}/train"], 1,
                                ["--learning_rate must be a finite number, got inf"]),
    "unknown_subcommand": (["prune"], 2, ["invalid choice: 'prune'"]),
}


@pytest.fixture(scope="module")
def processes(good_files, corrupt_files, tmp_path_factory):
    """Starts every END_TO_END command at once (run and train import TensorFlow: ~5 s alone)."""
    tmp = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TFCOMPRESS_DEBUG", None)
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "tfcompress.cli", *_expand(argv, good_files, corrupt_files, tmp)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (argv, _, _) in END_TO_END.items()}
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # a hang fails its test instead of the session
            proc.kill()
            out, err = proc.communicate()
        results[name] = (proc.returncode, out, err)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


@pytest.mark.parametrize("name", END_TO_END)
def test_end_to_end_exit_status_and_one_line(processes, one_error_line, name):
    code, out, err = processes[name]
    assert code == END_TO_END[name][1], (out, err)
    one_error_line(code, err, *END_TO_END[name][2])
