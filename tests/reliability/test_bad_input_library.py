"""Bad input to the library's model entry points: one clear, specific error each.

Out-of-range settings, NaN/Inf weights, layers TFMOT cannot handle, Keras 3
models, corrupt model and .tflite files, and data that does not fit a model.
Each case checks the message names the field, layer or file, and the fix.
"""

import numpy as np
import pytest

import tfcompress
from tfcompress import (channel_pruning, clustering, distillation, lowrank, pruning,
                        quantization, schedules)
from tfcompress.errors import ModelLoadError, NonFiniteWeightsError
from tfcompress.keras import keras, tf
from tflite_export import convert as convert_lib
from tflite_export import evaluate, inspect
from tflite_export.tflite_file import TfliteFileError

NAN, INF = float("nan"), float("inf")


def _cases(table):
    """{id: (call, error class, fragments)} -> pytest params with readable ids."""
    return [pytest.param(*value, id=key) for key, value in table.items()]


def _raises(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ------------------------------------------------------------ settings out of range

SPARSITY = "target_sparsity must be a number in [0, 1)"
CLUSTERS = "number_of_clusters must be an integer >= 2"
TEMPERATURE = "temperature must be a finite number > 0"
WEIGHT = "student_loss_weight must be a number in [0, 1]"

BAD_SETTINGS = {
    **{f"sparsity_{v!r}": (lambda v=v: pruning.PruningConfig(target_sparsity=v), ValueError,
                           [SPARSITY, repr(v)]) for v in (1.0, -0.1, NAN, INF, "0.5", True)},
    "per_layer_sparsity_1": (lambda: pruning.PruningConfig(0.5, per_layer={"conv": 1.0}),
                             ValueError, ["per_layer['conv'] must be a number in [0, 1)"]),
    "structure_5_of_4": (lambda: pruning.PruningConfig(structure="5:4"), ValueError,
                         ["structure '5:4'", "0 < M < N"]),
    "structure_word": (lambda: pruning.PruningConfig(structure="banana"), ValueError,
                       ["'banana' is not 'M:N'", "'HxW'"]),
    "structure_contradicts_sparsity": (
        lambda: pruning.PruningConfig(0.8, structure="2:4"), ValueError,
        ["target_sparsity 0.8 contradicts structure '2:4'"]),
    "policy_unknown": (lambda: pruning.PruningConfig(policy="gpu"), ValueError,
                       ["unknown policy 'gpu'", "'xnnpack'"]),
    "schedule_final_1": (lambda: schedules.PolynomialDecay(1.0, begin_step=0, end_step=9),
                         ValueError, ["final_sparsity must be a number in [0, 1), got 1.0"]),
    "schedule_constant_nan": (lambda: schedules.ConstantSparsity(NAN, begin_step=0),
                              ValueError, ["target_sparsity must be a number in [0, 1), got nan"]),
    "schedule_initial_above_final": (
        lambda: schedules.PolynomialDecay(0.3, initial_sparsity=0.5, begin_step=0, end_step=9),
        ValueError, ["initial_sparsity (0.5) must not exceed final_sparsity (0.3)"]),
    "schedule_begin_after_end": (lambda: schedules.PolynomialDecay(0.5, begin_step=9, end_step=2),
                                 ValueError, ["begin_step (9) must be before end_step (2)"]),
    "schedule_frequency_0": (
        lambda: schedules.PolynomialDecay(0.5, begin_step=0, end_step=9, frequency=0),
        ValueError, ["frequency must be an integer number of steps >= 1, got 0"]),
    "schedule_power_negative": (
        lambda: schedules.PolynomialDecay(0.5, begin_step=0, end_step=9, power=-1),
        ValueError, ["power must be a number > 0, got -1"]),
    "schedule_mixed_units": (lambda: schedules.PolynomialDecay(0.5, begin_step=0, end_epoch=3),
                             ValueError, ["state begin and end in one unit", "end_epoch"]),
    "schedule_fraction_above_1": (
        lambda: schedules.PolynomialDecay(0.5, begin_fraction=0, end_fraction=1.5), ValueError,
        ["end_fraction must be a number in [0, 1], got 1.5"]),
    "schedule_unknown_name": (lambda: schedules.get("cosine"), ValueError,
                              ["unknown pruning schedule 'cosine'", "'polynomial'"]),
    "schedule_not_a_schedule": (lambda: schedules.get(5), ValueError,
                                ["cannot interpret 5 as a pruning schedule"]),
    **{f"clusters_{v!r}": (lambda v=v: clustering.ClusteringConfig(number_of_clusters=v),
                           clustering.ClusteringError, [CLUSTERS, repr(v)])
       for v in (0, 1, -3, 2.5, NAN, "16", True, None)},
    "clusters_2_preserving_sparsity": (
        lambda: clustering.ClusteringConfig(2, preserve_sparsity=True),
        clustering.ClusteringError, ["number_of_clusters must be an integer >= 3 with "
                                     "preserve_sparsity"]),
    "cluster_per_layer_1": (lambda: clustering.ClusteringConfig(8, per_layer={"conv": 1}),
                            clustering.ClusteringError, ["per_layer['conv'] must be an integer"]),
    "cluster_init_unknown": (lambda: clustering.ClusteringConfig(8, init="density-based"),
                             clustering.ClusteringError,
                             ["unknown centroid init 'density-based'", "kmeans++, linear"]),
    **{f"temperature_{v!r}": (lambda v=v: distillation.LogitsDistillation(temperature=v),
                              distillation.DistillationError, [TEMPERATURE, repr(v)])
       for v in (0, -1, NAN, INF, "4", True, None)},
    "feature_loss_unknown": (lambda: distillation.FeatureDistillation("a", "b", loss="l1"),
                             distillation.DistillationError, ["'mse' or 'cosine'"]),
    "qat_scheme_unknown": (lambda: quantization.QATConfig(scheme="int4"),
                           quantization.QuantizationError,
                           ["unknown QAT scheme 'int4'", "prune_preserving"]),
    "qat_per_tensor_string": (lambda: quantization.QATConfig(per_tensor="yes"),
                              quantization.QuantizationError,
                              ["per_tensor must be True or False, got 'yes'"]),
    "qat_exclude_bad_regex": (lambda: quantization.QATConfig(exclude_layers=["conv("]),
                              quantization.QuantizationError,
                              ["exclude_layers: 'conv(' is not a layer name or regular"]),
    "qat_exclude_type_number": (lambda: quantization.QATConfig(exclude_types=[42]),
                                quantization.QuantizationError,
                                ["exclude_types: 42 is not a Keras layer class"]),
    "qat_quantize_config_number": (lambda: quantization.QATConfig(quantize_configs={"conv": 5}),
                                   quantization.QuantizationError,
                                   ["quantize_configs['conv']", "QuantizeConfig instance"]),
    "lowrank_energy_1.5": (lambda: lowrank.LowRankConfig(energy=1.5), lowrank.LowRankError,
                           ["energy must be in (0, 1], got 1.5"]),
    "channel_ratio_1.5": (lambda: channel_pruning.ChannelPruningConfig(ratio=1.5),
                          channel_pruning.ChannelPruningError,
                          ["ratio must be a fraction of channels to remove in [0, 1)"]),
}


@pytest.mark.parametrize("call, error, fragments", _cases(BAD_SETTINGS))
def test_settings_out_of_range(call, error, fragments):
    _raises(call, error, fragments)


@pytest.mark.parametrize("kwargs, fragments", [
    pytest.param(dict(student_loss_weight=v), [WEIGHT, repr(v)], id=f"student_weight_{v!r}")
    for v in (-0.1, 1.5, NAN, INF, "0.5", None)] + [
    pytest.param(dict(distillation_loss_weights=[2.0]),
                 ["distillation_loss_weights[0] must be a number in [0, 1], got 2.0"],
                 id="loss_weight_2"),
    pytest.param(dict(distillation_loss_weights=[NAN]),
                 ["distillation_loss_weights[0] must be a number in [0, 1], got nan"],
                 id="loss_weight_nan"),
    pytest.param(dict(distillation_loss_weights=[0.5, 0.5]),
                 ["2 distillation_loss_weights for 1 distillation_losses"], id="loss_weight_count"),
    pytest.param(dict(distillation_losses="soft"), ["unknown distillation loss 'soft'"],
                 id="loss_unknown"),
    pytest.param(dict(distillation_losses=distillation.FeatureDistillation("nope", "conv")),
                 ["the teacher 'teacher' has no layer 'nope'", "its layers are: conv"],
                 id="feature_layer_missing"),
])
def test_distiller_settings_out_of_range(tiny_model, kwargs, fragments):
    teacher, student = tiny_model("teacher"), tiny_model("student")
    _raises(lambda: distillation.Distiller(teacher, student, **kwargs),
            distillation.DistillationError, fragments)


# --------------------------------------------------------------------- NaN/Inf weights

ENTRY_POINTS = {
    "prune": lambda m: pruning.prune(m, pruning.PruningConfig(0.5, skip_first_and_last=False),
                                     steps_per_epoch=2, total_epochs=1),
    "cluster": lambda m: clustering.cluster(m, clustering.ClusteringConfig(8)),
    "quantize": lambda m: quantization.quantize(m),
    "convert_float32": lambda m: convert_lib.convert(m, "float32"),
    "convert_dynamic": lambda m: convert_lib.convert(m, "dynamic"),
    "lowrank": lambda m: lowrank.factorize(m, lowrank.LowRankConfig(energy=0.9)),
    "channel_prune": lambda m: channel_pruning.prune_channels(
        m, channel_pruning.ChannelPruningConfig(ratio=0.5)),
}


@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "inf"])
@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_non_finite_weights_are_refused_where_models_enter(tiny_model, poison, entry, value):
    model = poison(tiny_model("diverged"), value, layer="dense")
    message = _raises(lambda: entry(model), NonFiniteWeightsError,
                      ["('diverged') has 1", "in weight 'dense/kernel:0' of layer 'dense'",
                       "lower the learning rate"])
    assert ("NaN" if value != INF else "Inf") in message


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_non_finite_weights_in_distillation(tiny_model, poison, role):
    models = {"teacher": tiny_model("teacher"), "student": tiny_model("student")}
    poison(models[role])
    _raises(lambda: distillation.Distiller(models["teacher"], models["student"]),
            NonFiniteWeightsError, [f"the {role} ('{role}') has 1 NaN value(s) in weight "
                                    "'conv/kernel:0' of layer 'conv'"])


