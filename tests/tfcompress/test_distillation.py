import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import models
import tfcompress
from tfcompress import distillation, pruning, schedules
from tfcompress.distillation import (DistillationError, Distiller, FeatureDistillation,
                                     LogitsDistillation)
from tfcompress.keras import keras, tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BATCH = 32
STEPS = 3  # 3 batches of 32 an epoch: a fit is a few seconds on 2 cores
SHAPE = (28, 28, 1)


def _data(n=STEPS * BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + SHAPE, dtype=np.float32), rng.integers(0, 10, n)


def _cnn(width, seed=0, activation="softmax"):
    keras.utils.set_random_seed(seed)
    return models.get_model("small_cnn", SHAPE, 10, width=width,
                            classifier_activation=activation)


def _mlp(hidden=16, seed=0, classes=10, head="softmax", name=None):
    """No BatchNorm or dropout: training-mode and inference-mode losses agree."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    x = keras.layers.Dense(classes, activation=head, name="classifier")(x)
    return keras.Model(inputs, x, name=name or f"mlp{hidden}")


def _compile(distiller, optimizer=None, **kwargs):
    distiller.compile(optimizer or keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                      **kwargs)
    return distiller


def _linear_twin(model, width):
    """The same small_cnn with the softmax removed: its outputs are the true logits."""
    twin = _cnn(width, activation=None)
    twin.set_weights(model.get_weights())
    return twin


def _kl_t2(teacher_logits, student_logits, temperature):
    """KL(softmax(t/T) || softmax(s/T)) * T^2 per row, in float64."""
    def log_softmax(z):
        z = np.asarray(z, np.float64) / temperature
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    log_t, log_s = log_softmax(teacher_logits), log_softmax(student_logits)
    return (np.exp(log_t) * (log_t - log_s)).sum(axis=-1) * temperature ** 2


# ------------------------------------------------------------------------- losses


def test_logits_distillation_equals_hand_computed_kl_times_t_squared():
    teacher = np.array([[4.0, 1.0, -2.0, 0.5], [0.0, 0.0, 3.0, -1.0], [10.0, -10.0, 0.0, 2.0]],
                       np.float32)
    student = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, -0.5, 1.0, 0.0], [-3.0, 4.0, 1.0, 0.0]],
                       np.float32)
    for temperature in (1.0, 4.0):
        loss = LogitsDistillation(temperature=temperature)
        expected = _kl_t2(teacher, student, temperature)
        np.testing.assert_allclose(loss.call(teacher, student).numpy(), expected, atol=1e-5)
        assert abs(float(loss(teacher, student)) - expected.mean()) < 1e-5
        weights = np.array([2.0, 0.0, 1.0])
        # Keras's SUM_OVER_BATCH_SIZE: weighted sum over the batch size, not over the weights.
        assert abs(float(loss(teacher, student, weights)) - (weights * expected).sum() / 3) < 1e-5
    assert float(LogitsDistillation(4.0)(teacher, teacher)) < 1e-6


def test_feature_losses_equal_hand_computation():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    s = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    mse = ((t - s) ** 2).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(FeatureDistillation("a", "b").call(t, s), mse, rtol=1e-5)
    cos = (t * s).sum(-1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(s, axis=-1))
    np.testing.assert_allclose(FeatureDistillation("a", "b", loss="cosine").call(t, s),
                               (1 - cos).reshape(2, -1).mean(axis=1), rtol=1e-5)
    assert float(FeatureDistillation(loss="cosine")(t, 3.0 * t)) < 1e-6  # scale-free


def test_losses_serialize_and_get_by_name_dict_or_object():
    feature = FeatureDistillation("conv3", "conv2", loss="cosine_similarity")
    assert feature.loss == "cosine"
    assert distillation.get(distillation.serialize(feature)) == feature
    assert distillation.get(feature) is feature
    assert distillation.get("logits") == LogitsDistillation()
    assert distillation.get({"class_name": "LogitsDistillation",
                             "config": {"temperature": 4}}) == LogitsDistillation(4.0)
    assert distillation.get({"name": "feature", "teacher_layer_name": "a",
                             "student_layer_name": "b"}) == FeatureDistillation("a", "b")
    assert distillation.get(None) is None
    assert LogitsDistillation.from_config(LogitsDistillation(5).get_config()).temperature == 5.0
    assert distillation.logits_distillation is LogitsDistillation
    assert json.loads(json.dumps(distillation.serialize(feature)))["config"]["loss"] == "cosine"
    for bad, match in ((0.0, "temperature"), (-1, "temperature"), ("4", "temperature")):
        with pytest.raises(DistillationError, match=match):
            LogitsDistillation(bad)
    with pytest.raises(DistillationError, match="'mse' or 'cosine'"):
        FeatureDistillation("a", "b", loss="l1")
    with pytest.raises(DistillationError, match="unknown distillation loss 'soft'"):
        distillation.get("soft")
    with pytest.raises(DistillationError, match="needs its layers"):
        distillation.get("feature")
    with pytest.raises(DistillationError, match="bad LogitsDistillation config"):
        distillation.get({"class_name": "LogitsDistillation", "config": {"temp": 2}})
    with pytest.raises(DistillationError, match="cannot interpret 3"):
        distillation.get(3)


# ---------------------------------------------------------------------- validation


def test_construction_refuses_models_and_settings_that_cannot_work():
    teacher, student = _cnn(8), _cnn(4, seed=1)
    with pytest.raises(DistillationError, match="same model object"):
        Distiller(student, student)
    # A "student" built on the teacher's own layers would train the teacher.
    head = keras.layers.Dense(10, activation="softmax", name="new_head")(
        teacher.get_layer("dropout").output)
    with pytest.raises(DistillationError, match="share the weights of layer.*conv1"):
        Distiller(teacher, keras.Model(teacher.input, head))
    with pytest.raises(DistillationError, match=r"output shapes differ.*\(10,\).*\(5,\)"):
        Distiller(_mlp(), _mlp(8, classes=5))
    keras.utils.set_random_seed(0)
    other_input = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                                    keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(DistillationError, match="input shapes differ"):
        Distiller(teacher, other_input)
    for weight in (1.5, -0.1, "0.5", None):
        with pytest.raises(DistillationError, match="student_loss_weight must be a number in"):
            Distiller(teacher, student, student_loss_weight=weight)
    with pytest.raises(DistillationError, match=r"distillation_loss_weights\[1\]"):
        Distiller(teacher, student, ["logits", FeatureDistillation("conv3", "conv3")], [0.5, 2])
    with pytest.raises(DistillationError, match="2 distillation_loss_weights for 1"):
        Distiller(teacher, student, "logits", [0.5, 0.5])
    with pytest.raises(DistillationError, match=r"student .* has no layer 'conv9'; its layers "
                                                r"are: conv1, bn1, relu1, pool1, conv2"):
        Distiller(teacher, student, FeatureDistillation("conv3", "conv9"))
    with pytest.raises(DistillationError, match="spatial size"):
        Distiller(teacher, student, FeatureDistillation("conv3", "conv2"))
    with pytest.raises(DistillationError, match=r"10 sigmoid units \(multi-label\)"):
        Distiller(_mlp(head="sigmoid"), _mlp(8))
    two_outputs = keras.Model(teacher.input, [teacher.output, teacher.output])
    with pytest.raises(DistillationError, match="several outputs"):
        Distiller(two_outputs, student)
    with pytest.raises(TypeError, match="tf_keras"):
        Distiller(teacher, "student.keras")
    distiller = Distiller(teacher, student)
    with pytest.raises(DistillationError, match="compile needs loss="):
        distiller.compile("adam")
    assert not teacher.trainable and not teacher.trainable_weights
    # The trainable weights are exactly the student's (no projection needed here).
    assert {id(w) for w in distiller.trainable_weights} == {id(w) for w in
                                                            student.trainable_weights}


# --------------------------------------------------------------- losses in a model


def test_evaluate_logs_each_loss_from_the_pre_softmax_logits():
    """Through Keras: the softmax models' logits are used, and the logs add up."""
    teacher, student = _cnn(8), _cnn(4, seed=1)
    x, y = _data(64)
    temperature, weight = 4.0, 0.3
    logits_t = _linear_twin(teacher, 8).predict(x, verbose=0)
    logits_s = _linear_twin(student, 4).predict(x, verbose=0)
    distill = _kl_t2(logits_t, logits_s, temperature)
    hard = keras.losses.sparse_categorical_crossentropy(y, student.predict(x, verbose=0)).numpy()
    distiller = Distiller(teacher, student, LogitsDistillation(temperature),
                          student_loss_weight=weight)
    sample_weight = np.where(np.arange(64) % 2, 2.0, 0.5)
    for run_eagerly in (False, True):  # graph: the Softmax op's input; eager: _keras_logits
        _compile(distiller, run_eagerly=run_eagerly)
        logs = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
        assert set(logs) == {"loss", "student_loss", "distillation_loss", "total_loss",
                             "accuracy"}
        assert abs(logs["distillation_loss"] - distill.mean()) < 1e-5
        assert abs(logs["student_loss"] - hard.mean()) < 1e-5
        expected_total = weight * hard.mean() + (1 - weight) * distill.mean()
        assert abs(logs["loss"] - expected_total) < 1e-5
        assert logs["total_loss"] == logs["loss"]
        weighted = distiller.evaluate(x, y, sample_weight=sample_weight, batch_size=64,
                                      verbose=0, return_dict=True)
        assert abs(weighted["distillation_loss"] - (sample_weight * distill).mean()) < 1e-5
        assert abs(weighted["student_loss"] - (sample_weight * hard).mean()) < 1e-5
    # Two traced functions of the same graph: equal up to float rounding, not bit for bit.
    np.testing.assert_allclose(distiller.predict(x, verbose=0), student.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_probabilities_without_a_softmax_op_fall_back_to_log_probabilities():
    def reshaped(hidden, seed):  # the Reshape hides the Softmax op from the Distiller
        base = _mlp(hidden, seed)
        return keras.Model(base.input, keras.layers.Reshape((10,))(base.output)), base

    (teacher, teacher_base), (student, student_base) = reshaped(16, 0), reshaped(8, 1)
    x, y = _data(64)
    # The true logits, from the hidden activations and the classifier's weights.
    dense_t, dense_s = teacher_base.get_layer("classifier"), student_base.get_layer("classifier")
    hidden_t = keras.Model(teacher_base.input, teacher_base.get_layer("hidden").output)
    hidden_s = keras.Model(student_base.input, student_base.get_layer("hidden").output)
    logits_t = hidden_t.predict(x, verbose=0) @ dense_t.kernel.numpy() + dense_t.bias.numpy()
    logits_s = hidden_s.predict(x, verbose=0) @ dense_s.kernel.numpy() + dense_s.bias.numpy()
    distiller = _compile(Distiller(teacher, student, LogitsDistillation(2.0)))
    assert distiller._teacher_kind == distiller._student_kind == "softmax"
    logs = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert abs(logs["distillation_loss"] - _kl_t2(logits_t, logits_s, 2.0).mean()) < 1e-5
    # A model without softmax is taken at its word: its outputs are logits.
    plain = Distiller(_mlp(16, head=None), _mlp(8, seed=1, head=None))
    assert plain._teacher_kind == plain._student_kind == "logits"


def test_one_fit_step_lowers_the_total_loss_and_leaves_the_teacher_bit_identical():
    teacher = _cnn(8)  # BatchNorm and dropout: both must stay frozen
    student = _mlp(16, seed=1)
    x, y = _data(64)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = _compile(Distiller(teacher, student, LogitsDistillation(4.0)),
                         keras.optimizers.SGD(0.05))
    before = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    history = distiller.fit(x, y, batch_size=64, epochs=1, verbose=0)
    after = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert abs(history.history["loss"][0] - before["loss"]) < 1e-5  # the step's own loss
    assert after["loss"] < before["loss"] - 1e-3
    assert after["distillation_loss"] < before["distillation_loss"]
    for old, new in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_fit_takes_tf_data_sample_weights_and_tensorboard(tmp_path):
    teacher, student = _cnn(8), _cnn(4, seed=1)
    x, y = _data()
    zero = np.zeros(len(x), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, zero)).batch(BATCH)
    distiller = _compile(Distiller(
        teacher, student, [LogitsDistillation(4.0), FeatureDistillation("conv3", "conv3")],
        distillation_loss_weights=[1.0, 0.5]))
    trainable = [w.numpy().copy() for w in distiller.trainable_weights]
    # All-zero sample weights reach every loss: nothing to learn, no weight moves.
    history = distiller.fit(dataset, epochs=1, verbose=0)
    for old, new in zip(trainable, distiller.trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())
    assert history.history["loss"] == [0.0]
    log_dir = str(tmp_path / "logs")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    history = distiller.fit(dataset, validation_data=dataset, epochs=1, verbose=0,
                            callbacks=[keras.callbacks.TensorBoard(log_dir)])
    assert set(history.history) == {
        f"{prefix}{name}" for prefix in ("", "val_") for name in (
            "loss", "student_loss", "distillation_loss", "total_loss", "logits_loss",
            "feature_conv3_loss", "accuracy")}
    logs = history.history
    expected = 0.5 * logs["val_student_loss"][0] + 0.5 * logs["val_distillation_loss"][0]
    assert abs(logs["val_loss"][0] - expected) < 1e-5
    expected = logs["val_logits_loss"][0] + 0.5 * logs["val_feature_conv3_loss"][0]
    assert abs(logs["val_distillation_loss"][0] - expected) < 1e-5
    # The student's conv3 (16 filters) is projected to the teacher's (32).
    assert [tuple(w.shape) for w in distiller.projections[0].weights] == [(16, 32), (32,)]
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"epoch_loss", "epoch_distillation_loss", "epoch_accuracy"} <= tags


