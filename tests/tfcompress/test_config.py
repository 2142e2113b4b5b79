"""Recipes: built-ins load, unknown keys and bad values name the key, YAML is safe."""

import json

import pytest

from tfcompress import config
from tfcompress.config import RecipeError, load_recipe, recipe_from_dict

TINY = {"teacher": {"model": "small_cnn"}, "stages": [{"train": {"epochs": 1}}]}


def test_builtin_recipes_load_and_are_listed():
    names = config.list_recipes()
    assert {"fashion_mnist", "pretrained"} <= set(names)
    recipe = load_recipe("fashion_mnist")
    assert [s.kind for s in recipe.stages] == ["train", "prune", "prune"]
    for stage, sparsity in zip(recipe.stages[1:], (0.85, 0.93)):
        prune = stage.settings
        assert (prune.sparsity, prune.allocation, prune.distill) == (sparsity, "sensitivity",
                                                                     False)
    assert recipe.teacher.options == {"width": 24}
    assert recipe.budget.max_drop == 1.0
    assert "int8_full" in recipe.export.modes


def test_pretrained_recipe_needs_a_model_path():
    with pytest.raises(RecipeError, match="teacher: give model"):
        load_recipe("pretrained")


def test_overrides_set_nested_values(tmp_path):
    recipe = load_recipe("fashion_mnist", overrides=["stages.0.train.epochs=1",
                                                     "data.max_train_samples=500",
                                                     "export.modes=[float32]"])
    assert recipe.stages[0].settings.epochs == 1
    assert recipe.data.max_train_samples == 500
    assert recipe.export.modes == ["float32"]
    with pytest.raises(RecipeError, match="no list item '9'"):
        load_recipe("fashion_mnist", overrides=["stages.9.train.epochs=1"])
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe("fashion_mnist", overrides=["epochs"])


@pytest.mark.parametrize("values, message", [
    ({**TINY, "epochs": 3}, "unknown key 'epochs'; valid keys: name, description, seed"),
    ({**TINY, "data": {"datset": "x"}}, r"data: unknown key 'datset'; valid keys: dataset"),
    ({**TINY, "stages": [{"train": {"epoch": 1}}]},
     r"stages\[0\].train: unknown key 'epoch'; valid keys: epochs"),
    ({**TINY, "stages": [{"train": {}}, {"squeeze": {}}]},
     r"stages\[1\]: unknown stage 'squeeze'; valid stages: train, distill, prune"),
    ({**TINY, "stages": [{"train": {}}, {"prune": {"sparsity": 1.0}}]},
     r"stages\[1\].prune.sparsity must be in \(0, 1\), got 1.0"),
    ({**TINY, "stages": [{"train": {}}, {"prune": {"sparsity": "high"}}]},
     r"sparsity: expected float, got 'high'"),
    ({**TINY, "stages": [{"train": {"epochs": 1.5}}]}, r"epochs: expected int, got 1.5"),
    ({**TINY, "stages": [{"train": {}}, {"qat": {"scheme": "fancy"}}]},
     r"scheme: unknown 'fancy'; valid: auto, default, prune_preserving"),
    ({**TINY, "stages": [{"train": {}}, {"distill": {"alpha": 1.5}}]}, r"alpha must be in \[0, 1\]"),
    ({**TINY, "stages": [{"train": {}}, {"distill": {"temperature": 0}}]}, r"temperature must be in"),
    ({**TINY, "stages": [{"train": {}}, {"cluster": {"clusters": 1}}]},
     r"clusters must be >= 3 with preserve_sparsity"),
    ({**TINY, "export": {"modes": ["int4"]}}, r"export.modes: unknown mode 'int4'; valid: float32"),
    ({**TINY, "export": {"keras3": "yes"}}, r"export.keras3: expected bool, got 'yes'"),
    ({**TINY, "teacher": {"model": "resnet50"}}, r"teacher.model: unknown zoo model 'resnet50'"),
    ({**TINY, "teacher": {"path": "/no/such/model.keras"}}, r"teacher.path /no/such/model.keras: no such"),
    ({**TINY, "stages": [{"train": {}}, {"distill": {}}]}, r"a distill stage needs a student"),
    ({**TINY, "stages": [{"train": {}}, {"qat": {}}, {"prune": {}}]}, r"qat must be the last stage"),
    ({"teacher": {"model": "small_cnn"}, "stages": [{"prune": {}}]}, r"start stages with a train stage"),
    ({**TINY, "seed": -1}, r"seed must be an integer >= 0"),
    ({**TINY, "stages": [{"train": {}, "prune": {}}]}, r"must be one mapping"),
    ({**TINY, "data": {"scale": "0-1"}}, r"data.scale: unknown '0-1'; valid: auto, unit, none"),
    ({**TINY, "data": {"mean": ["a"]}}, r"data.mean must be a number or a list of numbers"),
    ({**TINY, "data": {"std": [0.5, 0]}}, r"data.std must be > 0"),
    ({**TINY, "stages": [{"train": {}}, {"qat": {"exclude_layers": "conv1"}}]},
     r"exclude_layers: expected list, got 'conv1'"),
    ({**TINY, "stages": [{"train": {}}, {"qat": {"exclude_types": [3]}}]},
     r"qat.exclude_types must be a list of layer names"),
    ({**TINY, "stages": [{"train": {}}, {"cluster": {"exclude": [None]}}]},
     r"cluster.exclude must be a list of layer names"),
    ({**TINY, "chance_check": "no"}, r"chance_check: expected bool"),
])
def test_bad_recipes_name_the_key(values, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(values)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned")
                    + "']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(path))
    assert not (tmp_path / "pwned").exists()


def test_json_recipes_and_file_errors(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(TINY))
    assert load_recipe(str(path)).stages[0].settings.epochs == 1
    path.write_text("{not json")
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))
    with pytest.raises(RecipeError, match="no built-in recipe 'nope'; built-in: fashion_mnist"):
        load_recipe("nope")