def test_non_finite_weights_in_a_saved_model_given_to_convert(good_files):
    _raises(lambda: convert_lib.convert(good_files["nan_keras"], "int8_full",
                                        representative_data=np.zeros((4, 8, 8, 1), np.float32)),
            NonFiniteWeightsError, ["the model to convert ('nan_model')", "layer 'conv'"])


# -------------------------------------------------------------- unsupported layers


class Unknown(keras.layers.Layer):
    """A custom layer with a kernel and no TFMOT support (no QuantizeConfig, not prunable)."""

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", (input_shape[-1], 3))

    def call(self, inputs):
        return tf.matmul(inputs, self.kernel)


def _with_custom_layer():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d"),
                             Unknown(name="mine")], name="custom")


def _nothing_prunable():
    return keras.Sequential([keras.Input((4,)), keras.layers.ReLU(name="relu"),
                             keras.layers.Softmax(name="softmax")], name="weightless")


UNSUPPORTED = {
    "qat_custom_layer": (lambda m: quantization.quantize(_with_custom_layer()),
                         quantization.QuantizationError,
                         ["1 layer(s) TFMOT cannot quantize: 'mine' (Unknown)",
                          "exclude_layers=['mine']", "QuantizeConfig"]),
    "prune_custom_layer": (
        lambda m: pruning.prune(_with_custom_layer(),
                                pruning.PruningConfig(0.5, skip_first_and_last=False)),
        pruning.PruningError, ["layer 'mine' (Unknown) has weights TFMOT does not know how to "
                               "prune", "PrunableLayer", "exclude=['mine']"]),
    "cluster_custom_layer": (
        lambda m: clustering.cluster(_with_custom_layer(), clustering.ClusteringConfig(4)),
        clustering.ClusteringError, ["layer 'mine' (Unknown) has weights TFMOT does not know "
                                     "how to cluster", "exclude=['mine']"]),
    "prune_nothing_prunable": (
        lambda m: pruning.prune(_nothing_prunable(), pruning.PruningConfig(0.5)),
        pruning.PruningError, ["no layer of 'weightless' is selected for pruning",
                               "layers are: relu, softmax"]),
    "prune_only_stem_and_classifier": (
        lambda m: pruning.prune(m, pruning.PruningConfig(0.5)),
        pruning.PruningError, ["no layer of 'tiny' is selected for pruning",
                               "layers are: conv, flatten, dense"]),
    "prune_include_matches_nothing": (
        lambda m: pruning.prune(m, pruning.PruningConfig(0.5, include=["conv9"])),
        pruning.PruningError, ["include entry 'conv9' matches no layer", "conv, flatten, dense"]),
    "prune_already_pruned": (
        lambda m: pruning.prune(pruning.prune(m, pruning.PruningConfig(
            0.5, skip_first_and_last=False), steps_per_epoch=1, total_epochs=1)),
        pruning.PruningError, ["is already pruned; strip_pruning it first"]),
    "cluster_nothing_clusterable": (
        lambda m: clustering.cluster(_nothing_prunable(), clustering.ClusteringConfig(4)),
        clustering.ClusteringError, ["no layer of 'weightless' is selected for clustering"]),
    "cluster_more_clusters_than_weights": (
        lambda m: clustering.cluster(m, clustering.ClusteringConfig(10_000)),
        clustering.ClusteringError, ["every selected kernel has no more weights than clusters",
                                     "conv: 10000 clusters", "lower number_of_clusters"]),
    "qat_preserving_nothing": (
        lambda m: quantization.quantize(m, quantization.QATConfig(scheme="prune_preserving")),
        quantization.QuantizationError, ["scheme 'prune_preserving' preserves zero weights",
                                         "scheme='default'"]),
    "prune_subclassed": (
        lambda m: pruning.prune(keras.Model()), pruning.PruningError,
        ["is a subclassed model", "Build it functionally"]),
}