def test_student_loss_weight_zero_distills_without_labels():
    teacher, student = _mlp(32), _mlp(8, seed=1)
    x, _ = _data(64)
    distiller = Distiller(teacher, student, LogitsDistillation(2.0), student_loss_weight=0.0)
    distiller.compile(keras.optimizers.Adam(1e-2))  # no hard-label loss
    history = distiller.fit(x, batch_size=BATCH, epochs=3, verbose=0)
    losses = history.history["distillation_loss"]
    assert history.history["student_loss"] == [0.0] * 3
    assert history.history["loss"] == losses and losses[-1] < losses[0]


def test_quantization_aware_student_trains():
    import tensorflow_model_optimization as tfmot
    teacher = _mlp(32)
    student = tfmot.quantization.keras.quantize_model(_mlp(8, seed=1))
    x, y = _data(64)
    distiller = _compile(Distiller(teacher, student, LogitsDistillation(4.0)))
    assert distiller._student_kind == "softmax"  # the Softmax after the fake-quantized logits
    before = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    distiller.fit(x, y, batch_size=64, epochs=3, verbose=0)
    after = distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    assert np.isfinite(after["loss"]) and after["loss"] < before["loss"]
    assert any("quant" in layer.name for layer in distiller.student.layers)


def test_saving_the_distiller_says_to_save_the_student(tmp_path):
    teacher, student = _cnn(8), _cnn(4, seed=1)
    x, y = _data(64)
    distiller = _compile(Distiller(teacher, student))
    distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    with pytest.raises(DistillationError, match=r"save_model\(distiller.student"):
        distiller.save(str(tmp_path / "distiller.keras"))
    path = str(tmp_path / "student.keras")
    tfcompress.save_model(distiller.student, path)
    loaded = tfcompress.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0),
                               atol=1e-6)


