"""Bad recipes and `--set` overrides: one RecipeError naming the key and the valid choices.

Everything here is checked when the recipe loads, before any stage trains: a
mistake in the last stage must not cost the minutes the first ones take.
"""

import pytest

from tfcompress.config import RecipeError, load_recipe, recipe_from_dict

BASE = {"teacher": {"model": "small_cnn", "options": {"width": 4}},
        "student": {"model": "small_cnn"},
        "stages": [{"train": {"epochs": 1}}], "benchmark": {"devices": []}}


def _with(**changes):
    return {**BASE, **changes}


def _stage(kind, **settings):
    return _with(stages=[{"train": {"epochs": 1}}, {kind: settings}])


BAD_RECIPES = {
    # unknown keys, at every level
    "unknown_top_level_key": (_with(epochs=3), ["recipe: unknown key 'epochs'",
                                                "valid keys: name, description, seed"]),
    "unknown_data_key": (_with(data={"datset": "x"}), ["data: unknown key 'datset'",
                                                       "valid keys: dataset"]),
    "unknown_teacher_key": (_with(teacher={"modle": "small_cnn"}),
                            ["teacher: unknown key 'modle'", "model, options, path"]),
    "unknown_export_key": (_with(export={"mode": ["float32"]}), ["export: unknown key 'mode'",
                                                                 "modes"]),
    "unknown_benchmark_key": (_with(benchmark={"device": ["host-1t"]}),
                              ["benchmark: unknown key 'device'", "devices"]),
    "unknown_stage": (_stage("squeeze"), ["stages[1]: unknown stage 'squeeze'",
                                          "valid stages: train, distill"]),
    "unknown_stage_key": (_stage("prune", sparsty=0.5), ["stages[1].prune: unknown key 'sparsty'",
                                                         "sparsity"]),
    "two_stages_in_one_item": (_with(stages=[{"train": {}, "prune": {}}]),
                               ["stages[0] must be one mapping like {prune:"]),
    "unknown_zoo_option": (_with(student={"model": "small_cnn", "options": {"depth": 3}}),
                           ["student.options: zoo model 'small_cnn' has no option 'depth'",
                            "valid: width"]),
    # wrong types
    "stages_not_a_list": (_with(stages={"train": {}}), ["stages must be a list"]),
    "section_not_a_mapping": (_with(data=7), ["data must be a mapping of keys to values, got 7"]),
    "epochs_fractional": (_with(stages=[{"train": {"epochs": 1.5}}]),
                          ["stages[0].train.epochs: expected int, got 1.5"]),
    "sparsity_a_word": (_stage("prune", sparsity="high"), ["sparsity: expected float, got 'high'"]),
    "exclude_a_string": (_stage("prune", exclude="conv1"), ["exclude: expected list, got 'conv1'"]),
    "exclude_numbers": (_stage("prune", exclude=[1, 2]), ["prune.exclude must be a list of layer "
                                                          "names"]),
    "seed_negative": (_with(seed=-1), ["recipe.seed must be an integer >= 0, got -1"]),
    "name_null": (_with(name=None), ["recipe.name: expected str, got None"]),
    # values out of range
    "sparsity_1": (_stage("prune", sparsity=1.0), ["stages[1].prune.sparsity must be in (0, 1), "
                                                   "got 1.0"]),
    "sparsity_nan": (_stage("prune", sparsity=float("nan")), ["sparsity must be in (0, 1), got "
                                                              "nan"]),
    "structure_word": (_stage("prune", structure="banana"),
                       ["stages[1].prune.structure: 'banana' is not 'M:N'"]),
    "schedule_unknown": (_stage("prune", schedule="cosine"),
                         ["schedule: unknown 'cosine'; valid: polynomial, constant"]),
    "clusters_1": (_stage("cluster", clusters=1, preserve_sparsity=False),
                   ["stages[1].cluster.clusters must be >= 2, got 1"]),
    "clusters_2_preserving_sparsity": (_stage("cluster", clusters=2),
                                       ["clusters must be >= 3 with preserve_sparsity, got 2"]),
    "cluster_init_unknown": (_stage("cluster", init="density-based"),
                             ["init: unknown 'density-based'; valid: kmeans++, linear, density"]),
    "temperature_0": (_stage("distill", temperature=0), ["distill.temperature must be in (0, "
                                                         "1000], got 0.0"]),
    "temperature_inf": (_stage("distill", temperature=float("inf")),
                        ["distill.temperature must be in (0, 1000], got inf"]),
    "alpha_above_1": (_stage("distill", alpha=1.5), ["distill.alpha must be in [0, 1], got 1.5"]),
    "alpha_negative_in_qat": (_stage("qat", alpha=-0.1), ["qat.alpha must be in [0, 1], got -0.1"]),
    "learning_rate_nan": (_with(stages=[{"train": {"learning_rate": float("nan")}}]),
                          ["train.learning_rate must be in (0, 10], got nan"]),
    "learning_rate_0": (_with(stages=[{"train": {"learning_rate": 0}}]),
                        ["train.learning_rate must be in (0, 10], got 0.0"]),
    "batch_size_0": (_with(stages=[{"train": {"batch_size": 0}}]),
                     ["stages[0].train.batch_size must be >= 1, got 0"]),
    "epochs_0_for_prune": (_stage("prune", epochs=0), ["prune.epochs must be >= 1, got 0"]),
    "channel_ratio_1": (_stage("channel_prune", ratio=1.0), ["channel_prune.ratio must be in "
                                                             "[0, 1), got 1.0"]),
    "lowrank_energy_0": (_stage("lowrank", energy=0.0), ["lowrank.energy must be in (0, 1]"]),
    "qat_scheme_unknown": (_stage("qat", scheme="int4"), ["scheme: unknown 'int4'; valid: auto"]),
    "test_fraction_1": (_with(data={"test_fraction": 1.0}), ["data.test_fraction must be in "
                                                             "(0, 1), got 1.0"]),
    "calibration_samples_0": (_with(data={"calibration_samples": 0}),
                              ["data.calibration_samples must be an integer >= 1, got 0"]),
    "export_modes_empty": (_with(export={"modes": []}), ["export.modes must be a non-empty list"]),
    "export_mode_unknown": (_with(export={"modes": ["int4"]}), ["export.modes: unknown mode "
                                                                "'int4'; valid: float32"]),
    "stage_export_mode_unknown": (_stage("prune", export=["int2"]),
                                  ["stages[1].prune.export: unknown mode 'int2'"]),
    "export_batch_0": (_with(export={"batch_size": 0}), ["export.batch_size must be an integer "
                                                         ">= 1, got 0"]),
    "benchmark_runs_0": (_with(benchmark={"devices": [], "runs": 0}),
                         ["benchmark.runs must be an integer >= 1, got 0"]),
    "benchmark_min_seconds_negative": (_with(benchmark={"devices": [], "min_seconds": -1}),
                                       ["benchmark.min_seconds must be in [0, inf), got -1.0"]),
    "benchmark_warmup_negative": (_with(benchmark={"devices": [], "warmup": -1}),
                                  ["benchmark.warmup must be >= 0, got -1"]),
    "benchmark_unknown_device": (_with(benchmark={"devices": ["pixel9"]}),
                                 ["benchmark.devices: unknown device profile 'pixel9'",
                                  "host-1t, host-2t"]),
    "benchmark_devices_file_missing": (
        _with(benchmark={"devices": ["host-1t"], "devices_file": "/nonexistent/devices.json"}),
        ["benchmark.devices_file: /nonexistent/devices.json: cannot read the device profile"]),
    # stages that cannot follow each other
    "qat_not_last": (_with(stages=[{"train": {}}, {"qat": {}}, {"prune": {}}]),
                     ["stages[1]: qat must be the last stage"]),
    "train_not_first": (_with(stages=[{"train": {}}, {"train": {}}]),
                        ["a train stage may only come first"]),
    "distill_without_student": (_with(student={}, stages=[{"train": {}}, {"distill": {}}]),
                                ["a distill stage needs a student"]),
    "zoo_teacher_without_training": (_with(stages=[{"prune": {}}]),
                                     ["zoo model with random weights: start stages with a train"]),
    "teacher_path_missing": (_with(teacher={"path": "/nonexistent/model.keras"}, stages=[]),
                             ["teacher.path /nonexistent/model.keras: no such file"]),
    "teacher_model_and_path": (_with(teacher={"model": "small_cnn", "path": "x.keras"}),
                               ["teacher: give either model (a zoo name) or path"]),
}