@pytest.mark.parametrize("call, error, fragments", _cases(UNSUPPORTED))
def test_unsupported_models_and_layers(tiny_model, call, error, fragments):
    model = tiny_model()
    _raises(lambda: call(model), error, fragments)


# ------------------------------------------------------------------- Keras 3 models


@pytest.fixture(scope="module")
def keras3():
    """The Keras 3 package (TF_USE_LEGACY_KERAS makes tf.keras tf_keras, not `keras`)."""
    import keras as keras3
    assert keras3.__version__.startswith("3"), keras3.__version__
    return keras3


@pytest.fixture(scope="module")
def keras3_files(keras3, tmp_path_factory):
    root = tmp_path_factory.mktemp("keras3")
    model = keras3.Sequential([keras3.Input((8,)), keras3.layers.Dense(3, name="d")])
    paths = {"keras": str(root / "k3.keras"), "h5": str(root / "k3.h5")}
    model.save(paths["keras"])
    model.save(paths["h5"])
    return paths


KERAS3_ENTRIES = {
    "prune": lambda m: pruning.prune(m, pruning.PruningConfig(0.5)),
    "strip_pruning": pruning.strip_pruning,
    "sparsity_report": pruning.sparsity_report,
    "cluster": lambda m: clustering.cluster(m, clustering.ClusteringConfig(4)),
    "quantize": quantization.quantize,
    "distiller_teacher": lambda m: distillation.Distiller(m, keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3)])),
    "distiller_student": lambda m: distillation.Distiller(keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3)]), m),
    "convert": convert_lib.convert,
    "lowrank": lowrank.factorize,
    "channel_prune": channel_pruning.prune_channels,
}


