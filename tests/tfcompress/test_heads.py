"""tfcompress.heads: the head is read from the graph and sets loss, accuracy and checks."""

import numpy as np
import pytest

from tfcompress import heads
from tfcompress.distillation import Distiller, LogitsDistillation
from tfcompress.keras import keras, tf


def _model(units, activation, reshape_after=False, outputs=1):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    out = keras.layers.Dense(units, activation=activation, name="head")(hidden)
    if reshape_after:
        out = keras.layers.Reshape((units,))(out)
    if outputs == 2:
        return keras.Model(inputs, [out, keras.layers.Dense(3)(hidden)])
    return keras.Model(inputs, out)


@pytest.mark.parametrize("units, activation, reshape, kind", [
    (10, "softmax", False, "softmax"),
    (10, "softmax", True, "softmax"),      # no Softmax op at the output: rows sum to 1
    (10, None, False, "logits"),
    (1, "sigmoid", False, "sigmoid"),
    (1, None, False, "binary_logits"),
])
def test_detect_reads_the_head_from_the_graph(units, activation, reshape, kind):
    head = heads.detect(_model(units, activation, reshape))
    assert head == heads.Head(kind, units)
    assert head.num_classes == (2 if units == 1 else units)


def test_detect_refuses_what_the_pipeline_cannot_measure():
    with pytest.raises(heads.HeadError, match="has 2 outputs.*single-output.*tfcompress export"):
        heads.detect(_model(10, "softmax", outputs=2))
    with pytest.raises(heads.HeadError, match="4 sigmoid units \\(multi-label\\)"):
        heads.detect(_model(4, "sigmoid"))
    with pytest.raises(heads.HeadError, match="softmax over one unit"):
        heads.detect(_model(1, "softmax"))


def test_loss_matches_the_head():
    y = np.array([0, 1, 1, 0])
    z = np.array([[-2.0], [3.0], [-1.0], [0.5]], np.float32)
    p = 1 / (1 + np.exp(-z))
    want = float(np.mean(-(y[:, None] * np.log(p) + (1 - y[:, None]) * np.log(1 - p))))
    # Integer labels (N,) against (N, 1) scores, as fit feeds them (tensors).
    y, z, p = tf.constant(y), tf.constant(z), tf.constant(p)
    assert float(heads.Head("binary_logits", 1).loss()(y, z)) == pytest.approx(want, rel=1e-5)
    assert float(heads.Head("sigmoid", 1).loss()(y, p)) == pytest.approx(want, rel=1e-4)
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32)
    labels = np.array([0, 2])
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = float(np.mean(-np.log(soft[[0, 1], labels])))
    assert float(heads.Head("logits", 3).loss()(labels, logits)) == pytest.approx(want, rel=1e-5)
    assert float(heads.Head("softmax", 3).loss()(labels, soft)) == pytest.approx(want, rel=1e-5)
    # The numpy mean (used inside tf.distribute scopes) agrees with Keras's.
    assert heads.Head("logits", 3).mean_loss(logits, labels) == pytest.approx(want, rel=1e-5)
    assert heads.Head("softmax", 3).mean_loss(soft, labels) == pytest.approx(want, rel=1e-5)
    for kind, scores in (("binary_logits", z), ("sigmoid", p)):
        keras_value = float(heads.Head(kind, 1).loss()(y, scores))
        assert heads.Head(kind, 1).mean_loss(np.asarray(scores), np.asarray(y)) == \
            pytest.approx(keras_value, rel=1e-4)


