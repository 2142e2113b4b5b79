"""Sparsity regularizers: penalty values, the proximal step's arithmetic, their effect."""

import os

import numpy as np
import pytest

from tfcompress import load_model, regularizers as R, save_model
from tfcompress.errors import TfcompressError
from tfcompress.keras import keras

L = keras.layers


def _model(l2=None):
    reg = keras.regularizers.l2(l2) if l2 else None
    return keras.Sequential([
        keras.Input((8, 8, 2)), L.Conv2D(6, 3, kernel_regularizer=reg, name="c1"),
        L.BatchNormalization(name="bn1"), L.ReLU(), L.DepthwiseConv2D(3, name="dw"),
        L.BatchNormalization(name="bn2", scale=False), L.GlobalAveragePooling2D(),
        L.Dense(3, name="out")])


def _penalty(model):
    return float(sum(model.losses)) if model.losses else 0.0


def test_penalties_add_the_right_amounts():
    model = _model(l2=1e-3)
    rng = np.random.default_rng(0)
    model.get_layer("bn1").gamma.assign(rng.normal(size=6).astype(np.float32))
    base = _penalty(model)
    gamma = model.get_layer("bn1").gamma.numpy()
    bn = R.add_sparsity_penalty(model, l1=1e-2, target="bn_scale")
    np.testing.assert_allclose(_penalty(bn) - base, 1e-2 * np.abs(gamma).sum(), rtol=1e-5)
    # The existing L2 weight decay of c1 is kept (merged), not replaced.
    kernel = model.get_layer("c1").kernel.numpy()
    elastic = R.add_sparsity_penalty(model, l1=1e-2, l2=1e-3, target="kernel", layers=["c1"])
    np.testing.assert_allclose(
        _penalty(elastic), 1e-2 * np.abs(kernel).sum() + 2e-3 * (kernel ** 2).sum(), rtol=1e-5)
    replaced = R.add_sparsity_penalty(model, l1=1e-2, target="kernel", layers=["c1"],
                                      replace=True)
    np.testing.assert_allclose(_penalty(replaced), 1e-2 * np.abs(kernel).sum(), rtol=1e-5)
    group = R.add_sparsity_penalty(model, l1=1e-2, target="filters", exclude=["c1"])
    dw = model.get_layer("dw").depthwise_kernel.numpy()          # [3, 3, channels, 1]
    out = model.get_layer("out").kernel.numpy()
    expected = 1e-2 * (np.linalg.norm(dw.reshape(9, 6), axis=0).sum()
                       + np.linalg.norm(out, axis=0).sum())
    np.testing.assert_allclose(_penalty(group) - base, expected, rtol=1e-4)
    # Same weights, same kind of model; the original keeps its own regularizers.
    assert isinstance(group, keras.Sequential)
    for a, b in zip(group.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("bn1").gamma_regularizer is None


def test_group_lasso_saves_and_loads(tmp_path):
    model = R.add_sparsity_penalty(_model(), l1=1e-3, l2=1e-4, target="filters")
    path = os.path.join(tmp_path, "m.keras")
    save_model(model, path)
    loaded = load_model(path)
    regularizer = loaded.get_layer("dw").depthwise_regularizer
    assert isinstance(regularizer, R.GroupLasso)
    assert regularizer.get_config() == {"l1": 1e-3, "l2": 1e-4, "axis": -2}
    np.testing.assert_allclose(_penalty(loaded), _penalty(model), rtol=1e-6)


def test_proximal_step_soft_thresholds():
    model = _model()
    model.compile(keras.optimizers.SGD(0.5), "mse")
    rng = np.random.default_rng(0)
    gamma = rng.normal(size=6).astype(np.float32)
    model.get_layer("bn1").gamma.assign(gamma)
    callback = R.ProximalSparsity(l1=0.8, target="bn_scale")
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_batch_end(0)
    threshold = 0.5 * 0.8
    expected = np.sign(gamma) * np.maximum(np.abs(gamma) - threshold, 0)
    np.testing.assert_allclose(model.get_layer("bn1").gamma.numpy(), expected, atol=1e-6)
    assert np.sum(expected == 0) > 0  # exact zeros, which a penalty's gradient never gives

    kernel = model.get_layer("out").kernel.numpy()
    norms = np.linalg.norm(kernel, axis=0)
    threshold = float(np.sort(norms)[1:3].mean())  # the two smallest filters go to zero
    filters = R.ProximalSparsity(l1=threshold / 0.5, target="filters", layers=["out"])
    filters.set_model(model)
    filters.on_train_begin()
    filters.on_train_batch_end(0)
    expected = kernel * np.maximum(0, 1 - threshold / norms)
    np.testing.assert_allclose(model.get_layer("out").kernel.numpy(), expected, atol=1e-6)
    report = R.channel_sparsity(model, "filters", threshold=0)
    assert {row["layer"]: row["near_zero"] for row in report["layers"]}["out"] == 2


def test_l1_on_bn_scales_shrinks_them_in_training():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    keras.utils.set_random_seed(0)
    model = _model()
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    slim = R.add_sparsity_penalty(model, l1=0.5, target="bn_scale")
    means = []
    for m in (plain, slim):
        m.compile(keras.optimizers.Adam(5e-2), keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        m.fit(x, y, batch_size=32, epochs=2, verbose=0)
        means.append(np.abs(m.get_layer("bn1").gamma.numpy()).mean())
    assert means[1] < 0.8 * means[0], means
    proximal = keras.models.clone_model(model)
    proximal.set_weights(model.get_weights())
    proximal.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    proximal.fit(x, y, batch_size=32, epochs=2, verbose=0,
                 callbacks=[R.ProximalSparsity(l1=8.0, target="bn_scale")])
    assert R.channel_sparsity(proximal, "bn_scale", threshold=0)["total"]["near_zero"] >= 1


@pytest.mark.parametrize("call, message", [
    (lambda m: R.add_sparsity_penalty(m, target="weights"), "unknown target"),
    (lambda m: R.add_sparsity_penalty(m, l1=-1.0), "l1 must be"),
    (lambda m: R.add_sparsity_penalty(m, layers=["bn2"]), "no weights for target 'bn_scale'"),
    (lambda m: R.add_sparsity_penalty(m, layers=["conv9"]), "matches no layer"),
    (lambda m: R.add_sparsity_penalty(m, target="bn_scale", exclude=["bn1"]), "no layer of"),
    (lambda m: R.GroupLasso(l1=-1), "GroupLasso l1"),
])
def test_errors(call, message):
    with pytest.raises(R.RegularizerError) as info:
        call(_model())
    assert message in str(info.value)
    assert isinstance(info.value, TfcompressError) and isinstance(info.value, ValueError)


def test_unmergeable_regularizer_is_an_error():
    model = keras.Sequential([keras.Input((4,)), L.Dense(
        3, kernel_regularizer=keras.regularizers.OrthogonalRegularizer(0.1), name="d")])
    with pytest.raises(R.RegularizerError, match="replace=True"):
        R.add_sparsity_penalty(model, target="kernel")
    assert isinstance(R.add_sparsity_penalty(model, target="kernel", replace=True).get_layer(
        "d").kernel_regularizer, keras.regularizers.L1L2)
