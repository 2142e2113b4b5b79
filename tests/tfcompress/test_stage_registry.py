"""The stage registry: a new stage kind is one class, and everything reads the registry."""

import dataclasses
import os
import re
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

from tfcompress import config, distribute, stages
from tfcompress.errors import RecipeError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def noise_stage():
    """A toy stage kind, written as a user would write tfcompress/stages/noise.py."""

    @stages.register
    @dataclasses.dataclass
    class NoiseStage(stages.Training):
        """Adds Gaussian noise to every kernel, then fine-tunes."""
        KIND: ClassVar[str] = "noise"
        ORDER: ClassVar[int] = 65
        MIN_EPOCHS: ClassVar[int] = 0
        REFUSED: ClassVar[dict] = {"parameter_server": ("toy", "use mirrored")}
        stddev: float = 0.01
        epochs: int = 0

        def check(self, where):
            stages.number_in(self.stddev, 0, 1, where + ".stddev", lo_open=True)

        def run(self, model, ctx):
            rng = np.random.default_rng(ctx.seed)
            model.set_weights([w + rng.normal(0, self.stddev, w.shape).astype(w.dtype)
                               for w in model.get_weights()])
            return model, {"stddev": self.stddev}

    yield NoiseStage
    stages.base._REGISTRY.pop("noise")


def test_built_in_kinds_in_pipeline_order():
    assert stages.kinds() == ("train", "distill", "prune", "channel_prune", "lowrank",
                              "cluster", "qat")
    assert stages.get("prune") is config.PruneStage
    with pytest.raises(RecipeError, match="unknown stage 'squeeze'; valid stages: train, "):
        stages.get("squeeze")


def test_a_registered_stage_is_parsed_validated_and_in_the_support_matrix(noise_stage):
    recipe = config.recipe_from_dict({
        "teacher": {"model": "small_cnn"},
        "stages": [{"train": {"epochs": 1}}, {"noise": {"stddev": 0.05}}]})
    assert recipe.stages[1].kind == "noise"
    assert recipe.stages[1].settings == noise_stage(stddev=0.05)
    with pytest.raises(RecipeError, match=r"stages\[1\].noise.stddev must be in \(0, 1\]"):
        config.recipe_from_dict({"teacher": {"model": "small_cnn"},
                                 "stages": [{"train": {}}, {"noise": {"stddev": 2}}]})
    with pytest.raises(RecipeError, match=r"unknown key 'std'; valid keys: epochs"):
        config.recipe_from_dict({"teacher": {"model": "small_cnn"},
                                 "stages": [{"train": {}}, {"noise": {"std": 2}}]})
    assert distribute.support_matrix()["noise"] == {
        "default": "works", "mirrored": "works", "multi_worker": "works",
        "parameter_server": "fails with message"}
    with pytest.raises(distribute.DistributeError, match="stage 'noise' cannot run under "
                                                        "strategy 'parameter_server': toy"):
        distribute.check_supported("noise", "parameter_server")
    assert "`noise`" in stages.markdown_table()


def test_a_registered_stage_runs_through_run_stage(noise_stage, tmp_path):
    from tfcompress.keras import keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    before = model.get_weights()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    ctx = stages.StageContext(x, y, x, y, work_dir=str(tmp_path))
    out, info = stages.run_stage("noise", model, noise_stage(stddev=0.5), ctx)
    assert info["stddev"] == 0.5 and 0 <= info["keras_test_accuracy"] <= 1
    assert info["parameters"] == 15
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(before, out.get_weights())) > 0.1


def test_position_rules_come_from_the_classes():
    with pytest.raises(RecipeError, match="a train stage may only come first"):
        config.recipe_from_dict({"teacher": {"model": "small_cnn"},
                                 "stages": [{"train": {}}, {"prune": {}}, {"train": {}}]})
    with pytest.raises(RecipeError, match=r"stages\[1\]: qat must be the last stage"):
        config.recipe_from_dict({"teacher": {"model": "small_cnn"},
                                 "stages": [{"train": {}}, {"qat": {}}, {"prune": {}}]})


def test_readme_stage_table_is_the_registry_s():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    table = re.search(r"<!-- stages:begin -->\n(.*?)\n<!-- stages:end -->", readme, re.S)
    assert table, "README.md lost its generated stage table"
    assert table.group(1) == stages.markdown_table(), (
        "README's stage table is stale: paste stages.markdown_table() between the markers")


def test_export_modes_are_read_from_the_converter_s_rows():
    from tflite_export import convert
    assert config.EXPORT_MODES == tuple(convert.MODES) == (
        "float32", "float16", "dynamic", "int8", "int8_full", "int16x8", "int4_weights",
        "int4_dynamic", "int4_adaround", "int4_mixed", "int4_w4a8")
    assert config.QATStage().export_modes(["float32", "int8", "float16", "int4_weights"]) == \
        ["int8"]
    assert config.QATStage().export_modes(["float32"]) == ["int8_full"]


def test_public_api_is_lazy_and_guessable():
    code = ("import sys, tfcompress as tfc\n"
            "assert 'tensorflow' not in sys.modules\n"
            "assert tfc.stages.kinds()[0] == 'train'\n"
            "assert 'tensorflow' not in sys.modules, 'stages imported TensorFlow'\n"
            "assert callable(tfc.pruning.prune) and callable(tfc.quantization.quantize)\n"
            "assert tfc.distillation.Distiller.__name__ == 'Distiller'\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
