"""Untrusted files: loading never runs a file's code unless asked.

Models: a Lambda layer whose function writes a marker file when it runs (on a
load that rebuilds the model, or on predict) is refused by every loader, in
every format, and the marker does not appear; `allow_unsafe=True` loads it
(and the marker then appears, which shows the refusal is not vacuous). Also
refused: the safe-mode bypasses found here in tf_keras 2.21 (a TFOpLambda that
calls `tf.io.write_file` with constant arguments wrote its file during a
safe-mode load; a config naming `builtins.exec` or `os.system`), and a
SavedModel whose layers could only be revived from the file's TF graph.

Recipes: YAML is read with `yaml.safe_load`, so a `!!python` tag is a
RecipeError and runs nothing.

.tflite: a file that passes the flatbuffer check but crashes LiteRT (a
RESHAPE's shape input set to -1: SIGSEGV) is only ever opened in a child process by
evaluate (the probe) and benchmark (one process per model).
"""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import tfcompress
from tfcompress import cli
from tfcompress.errors import ModelLoadError
from tfcompress.keras import keras, tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORMATS = ("m.keras", "m.h5", "sm")


def _touch_model(marker):
    """8x8x1 -> 3 classes, with a Lambda that creates `marker` whenever it runs."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(3, name="dense")(x)
    x = keras.layers.Lambda(lambda t, path=str(marker): (open(path, "w").close(), t)[1],
                            name="touch")(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The Lambda model in every format, a clean .tflite of it, and npz data."""
    folder = tmp_path_factory.mktemp("untrusted")
    marker = folder / "MARKER"
    model = _touch_model(marker)
    paths = {name: str(tfcompress.save_model(model, folder / name)) for name in FORMATS}
    clean = keras.Model(model.input, keras.layers.Softmax()(model.get_layer("dense").output))
    from tflite_export.convert import convert
    (folder / "clean.tflite").write_bytes(convert(clean, "float32"))
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.uniform(0, 1, (30, 8, 8, 1)).astype(np.float32),
             y=rng.integers(0, 3, 30))
    return dict(paths, marker=marker, folder=folder, tflite=str(folder / "clean.tflite"),
                data=f"npz:{folder / 'data.npz'}")


@pytest.fixture()
def marker(files):
    """The marker path, absent at the start of the test (saving the model created it)."""
    if files["marker"].exists():
        files["marker"].unlink()
    return files["marker"]


def _refusal(message, path):
    assert str(path) in message
    assert "allow_unsafe=True" in message and "--allow_unsafe" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------- Lambda layers

@pytest.mark.parametrize("name", FORMATS)
def test_load_model_refuses_lambda_and_runs_nothing(files, marker, name):
    with pytest.raises(ModelLoadError, match=r"layer 'touch' is a Lambda layer") as err:
        tfcompress.load_model(files[name])
    _refusal(str(err.value), files[name])
    assert not marker.exists()
    # Allowed, the file's code runs: the model is rebuilt by calling the Lambda.
    model = tfcompress.load_model(files[name], allow_unsafe=True)
    assert isinstance(model.get_layer("touch"), keras.layers.Lambda)
    assert marker.exists()


def test_pruning_and_qat_loaders_refuse_lambda(files, marker):
    from tfcompress.pruning import load_pruned_model
    from tfcompress.quantization import load_qat_model
    for load in (load_pruned_model, load_qat_model):
        for name in ("m.keras", "m.h5"):
            with pytest.raises(ModelLoadError) as err:
                load(files[name])
            _refusal(str(err.value), files[name])
    assert not marker.exists()
    assert load_pruned_model(files["m.keras"], allow_unsafe=True).get_layer("touch")
    assert marker.exists()


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_cli_commands_refuse_lambda(files, marker, capsys, tmp_path):
    keras_file = files["m.keras"]
    commands = [
        ["export", keras_file, "--out", str(tmp_path / "exported")],
        ["sparsity", keras_file],
        ["evaluate", files["tflite"], "--data", files["data"], "--keras", keras_file],
        ["run", "--model", keras_file, "--data", files["data"], "--out", str(tmp_path / "run")],
    ]
    for argv in commands:
        code, _, err = _cli(capsys, *argv)
        assert code == 1, (argv, err)
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        _refusal(err, keras_file)
    assert not marker.exists()
    assert not (tmp_path / "exported").exists()
    # --allow_unsafe is the way through, where the command has it.
    code, out, err = _cli(capsys, "export", keras_file, "--out", str(tmp_path / "exported"),
                          "--allow_unsafe")
    assert code == 0, err
    assert (tmp_path / "exported" / "m_float32.tflite").stat().st_size > 1000
    code, out, err = _cli(capsys, "sparsity", keras_file, "--allow_unsafe", "--json")
    assert code == 0 and json.loads(out), err
    assert marker.exists()