@pytest.mark.parametrize("values, fragments", [pytest.param(v, f, id=k)
                                               for k, (v, f) in BAD_RECIPES.items()])
def test_bad_recipe_values(values, fragments):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(values)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_a_good_base_recipe_loads():
    """The cases above differ from BASE in one place only: BASE itself must be valid."""
    assert [s.kind for s in recipe_from_dict(BASE).stages] == ["train"]


BAD_OVERRIDES = {
    "no_equals_sign": ("epochs", ["--set 'epochs': expected KEY=VALUE"]),
    "empty_key": ("=1", ["--set '=1': empty key", "single dots"]),
    "double_dot": ("stages..train=1", ["empty key in 'stages..train'"]),
    "trailing_dot": ("data.=1", ["empty key in 'data.'"]),
    "through_a_number": ("seed.x.y=1", ["--set seed.x.y: seed is 0, not a mapping or list, so "
                                        "it has no key 'x'"]),
    "last_key_under_a_number": ("seed.x=1", ["--set seed.x: seed is 0, not a mapping or list"]),
    "through_a_string": ("name.first=1", ["name is 'fashion_mnist', not a mapping"]),
    "list_index_out_of_range": ("stages.9.train.epochs=1", ["--set stages.9.train.epochs: no "
                                                            "list item '9'"]),
    "list_index_negative": ("stages.-1.train.epochs=1", ["no list item '-1'"]),
    "list_index_a_word": ("stages.first.train.epochs=1", ["no list item 'first'"]),
    "value_not_yaml": ("stages.0.train.epochs=[1", ["the value is not valid YAML",
                                                    "quoted string"]),
    "unknown_top_level_key": ("epochs=3", ["recipe: unknown key 'epochs'"]),
    "unknown_section_key": ("data.bogus=1", ["data: unknown key 'bogus'"]),
    "unknown_stage_key": ("stages.0.train.bogus=1", ["stages[0].train: unknown key 'bogus'"]),
    "wrong_stage_kind": ("stages.0.prune.sparsity=0.5", ["stages[0] must be one mapping"]),
    "replace_a_stage_by_a_number": ("stages.0=7", ["stages[0] must be one mapping"]),
    "replace_stages_by_a_number": ("stages=7", ["stages must be a list, got 7"]),
    "value_out_of_range": ("stages.1.prune.sparsity=1.5", ["stages[1].prune.sparsity must be in "
                                                           "(0, 1), got 1.5"]),
    "value_nan": ("stages.1.prune.temperature=.nan", ["temperature must be in (0, 1000], got "
                                                      "nan"]),
    "value_wrong_type": ("stages.1.prune.epochs=1.5", ["stages[1].prune.epochs: expected int"]),
    "unknown_allocation": ("stages.1.prune.allocation=global", [
        "stages[1].prune.allocation: unknown 'global'; valid: uniform, sensitivity"]),
    "allocation_with_structure": ("stages.1.prune.structure='2:4'", [
        "allocation sensitivity gives each layer its own sparsity", "allocation: uniform"]),
    "budget_out_of_range": ("budget.max_drop=-1", ["budget.max_drop must be points in [0, 100]"]),
    "unknown_device": ("benchmark.devices=[pixel9]", ["unknown device profile 'pixel9'"]),
}