def test_binary_head_trains_with_fit_on_integer_labels():
    x = np.random.default_rng(0).normal(size=(256, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    for activation in ("sigmoid", None):
        model = _model(1, activation)
        head = heads.detect(model)
        model.compile(keras.optimizers.Adam(0.05), loss=head.loss(), metrics=[head.metric()])
        history = model.fit(x, y, epochs=15, batch_size=64, verbose=0).history
        assert history["loss"][-1] < 0.5 * history["loss"][0]
        assert head.accuracy(model.predict(x, verbose=0), y) > 0.9
        assert history["accuracy"][-1] == pytest.approx(
            head.accuracy(model.predict(x, verbose=0), y), abs=0.05)


def test_accuracy_thresholds_one_unit_and_argmaxes_several():
    y = np.array([0, 1, 1, 0])
    assert heads.Head("sigmoid", 1).accuracy([[0.2], [0.7], [0.5], [0.51]], y) == 0.5
    assert heads.Head("binary_logits", 1).accuracy([[-1], [0.1], [0.0], [-3]], y) == 0.75
    scores = np.array([[0.1, 0.9], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4]])
    assert heads.Head("softmax", 2).accuracy(scores, [1, 0, 1, 1]) == 0.75  # tie -> class 0


def test_check_fits_and_the_chance_rule():
    heads.check_fits(heads.Head("sigmoid", 1), 2, "m")
    with pytest.raises(heads.HeadError, match="binary classifier.*has 10 classes"):
        heads.check_fits(heads.Head("sigmoid", 1), 10, "m")
    with pytest.raises(heads.HeadError, match="has 5 outputs.*has 10 classes"):
        heads.check_fits(heads.Head("logits", 5), 10, "m")
    assert heads.chance_floor(10) == pytest.approx(0.15)
    assert heads.chance_floor(2) == 0.6
    heads.check_above_chance(0.16, 10, "m")
    heads.check_above_chance(0.61, 2, "m")
    with pytest.raises(heads.ChanceLevelError, match=r"9.00% top-1, at chance.*needs >= 15.0%"
                                                     r".*Likely causes: data.scale"):
        heads.check_above_chance(0.09, 10, "the input model x", "data.scale")
    with pytest.raises(heads.ChanceLevelError, match="needs >= 60.0%"):
        heads.check_above_chance(0.55, 2, "m")


def test_distiller_reads_a_binary_head_as_two_class_logits():
    """sigmoid(z) = softmax([0, z])[1]: the soft-target loss of one-unit heads is the
    two-class KL on logits [0, z], for a sigmoid teacher and a logit student alike."""
    teacher, student = _model(1, "sigmoid"), _model(1, None)
    student.set_weights([w * 0.5 for w in teacher.get_weights()])
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    distiller = Distiller(teacher, student, LogitsDistillation(temperature=2.0),
                          student_loss_weight=0.0)
    got = float(distiller._distillation_losses(tf.constant(x), student(x), None)[0])
    zt = np.asarray(keras.Model(teacher.input, teacher.get_layer("head").output)(x))
    zt = np.log(zt) - np.log1p(-zt)  # the sigmoid's input
    zs = np.asarray(student(x))

    def log_softmax(z):
        pair = np.concatenate([np.zeros_like(z), z], 1) / 2.0
        return pair - np.log(np.exp(pair).sum(1, keepdims=True))

    pt = np.exp(log_softmax(zt))
    want = float(np.mean((pt * (log_softmax(zt) - log_softmax(zs))).sum(1)) * 4.0)
    assert got == pytest.approx(want, rel=1e-3)
    assert got > 0


def test_a_sigmoid_teacher_distills_into_a_two_class_softmax_student():
    teacher, student = _model(1, "sigmoid"), _model(2, "softmax")
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    distiller = Distiller(teacher, student, LogitsDistillation(temperature=1.0),
                          student_loss_weight=0.0)
    got = float(distiller._distillation_losses(tf.constant(x), student(x), None)[0])
    p = np.asarray(teacher(x))[:, 0]
    q = np.asarray(student(x))
    pt = np.stack([1 - p, p], 1)  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]
    want = float(np.mean((pt * (np.log(pt) - np.log(q))).sum(1)))
    assert got == pytest.approx(want, rel=1e-3, abs=1e-6)
    with pytest.raises(Exception, match="output shapes differ"):
        Distiller(teacher, _model(3, "softmax"))