@pytest.mark.parametrize("entry", KERAS3_ENTRIES.values(), ids=KERAS3_ENTRIES.keys())
def test_keras3_model_is_refused(keras3, entry):
    model = keras3.Sequential([keras3.Input((8,)), keras3.layers.Dense(3, name="d")])
    _raises(lambda: entry(model), TypeError,
            ["this is a Keras 3 model (Sequential)", "tf_keras",
             "import it first: model = tfcompress.load_model(model)"])


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_keras3_file_is_imported_not_refused(keras3_files, kind):
    # Was refused until the Keras 3 importer (tests/keras3 test it in depth).
    model = tfcompress.load_model(keras3_files[kind])
    assert isinstance(model, keras.Model) and model.get_layer("d").units == 3


@pytest.mark.parametrize("call, error", [
    pytest.param(lambda k3: pruning.PruningConfig(0.5, include=[k3.layers.Dense]), ValueError,
                 id="prune_include"),
    pytest.param(lambda k3: clustering.ClusteringConfig(8, exclude=[k3.layers.Dense]),
                 clustering.ClusteringError, id="cluster_exclude"),
    pytest.param(lambda k3: quantization.QATConfig(exclude_types=[k3.layers.Dense]),
                 quantization.QuantizationError, id="qat_exclude_types"),
])
def test_keras3_layer_class_in_a_pattern(keras3, call, error):
    _raises(lambda: call(keras3), error, ["Dense is a Keras 3 class", "'Dense'"])