@pytest.mark.parametrize("override, fragments", [pytest.param(o, f, id=k)
                                                 for k, (o, f) in BAD_OVERRIDES.items()])
def test_bad_set_overrides(override, fragments):
    with pytest.raises(RecipeError) as info:
        load_recipe("fashion_mnist", overrides=[override])
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("text, suffix, fragments", [
    pytest.param("stages: [train: {epochs: 1}\n", ".yaml", ["is not valid YAML"], id="bad_yaml"),
    pytest.param('{"stages": [', ".json", ["is not valid JSON"], id="bad_json"),
    pytest.param("- just\n- a list\n", ".yaml", ["a recipe must be a mapping at the top level"],
                 id="list_at_top"),
    pytest.param("", ".yaml", ["a recipe must be a mapping at the top level"], id="empty_file"),
    pytest.param("name: !!python/object:os.system [echo]\n", ".yaml", ["is not valid YAML"],
                 id="python_tag"),
])
def test_bad_recipe_files(tmp_path, text, suffix, fragments):
    path = tmp_path / f"recipe{suffix}"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    assert str(path) in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_binary_and_missing_recipe_files(tmp_path, corrupt_files):
    with pytest.raises(RecipeError, match=r"random\.keras is not a text \(YAML or JSON\) recipe"):
        load_recipe(corrupt_files["random_keras"])
    with pytest.raises(RecipeError, match=r"recipe file .*nope\.yaml does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(RecipeError, match=r"is a folder; give a YAML or JSON recipe file"):
        load_recipe(str(tmp_path))