def test_training_refuses_lambda_init_model_and_teacher(files, marker, tmp_path):
    from models.train_lib import TrainConfig, train
    for field in ("init_model", "teacher"):
        config = TrainConfig(model="small_cnn", model_options=dict(width=2), dataset=files["data"],
                             epochs=1, batch_size=16, model_dir=str(tmp_path / field), verbose=0,
                             **{field: files["m.keras"]})
        with pytest.raises(ModelLoadError) as err:
            train(config)
        _refusal(str(err.value), files["m.keras"])
    assert not marker.exists()


def test_training_binary_refuses_lambda_teacher(files, marker, tmp_path):
    # The absl binary: one `error:` line and a non-zero exit, nothing trained.
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "--model=small_cnn", "--model_options=width=2",
         f"--dataset={files['data']}", "--epochs=1", f"--teacher={files['sm']}",
         f"--model_dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    _refusal(errors[0], files["sm"])
    assert not marker.exists()
    assert not (tmp_path / "run" / "model.keras").exists()


# ----------------------------------------------------------------------------- safe-mode bypasses

def _rewrite_keras(src, dst, edit):
    with zipfile.ZipFile(src) as archive:
        config = json.loads(archive.read("config.json"))
        edit(config)
        with zipfile.ZipFile(dst, "w") as out:
            for name in archive.namelist():
                out.writestr(name, json.dumps(config) if name == "config.json"
                             else archive.read(name))
    return str(dst)


def test_tf_op_layer_that_writes_a_file_is_refused(tmp_path):
    # A TFOpLambda layer rebuilt with only constant arguments is called during the
    # load: with tf.io.write_file, Keras safe mode let a file write a file of its choosing.
    marker = tmp_path / "WRITTEN"
    inputs = keras.Input((4,))
    plain = tfcompress.save_model(keras.Model(inputs, tf.math.abs(inputs)), tmp_path / "p.keras")

    def edit(config):
        layer = next(l for l in config["config"]["layers"] if l["class_name"] == "TFOpLambda")
        layer["config"]["function"] = "io.write_file"
        layer["inbound_nodes"] = [["_CONSTANT_VALUE", -1, str(marker), {"contents": "pwned"}]]

    evil = _rewrite_keras(plain, tmp_path / "evil.keras", edit)
    with pytest.raises(ModelLoadError, match=r"calls tf\.io\.write_file") as err:
        tfcompress.load_model(evil)
    _refusal(str(err.value), evil)
    assert not marker.exists()
    # What safe mode alone did (tf_keras 2.21): the file was written, then the load failed.
    with pytest.raises(ModelLoadError):
        tfcompress.load_model(evil, allow_unsafe=True)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("module,function", [("builtins", "exec"), ("os", "system")])
def test_config_naming_code_outside_keras_is_refused(tmp_path, module, function):
    inputs = keras.Input((4,))
    plain = tfcompress.save_model(
        keras.Model(inputs, keras.layers.Dense(2, activation="relu", name="d")(inputs)),
        tmp_path / "p.keras")

    def edit(config):
        dense = next(l for l in config["config"]["layers"] if l["class_name"] == "Dense")
        dense["config"]["activation"] = {"module": module, "class_name": "function",
                                         "config": function, "registered_name": function}

    evil = _rewrite_keras(plain, tmp_path / "evil.keras", edit)
    with pytest.raises(ModelLoadError, match=rf"refers to {module}\.{function}, outside Keras"):
        tfcompress.load_model(evil)