def test_stage_hash_changes_only_downstream():
    base = recipe_from_dict({**TINY, "stages": [{"train": {}}, {"prune": {"sparsity": 0.5}}]})
    changed = recipe_from_dict({**TINY, "stages": [{"train": {}}, {"prune": {"sparsity": 0.6}}]})
    assert base.stage_hash(0) == changed.stage_hash(0)
    assert base.stage_hash(1) != changed.stage_hash(1)
    # Evaluation settings do not retrain anything.
    evaluated = recipe_from_dict({**TINY, "stages": [{"train": {}}, {"prune": {"sparsity": 0.5}}],
                                  "data": {"eval_samples": 100}})
    assert evaluated.stage_hash(1) == base.stage_hash(1)


def test_student_changes_do_not_retrain_the_teacher():
    stages = [{"train": {}}, {"distill": {}}]
    a = recipe_from_dict({**TINY, "stages": stages, "student": {"model": "small_cnn"}})
    b = recipe_from_dict({**TINY, "stages": stages,
                          "student": {"model": "small_cnn", "options": {"width": 4}}})
    assert a.stage_hash(0) == b.stage_hash(0) and a.stage_hash(1) != b.stage_hash(1)


def test_channel_prune_and_lowrank_settings_are_checked():
    with pytest.raises(RecipeError, match="give ratio .* or target_macs, not both"):
        recipe_from_dict({**TINY, "stages": [{"train": {}},
                                             {"channel_prune": {"target_macs": 0.5}}]})
    with pytest.raises(RecipeError, match="criterion: unknown 'random'; valid: l1, l2"):
        recipe_from_dict({**TINY, "stages": [{"train": {}},
                                             {"channel_prune": {"criterion": "random"}}]})
    with pytest.raises(RecipeError, match=r"energy must be in \(0, 1\]"):
        recipe_from_dict({**TINY, "stages": [{"train": {}}, {"lowrank": {"energy": 1.5}}]})
    ok = recipe_from_dict({**TINY, "stages": [{"train": {}}, {"channel_prune": {
        "ratio": None, "target_macs": 0.5, "distill": True}}, {"lowrank": {"epochs": 0}}]})
    assert ok.stages[1].settings.target_macs == 0.5


def test_qat_exports_only_int8_modes_by_default():
    recipe = recipe_from_dict({**TINY, "stages": [{"train": {}}, {"qat": {}}],
                               "export": {"modes": ["float32", "dynamic", "int8_full"]}})
    assert recipe.stage_modes(0) == ["float32", "dynamic", "int8_full"]
    assert recipe.stage_modes(1) == ["int8_full"]