# --------------------------------------------------- pruning, BackupAndRestore


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


class _Snapshots(keras.callbacks.Callback):
    """The Distiller's weights and optimizer state when training begins and at each epoch end."""

    def __init__(self):
        super().__init__()
        self.at = {}

    def _snapshot(self):
        # Student, projection and teacher weights; optimizer step count and Adam slots.
        return ([w.numpy() for w in self.model.weights],
                [v.numpy() for v in self.model.optimizer.variables])

    def on_train_begin(self, logs=None):
        self.at["begin"] = self._snapshot()

    def on_epoch_end(self, epoch, logs=None):
        self.at[epoch] = self._snapshot()


def _pruned_distiller(seed):
    teacher = _cnn(8)
    config = pruning.PruningConfig(schedule=schedules.PolynomialDecay(
        0.5, begin_epoch=0, end_epoch=2, frequency=1))
    student = pruning.prune(_cnn(4, seed=seed), config, steps_per_epoch=STEPS)
    # "conv3" names the layer inside the pruning wrapper.
    return _compile(Distiller(teacher, student, [LogitsDistillation(4.0),
                                                 FeatureDistillation("conv3", "conv3")]))


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A pruned student distilled 3 epochs with BackupAndRestore, killed at epoch 1, resumed.

    The resumed run starts from fresh objects, as a restarted process does,
    with a student initialised differently: only the backup can make it
    continue where the first run stopped.
    """
    backup = str(tmp_path_factory.mktemp("distill") / "backup")
    x, y = _data()
    first, first_snaps = _pruned_distiller(seed=1), _Snapshots()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(backup), first_snaps,
            *pruning.pruning_callbacks(), _Interrupt()])
    second, second_snaps = _pruned_distiller(seed=2), _Snapshots()
    history = second.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup), second_snaps, *pruning.pruning_callbacks()])
    return first_snaps, second_snaps, history, second


def test_backup_and_restore_resumes_a_distillation(interrupted_run):
    first, second, history, _ = interrupted_run
    assert history.epoch == [1, 2]
    (weights, optimizer), (restored_weights, restored_optimizer) = first.at[0], second.at["begin"]
    assert len(weights) == len(restored_weights)
    for saved, restored in zip(weights, restored_weights):
        np.testing.assert_array_equal(saved, restored)  # incl. pruning step counters and masks
    assert int(restored_optimizer[0]) == STEPS  # the step count, so the schedules go on
    assert len(optimizer) == len(restored_optimizer) > 1
    for saved, restored in zip(optimizer, restored_optimizer):
        np.testing.assert_array_equal(saved, restored)


def test_pruned_student_reaches_its_target_sparsity(interrupted_run):
    *_, distiller = interrupted_run
    report = pruning.sparsity_report(pruning.strip_pruning(distiller.student))
    sparsity = {row["layer"]: row["sparsity"] for row in report["layers"]}
    assert set(sparsity) == {"conv1", "conv2", "conv3", "classifier"}
    for layer in ("conv2", "conv3"):  # the defaults leave the first and last layers dense
        assert abs(sparsity[layer] - 0.5) < 0.01, sparsity
    assert sparsity["conv1"] == 0.0 and sparsity["classifier"] == 0.0


# ------------------------------------------------------------------ MirroredStrategy

_MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    from tfcompress.keras import keras, tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import numpy as np
    from tfcompress import distillation

    def mlp(hidden, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8,))
        x = keras.layers.Dense(hidden, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))

    rng = np.random.default_rng(0)
    x = rng.random((64, 8), dtype=np.float32)
    y = rng.integers(0, 4, 64)
    w = rng.random(64).astype(np.float32)

    def run(strategy):
        with strategy.scope():
            teacher, student = mlp(32, 0), mlp(8, 1)
            d = distillation.Distiller(
                teacher, student, [distillation.LogitsDistillation(2.0),
                                   distillation.FeatureDistillation(loss="cosine")],
                distillation_loss_weights=[1.0, 0.5], student_loss_weight=0.3)
            # SGD: unlike Adam, its step grows with the gradient, so a loss
            # not divided among the replicas would show in the weights.
            d.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        history = d.fit(x, y, sample_weight=w, batch_size=32, epochs=2, shuffle=False,
                        verbose=0)
        return {"replicas": strategy.num_replicas_in_sync, "history": history.history,
                "evaluate": d.evaluate(x, y, batch_size=32, verbose=0, return_dict=True),
                "predict_shape": list(d.predict(x, batch_size=32, verbose=0).shape),
                "weights": [v.tolist() for v in student.get_weights()]}

    single = run(tf.distribute.get_strategy())
    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print("RESULT " + json.dumps({"single": single, "mirrored": mirrored}))
""")


def test_mirrored_strategy_on_two_cpus_matches_a_single_device():
    # Logical devices must be set before TensorFlow initializes: a fresh process.
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    single, mirrored = result["single"], result["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["predict_shape"] == single["predict_shape"] == [64, 4]
    assert set(mirrored["history"]) == set(single["history"]) == {
        "loss", "student_loss", "distillation_loss", "total_loss", "logits_loss",
        "feature_output_loss", "accuracy"}
    for name, values in single["history"].items():
        np.testing.assert_allclose(mirrored["history"][name], values, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    for name, value in single["evaluate"].items():
        assert abs(mirrored["evaluate"][name] - value) < 1e-4, name
    for a, b in zip(single["weights"], mirrored["weights"]):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert single["history"]["loss"][1] < single["history"]["loss"][0]