# --------------------------------------------------------------- corrupt model files

@pytest.mark.parametrize("name, fragments", [pytest.param(*case, id=case[0]) for case in [
    ("truncated_keras", ["it is not a .keras archive (a zip file)", "save the model again"]),
    ("random_keras", ["it is not a .keras archive (a zip file)"]),
    ("empty_keras", ["it is not a .keras archive (a zip file): empty"]),
    ("truncated_h5", ["truncated or corrupt HDF5 file", "truncated file"]),
    ("random_h5", ["it is not an HDF5 file"]),
    ("empty_h5", ["it is not an HDF5 file: empty"]),
    ("random_tflite", ["unknown model format (expected a .keras file, .h5 file or SavedModel"]),
]])
def test_corrupt_model_files(corrupt_files, name, fragments):
    path = corrupt_files[name]
    _raises(lambda: tfcompress.load_model(path), ModelLoadError, [path + ": "] + fragments)


def test_model_paths_that_are_not_models(good_files, tmp_path):
    _raises(lambda: tfcompress.load_model(tmp_path / "nope.keras"), ModelLoadError,
            ["nope.keras: no such file or directory (expected a .keras file"])
    _raises(lambda: tfcompress.load_model(good_files["dir"]), ModelLoadError,
            ["directory has no saved_model.pb, so it is not a SavedModel"])


@pytest.mark.parametrize("name, fragments", [pytest.param(*case, id=case[0]) for case in [
    ("truncated_tflite", ["corrupt or truncated TFLite flatbuffer"]),
    ("garbled_tflite", ["corrupt or truncated TFLite flatbuffer"]),
    ("random_tflite", ["not a TFLite flatbuffer (no 'TFL3' identifier; 2048 bytes)"]),
    ("empty_tflite", ["not a TFLite flatbuffer (no 'TFL3' identifier; 0 bytes)"]),
    ("random_keras", ["not a TFLite flatbuffer"]),
]])
def test_corrupt_tflite_files(corrupt_files, name, fragments):
    path = corrupt_files[name]
    _raises(lambda: inspect.inspect_tflite(path), TfliteFileError, [path + ": "] + fragments)


def test_tflite_paths_that_are_not_files(good_files, tmp_path):
    _raises(lambda: inspect.inspect_tflite(str(tmp_path / "nope.tflite")), TfliteFileError,
            ["nope.tflite: no such file"])
    _raises(lambda: inspect.inspect_tflite(good_files["dir"]), TfliteFileError,
            ["is a directory, not a .tflite file"])


