"""Channel pruning: the thin model must compute what the masked (pruned-in-place) one does."""

import json

import numpy as np
import pytest

from tfcompress import channel_pruning as cp
from tfcompress.errors import TfcompressError
from tfcompress.keras import keras, tf

import models

L = keras.layers


def _randomize(model, seed=0):
    """Non-trivial BatchNorm statistics, so that beta/mean of pruned channels would show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.3, beta.shape),
                               rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    return model


def _inputs(model, n=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(model.input_shape[1:])).astype(
        np.float32)


def _outputs(model, x):
    out = model(x, training=False)
    return [o.numpy() for o in (out if isinstance(out, list) else [out])]


def _assert_thin_matches_masked(model, thin, plan, x):
    masked = cp.mask_channels(model, plan)
    for t, m, o in zip(_outputs(thin, x), _outputs(masked, x), _outputs(model, x)):
        np.testing.assert_allclose(t, m, atol=1e-5, rtol=0)
        # The check means something only if pruning changed the outputs.
        assert np.abs(o - m).max() > 1e-3


def test_resnet8_residual_groups_and_exact_outputs():
    model = _randomize(models.get_model("resnet8", (32, 32, 3), 10, classifier_activation=None))
    thin, plan = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5, criterion="l1"))
    _assert_thin_matches_masked(model, thin, plan, _inputs(model))
    # Channels that are added together go together.
    masks = plan.masks
    np.testing.assert_array_equal(masks["stem_conv"]["out"], masks["stack1_conv2"]["out"])
    np.testing.assert_array_equal(masks["stack2_conv2"]["out"], masks["stack2_shortcut"]["out"])
    groups = {tuple(g["layers"]) for g in plan.groups}
    assert ("stem_conv", "stack1_conv2") in groups and ("stack1_conv1",) in groups
    assert [thin.get_layer(n).filters for n in ("stem_conv", "stack2_conv1", "stack3_conv2")] == \
        [8, 16, 32]
    assert plan.params_after == thin.count_params() < 0.3 * model.count_params()
    assert plan.macs_after == sum(cp.count_macs(thin).values()) < 0.3 * plan.macs_before


def test_mobilenet_v2_depthwise_and_round_to():
    model = _randomize(models.get_model("mobilenet_v2", (32, 32, 3), 10, alpha=0.35,
                                        classifier_activation=None))
    thin, plan = cp.prune_channels(model, cp.ChannelPruningConfig(
        ratio=0.5, criterion="bn_scale", round_to=4))
    _assert_thin_matches_masked(model, thin, plan, _inputs(model))
    for group in plan.groups:
        assert group["kept"] % 4 == 0 or group["kept"] == group["channels"]
    # A depthwise conv keeps exactly the channels its expand conv keeps.
    np.testing.assert_array_equal(plan.masks["block_3_depthwise"]["in"],
                                  plan.masks["block_3_expand"]["out"])
    assert thin.get_layer("block_3_depthwise").get_weights()[0].shape[2] == \
        thin.get_layer("block_3_expand").filters == model.get_layer("block_3_expand").filters // 2
    assert plan.macs_after < 0.4 * plan.macs_before


def _sequential():
    return keras.Sequential([
        keras.Input((10, 10, 3)), L.Conv2D(8, 3, name="c1"), L.BatchNormalization(name="bn1"),
        L.ReLU(), L.Conv2D(16, 3, name="c2"), L.MaxPooling2D(), L.Flatten(),
        L.Dense(12, activation="relu", name="hidden"), L.Dense(5, name="out")])


def test_sequential_copies_the_strongest_filters_exactly():
    model = _randomize(_sequential())
    thin, plan = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5, criterion="l2"))
    _assert_thin_matches_masked(model, thin, plan, _inputs(model))
    kernel = model.get_layer("c1").kernel.numpy()
    norms = np.sqrt((kernel ** 2).reshape(-1, 8).sum(0))
    keep = np.sort(np.argsort(-norms)[:4])
    np.testing.assert_array_equal(np.flatnonzero(plan.masks["c1"]["out"]), keep)
    np.testing.assert_array_equal(thin.get_layer("c1").kernel.numpy(), kernel[..., keep])
    gamma = model.get_layer("bn1").gamma.numpy()
    np.testing.assert_array_equal(thin.get_layer("bn1").gamma.numpy(), gamma[keep])
    # Flatten -> Dense: each kept channel of c2 keeps its rows at all 3x3 positions.
    assert thin.get_layer("hidden").kernel.shape == (3 * 3 * 8, 6)
    assert thin.get_layer("out").kernel.shape == (6, 5)


def _branchy():
    inp = keras.Input((8, 8, 4))
    a = L.Conv2D(8, 1, name="a")(inp)
    b = L.Conv2D(6, 3, padding="same", name="b")(inp)
    x = L.BatchNormalization(name="bn")(L.Concatenate(name="cat")([a, b]))
    se = L.GlobalAveragePooling2D(keepdims=True)(x)
    se = L.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(14, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="se_mul")([x, se])
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.Conv2D(10, 1, name="pw")(x)
    shared = L.Conv2D(10, 1, name="shared")
    y = L.Add(name="add")([shared(x), shared(L.ReLU()(x))])
    side = L.Reshape((64, 10), name="reshape")(y)
    y = L.Conv2D(7, 3, name="last")(L.Conv2D(12, 3, padding="same", name="pre")(y))
    out = L.Dense(3, name="head")(L.Flatten()(y))
    return keras.Model(inp, [out, side])


def test_concatenate_se_multiply_depthwise_multiplier_and_barriers():
    model = _randomize(_branchy())
    thin, plan = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5))
    _assert_thin_matches_masked(model, thin, plan, _inputs(model))
    groups = {tuple(g["layers"]) for g in plan.groups}
    # Concatenated a|b is multiplied by se_expand's channels: one group.
    assert ("a", "b", "se_expand") in groups
    # pw feeds a shared layer (a barrier): kept whole, as are the outputs.
    assert not any("pw" in g or "shared" in g or "head" in g for g in groups)
    assert thin.get_layer("pw").filters == 10 and thin.output_shape[1] == (None, 64, 10)
    assert thin.get_layer("dw").get_weights()[0].shape[2] == 7  # 14 -> 7 channels, x2 outputs
    assert thin.get_layer("a").filters >= 1


def test_taylor_scores_what_the_loss_sees():
    inp = keras.Input((6,))
    hidden = L.Dense(8, activation="relu", name="hidden")(inp)
    model = keras.Model(inp, L.Dense(3, name="out")(hidden))
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (6, 8)).astype(np.float32)
    w1[:, :4] *= 10                              # large filters ...
    w2 = rng.normal(0, 1, (8, 3)).astype(np.float32)
    w2[:4] = 0                                    # ... that the output never reads
    model.set_weights([w1, np.full(8, 0.1, np.float32), w2, np.zeros(3, np.float32)])
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _, by_l1 = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5, criterion="l1"))
    _, by_taylor = cp.prune_channels(model, cp.ChannelPruningConfig(
        ratio=0.5, criterion="taylor", batch_size=32, taylor_batches=1), data=(x, y), loss=loss)
    np.testing.assert_array_equal(np.flatnonzero(by_l1.masks["hidden"]["out"]), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.flatnonzero(by_taylor.masks["hidden"]["out"]), [4, 5, 6, 7])
    # The score is (sum over samples of h * dL/dh)^2: the gate's gradient, squared.
    sub = keras.Model(inp, hidden)
    with tf.GradientTape() as tape:
        h = sub(x)
        tape.watch(h)
        value = loss(y, model.get_layer("out")(h))
    expected = (tf.reduce_sum(h * tape.gradient(value, h), 0).numpy()) ** 2
    np.testing.assert_allclose(by_taylor.groups[0]["importance"], expected, rtol=1e-4, atol=1e-12)


def test_target_macs_is_reached_by_the_smallest_ratio():
    model = _randomize(_sequential())
    macs = sum(cp.count_macs(model).values())
    thin, plan = cp.prune_channels(model, cp.ChannelPruningConfig(target_macs=0.3))
    assert plan.macs_after <= 0.3 * macs
    assert sum(cp.count_macs(thin).values()) == plan.macs_after
    found = plan.groups[0]["ratio"]
    _, less = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=max(found - 0.02, 0)))
    assert less.macs_after > 0.3 * macs
    _, absolute = cp.prune_channels(model, {"target_macs": plan.macs_after})
    assert absolute.macs_after == plan.macs_after


def test_per_layer_exclude_skip_and_global_ranking():
    model = _randomize(_sequential())
    _, plan = cp.prune_channels(model, cp.ChannelPruningConfig(
        ratio=0.5, per_layer={"c2": 0.75}, exclude=["hidden"]))
    kept = {g["layers"][0]: g["kept"] for g in plan.groups}
    assert kept == {"c1": 4, "c2": 4, "hidden": 12}
    _, plan = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5,
                                                               skip_first_and_last=True))
    assert {g["layers"][0]: g["kept"] for g in plan.groups} == {"c1": 8, "c2": 8, "hidden": 12}
    _, plan = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5, global_ranking=True))
    kept = [g["kept"] for g in plan.groups]
    assert sum(kept) == 36 - 18 and min(kept) >= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 1.0}, "ratio must be"),
    ({"ratio": -0.1}, "ratio must be"),
    ({"criterion": "random"}, "unknown criterion"),
    ({"round_to": 0}, "round_to"),
    ({"ratio": 0.5, "target_macs": 0.5}, "not both"),
    ({"per_layer": {"c1": 1.5}}, "per_layer['c1']"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(cp.ChannelPruningError, match=None) as info:
        cp.ChannelPruningConfig(**kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, (TfcompressError)) and isinstance(info.value, ValueError)


def test_model_errors_name_the_layer_and_fix():
    model = _sequential()

    def error(config=None, data=None, m=model):
        with pytest.raises(cp.ChannelPruningError) as info:
            cp.prune_channels(m, config, data=data)
        return str(info.value)

    assert "needs data=(x, y)" in error({"criterion": "taylor"})
    assert "'out'" in error({"per_layer": {"out": 0.5}}) and "model output" in error(
        {"per_layer": {"out": 0.5}})
    assert "matches no layer" in error({"exclude": ["conv9"]})
    assert "cannot be reached" in error({"target_macs": 10})
    assert "BatchNormalization" in error({"criterion": "bn_scale"})  # 'hidden' has none
    assert "shape" in error({"criterion": "taylor"}, data=(np.zeros((4, 9, 9, 3)), np.zeros(4)))

    class Sub(keras.Model):
        def call(self, x):
            return x

    assert "subclassed" in error(m=Sub())
    dense_only = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    assert "no channels" in error(m=dense_only)
    _, plan = cp.prune_channels(model)
    with pytest.raises(cp.ChannelPruningError, match="plan does not fit"):
        cp.mask_channels(_randomize(_branchy()), plan)


def test_format_plan_json_and_float_tflite():
    from tflite_export.convert import convert
    from tflite_export.evaluate import TfliteRunner
    model = _randomize(_sequential())
    thin, plan = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5))
    text = cp.format_plan(plan)
    assert "c1" in text and "8 -> 4" in text and "total" in text
    assert json.loads(json.dumps(plan.to_dict()))["macs_after"] == plan.macs_after
    x = _inputs(model, n=3)
    runner = TfliteRunner(convert(thin, "float32"))
    np.testing.assert_allclose(runner.predict(x), thin.predict(x, verbose=0), atol=1e-4)


def test_fine_tune_lowers_the_loss(fashion_mnist):
    from tfcompress.data import subsample
    x, y = subsample(fashion_mnist.x_train, fashion_mnist.y_train, 512, seed=0)
    model = models.get_model("small_cnn", (28, 28, 1), 10, width=4)
    thin, _ = cp.prune_channels(model, cp.ChannelPruningConfig(ratio=0.5))
    history = cp.fine_tune(thin, x, y, epochs=2, batch_size=64, learning_rate=3e-3)
    assert history.history["loss"][1] < history.history["loss"][0]


@pytest.mark.slow
def test_pruned_small_cnn_recovers_on_fashion_mnist(fashion_mnist):
    """50% of channels removed (Taylor), one epoch of fine-tuning: within 3 points."""
    from tfcompress.data import subsample
    ds = fashion_mnist
    x, y = subsample(ds.x_train, ds.y_train, 20000, seed=0)
    xt, yt = subsample(ds.x_test, ds.y_test, 2000, seed=0)
    keras.utils.set_random_seed(0)
    model = models.get_model("small_cnn", (28, 28, 1), 10, width=16)
    cp.fine_tune(model, x, y, epochs=3, learning_rate=2e-3)
    dense = np.mean(model.predict(xt, verbose=0).argmax(-1) == yt)
    thin, plan = cp.prune_channels(model, cp.ChannelPruningConfig(0.5, "taylor"),
                                   data=(x[:1024], y[:1024]))
    cp.fine_tune(thin, x, y, epochs=1, learning_rate=1e-3)
    pruned = np.mean(thin.predict(xt, verbose=0).argmax(-1) == yt)
    assert plan.macs_after < 0.3 * plan.macs_before
    assert pruned >= dense - 0.03, (dense, pruned)
