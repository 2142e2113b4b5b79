"""Sensitivity allocation: the greedy (pure), sparsity per layer, channel ratios per group."""

import numpy as np
import pytest

from tfcompress import channel_pruning, pruning
from tfcompress.allocation import AllocationError, greedy_allocate, predicted_cost
from tfcompress.channel_pruning.sensitivity import allocate_ratios
from tfcompress.keras import keras
from tfcompress.pruning.sensitivity import allocate_sparsity

CURVES = {"a": [(0.5, 0.2), (0.9, 1.5)], "b": [(0.5, 0.0), (0.9, 0.1)],
          "c": [(0.5, 0.05), (0.9, 0.3)]}
SIZES = {"a": 100, "b": 900, "c": 500}


def _mean(ratios, sizes):
    return sum(ratios[n] * sizes[n] for n in ratios) / sum(sizes[n] for n in ratios)


def test_greedy_reaches_the_target_and_prefers_insensitive_layers():
    ratios = greedy_allocate(CURVES, SIZES, 0.7)
    assert _mean(ratios, SIZES) == pytest.approx(0.7, abs=1e-9)
    assert ratios["b"] > ratios["c"] > ratios["a"]
    uniform = {n: 0.7 for n in CURVES}
    assert predicted_cost(CURVES, ratios) < predicted_cost(CURVES, uniform)


def test_greedy_keeps_fixed_layers_and_counts_them():
    sizes = {**SIZES, "fixed": 300}
    ratios = greedy_allocate(CURVES, sizes, 0.6, fixed={"fixed": 0.2})
    assert ratios["fixed"] == 0.2
    assert _mean(ratios, sizes) == pytest.approx(0.6, abs=1e-9)


def test_greedy_refuses_what_it_cannot_do():
    with pytest.raises(AllocationError, match="out of reach"):
        greedy_allocate(CURVES, SIZES, 0.95)       # every curve stops at 0.9
    with pytest.raises(AllocationError, match="overrides alone"):
        greedy_allocate(CURVES, {**SIZES, "x": 10_000}, 0.5, fixed={"x": 0.9})


def _trained_cnn():
    """A small conv + BN + dense model fitted a little on separable synthetic data."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((512, 12, 12, 1), dtype=np.float32)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype(np.int64)
    y = y + 2 * (x[:, :, :6].mean(axis=(1, 2, 3)) > 0.5)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv_a")(inputs)
    h = keras.layers.BatchNormalization(name="bn_a")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv_b")(h)
    h = keras.layers.BatchNormalization(name="bn_b")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(24, activation="relu", name="dense_c")(h)
    outputs = keras.layers.Dense(4, activation="softmax", name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def trained():
    return _trained_cnn()


def test_sparsity_allocation_reaches_the_total_after_pruning(trained):
    model, x, y = trained
    before = [w.copy() for w in model.get_weights()]
    config = pruning.PruningConfig(0.85, skip_first_and_last=False, exclude=["conv_a"],
                                   per_layer={"out": 0.5}, schedule="constant")
    allocation = allocate_sparsity(model, config, x, y, samples=256)
    for old, new in zip(before, model.get_weights()):  # measured on the model, then restored
        np.testing.assert_array_equal(old, new)
    assert "conv_a" not in allocation.per_layer          # excluded: dense, not counted
    assert allocation.per_layer["out"] == 0.5            # the override is kept
    assert allocation.fixed == ["out"] and "out" not in allocation.curves
    assert allocation.total_ratio == pytest.approx(0.85, abs=1e-6)
    assert len(set(round(v, 3) for v in allocation.per_layer.values())) > 1
    pruned = pruning.prune(model, allocation.apply(config), steps_per_epoch=8, total_epochs=1)
    pruned.compile("adam", "sparse_categorical_crossentropy")
    pruned.fit(x, y, batch_size=64, epochs=1, verbose=0,
               callbacks=pruning.pruning_callbacks())
    final = pruning.strip_pruning(pruned)
    zeros = sizes = 0
    for name in allocation.per_layer:
        kernel = final.get_layer(name).kernel.numpy()
        zeros += int(np.sum(kernel == 0))
        sizes += kernel.size
        assert np.mean(kernel == 0) == pytest.approx(allocation.per_layer[name], abs=0.01)
    assert zeros / sizes == pytest.approx(0.85, abs=0.005)
    assert np.all(final.get_layer("conv_a").kernel.numpy() != 0)


def test_sparsity_allocation_is_deterministic(trained):
    model, x, y = trained
    config = pruning.PruningConfig(0.8, skip_first_and_last=False)
    first = allocate_sparsity(model, config, x, y, samples=256)
    second = allocate_sparsity(model, config, x, y, samples=256)
    assert first.per_layer == second.per_layer
    assert first.curves == second.curves


def test_sparsity_allocation_refuses_structures_and_impossible_totals(trained):
    model, x, y = trained
    with pytest.raises(pruning.PruningError, match="structure"):
        allocate_sparsity(model, pruning.PruningConfig(structure="2:4"), x, y, samples=128)
    with pytest.raises(pruning.PruningError, match="out of reach"):
        allocate_sparsity(model, pruning.PruningConfig(0.99, skip_first_and_last=False), x, y,
                          samples=128)


def test_channel_allocation_divides_the_ratio_among_groups(trained):
    model, x, y = trained
    config = channel_pruning.ChannelPruningConfig(ratio=0.5, per_layer={"dense_c": 0.25})
    allocation = allocate_ratios(model, config, x, y, samples=256)
    assert allocation.unit == "channels"
    assert allocation.per_layer["dense_c"] == 0.25
    assert allocation.total_ratio == pytest.approx(0.5, abs=1e-6)
    thin, plan = channel_pruning.prune_channels(model, allocation.apply(config))
    kept = {g["layers"][0]: g["kept"] / g["channels"] for g in plan.groups}
    for name, ratio in allocation.per_layer.items():
        # Kept counts are whole channels: within one channel of the allocated ratio.
        channels = allocation.sizes[name]
        assert abs((1 - kept[name]) - ratio) <= 1 / channels + 1e-9
    assert thin.count_params() < model.count_params()