# ------------------------------------------------------- data that does not fit a model

X = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
Y = np.arange(6) % 3

BAD_EVALUATION = {
    "images_12x12x3": (np.zeros((4, 12, 12, 3), np.float32), Y[:4],
                       ["data of shape (4, 12, 12, 3) does not fit", "(N,) + (8, 8, 1)"]),
    "nan_images": (np.where(X > 0.5, np.nan, X), Y, ["contains", "NaN/Inf value(s)"]),
    "inf_images": (np.full_like(X, np.inf), Y, ["contains 384 NaN/Inf value(s)"]),
    "string_images": (X.astype(str), Y, ["cannot feed <U", "data"]),
    "labels_out_of_range": (X, Y + 5, ["labels span [5, 7] but", "has 3 classes"]),
    "labels_negative": (X, Y - 1, ["labels span [-1, 1]", "3 classes"]),
    "labels_fractional": (X, Y + 0.5, ["labels must be integer class ids"]),
    "labels_strings": (X, Y.astype(str), ["labels must be integer class ids 0..2, got <U"]),
    "labels_count": (X, Y[:3], ["labels of shape (3,) do not match 6 samples"]),
    "no_samples": (X[:0], Y[:0], ["no samples to run through"]),
}


@pytest.mark.parametrize("x, y, fragments", [pytest.param(*v, id=k)
                                             for k, v in BAD_EVALUATION.items()])
def test_evaluation_data_that_does_not_fit(good_files, x, y, fragments):
    _raises(lambda: evaluate.evaluate_tflite(good_files["tflite"], x, y, progress=False),
            evaluate.EvaluationError, fragments)


def test_keras_model_that_does_not_match_the_tflite(good_files):
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(5)], name="other")
    _raises(lambda: evaluate.compare_with_keras(good_files["tflite"], other, X),
            evaluate.EvaluationError, ["outputs (6, 3) but the Keras model other outputs (6, 5)"])


BAD_CALIBRATION = {
    "wrong_shape": (np.zeros((4, 12, 12, 3), np.float32),
                    ["sample has shape (12, 12, 3) but the model input is (8, 8, 1)"]),
    "nan": (np.full((4, 8, 8, 1), np.nan, np.float32), ["representative_data contains NaN"]),
    "empty": (np.zeros((0, 8, 8, 1), np.float32), ["representative_data is empty"]),
    "strings": (np.full((4, 8, 8, 1), "a"), ["representative_data holds <U1 values",
                                             "numeric"]),
}


@pytest.mark.parametrize("calibration, fragments", [pytest.param(*v, id=k)
                                                    for k, v in BAD_CALIBRATION.items()])
def test_bad_calibration_data(tiny_model, calibration, fragments):
    _raises(lambda: convert_lib.convert(tiny_model(), "int8", representative_data=calibration),
            convert_lib.ExportError, fragments)


@pytest.mark.parametrize("kwargs, fragments", [
    pytest.param(dict(mode="int4"), ["unknown TFLite mode 'int4'; choose one of float32"],
                 id="unknown_mode"),
    pytest.param(dict(batch_size=0), ["batch_size must be an integer >= 1, got 0"],
                 id="batch_size_0"),
    pytest.param(dict(mode="int8_full"), ["mode int8_full needs representative_data"],
                 id="int8_without_calibration"),
    pytest.param(dict(mode="dynamic", sparse=True), ["sparse=True is only for float32"],
                 id="sparse_quantized"),
])
def test_bad_conversion_options(tiny_model, kwargs, fragments):
    _raises(lambda: convert_lib.convert(tiny_model(), **kwargs), convert_lib.ExportError,
            fragments)


def test_export_into_a_file_fails_before_converting(tiny_model, good_files):
    calls = []
    _raises(lambda: convert_lib.export(tiny_model(), ["float32"], good_files["keras"],
                                       log=calls.append),
            convert_lib.ExportError, ["output folder", "tiny.keras is a file; give a folder"])
    assert calls == []  # nothing was converted first