def test_savedmodel_run_from_its_own_graph_is_refused(tmp_path):
    # A subclassed model has no config: Keras revives it from the SavedModel's graph,
    # which here writes a file on every call.
    marker = tmp_path / "CALLED"

    class Touch(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            tf.io.write_file(str(marker), "called")
            return self.dense(x)

    model = Touch()
    model(np.zeros((1, 4), np.float32))
    path = tfcompress.save_model(model, tmp_path / "sm")
    marker.unlink()
    with pytest.raises(ModelLoadError, match=r"would run the file's own TF graph") as err:
        tfcompress.load_model(path)
    _refusal(str(err.value), path)
    loaded = tfcompress.load_model(path, allow_unsafe=True)
    assert not marker.exists()
    loaded(np.zeros((1, 4), np.float32))
    assert marker.exists()


def test_unsafe_reason_passes_tfcompress_and_tfmot_objects():
    from tfcompress.saving import unsafe_reason
    ok = [{"class_name": "PruneLowMagnitude",
           "module": "tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper",
           "config": {"layer": {"class_name": "Dense", "module": "keras.layers", "config": {}}}},
          {"class_name": "TFOpLambda", "config": {"name": "add", "function": "__operators__.add"}},
          {"class_name": "TFOpLambda", "config": {"name": "r", "function": "nn.relu6"}},
          {"class_name": "function", "module": "builtins", "config": "relu"}]
    assert unsafe_reason(ok) is None
    for bad, words in [({"class_name": "TFOpLambda", "config": {"function": "print"}}, "tf.print"),
                       ({"class_name": "TFOpLambda", "config": {"function": "raw_ops.WriteFile"}},
                        "tf.raw_ops.WriteFile"),
                       ({"class_name": "function", "module": "tf_keras.__internal__",
                         "config": "enable_unsafe_deserialization"}, "enable_unsafe"),
                       ({"class_name": "__lambda__", "config": {"value": "..."}}, "Lambda")]:
        assert words in (unsafe_reason([bad]) or ""), bad
    # A class the caller passes in custom_objects is the caller's own code.
    mine = {"class_name": "MyLayer", "module": "my_project.layers", "config": {}}
    assert "my_project.layers.MyLayer" in unsafe_reason([mine])
    assert unsafe_reason([mine], custom_objects={"MyLayer": object}) is None


# ----------------------------------------------------------------------------- recipes

def test_recipe_with_python_tag_is_refused_and_runs_nothing(tmp_path, capsys):
    from tfcompress.config import RecipeError, load_recipe
    marker = tmp_path / "RAN"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n"
                      "stages: []\n")
    with pytest.raises(RecipeError, match=r"evil\.yaml is not valid YAML"):
        load_recipe(str(recipe))
    with pytest.raises(RecipeError, match=r"--set"):
        load_recipe("pretrained", overrides=[f"name=!!python/object/apply:os.system "
                                             f"['touch {marker}']"])
    code, _, err = _cli(capsys, "run", "--recipe", str(recipe), "--out", str(tmp_path / "out"))
    assert code == 1 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not marker.exists()


# ----------------------------------------------------------------------------- .tflite

def _crasher(path):
    """The clean .tflite with its RESHAPE's shape input set to -1 ("omitted")."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    with open(path, "rb") as f:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(f.read(), 0))
    reshape = next(op for op in model.subgraphs[0].operators
                   if model.operatorCodes[op.opcodeIndex].builtinCode
                   == schema.BuiltinOperator.RESHAPE)
    reshape.inputs = [int(reshape.inputs[0]), -1]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


_BARE_INTERPRETER = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()
for d in it.get_input_details(): it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
"""


def test_tflite_that_crashes_the_interpreter_stays_out_of_process(files, tmp_path, capsys):
    from tflite_export.benchmark import benchmark_models
    from tflite_export.evaluate import EvaluationError, TfliteRunner, evaluate_tflite
    from tflite_export.inspect import edgetpu_report, inspect_tflite
    path = tmp_path / "crasher.tflite"
    path.write_bytes(_crasher(files["tflite"]))
    bare = subprocess.run([sys.executable, "-c", _BARE_INTERPRETER, str(path)],
                          capture_output=True, timeout=120)
    if bare.returncode >= 0:
        pytest.skip("this LiteRT no longer crashes on an omitted RESHAPE shape")
    x = np.zeros((2, 8, 8, 1), np.float32)
    # Had these opened it in-process, pytest itself would have died here.
    with pytest.raises(EvaluationError, match=r"crasher\.tflite: .*crashed on it \(SIGSEGV"):
        evaluate_tflite(str(path), x, np.array([0, 1]), progress=False)
    with pytest.raises(EvaluationError, match="crashed"):
        TfliteRunner(path.read_bytes())
    result = benchmark_models([str(path)], runs=2, min_seconds=0, warmup=0, log=None)
    assert "crashed (SIGSEGV)" in result["results"][0]["error"] and result["failures"] == 1
    # The static readers never start the interpreter.
    assert inspect_tflite(str(path))["operators"] == 4  # conv, reshape, dense, softmax
    assert edgetpu_report(str(path))["compatible"] is False
    code, _, err = _cli(capsys, "evaluate", str(path), "--data", files["data"])
    assert code == 1 and "crashed" in err and len(err.splitlines()) == 1, err
