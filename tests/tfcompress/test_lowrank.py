"""Low-rank factorization: exact at full rank, the best rank-r approximation below it."""

import numpy as np
import pytest

from tfcompress import lowrank
from tfcompress.errors import TfcompressError
from tfcompress.keras import keras

L = keras.layers


def _model():
    inp = keras.Input((8, 8, 16))
    x = L.Conv2D(32, 1, strides=2, padding="same", activation="relu", name="pw")(inp)
    x = L.Conv2D(24, 3, name="c3")(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax", name="out")(x))


def _x(model, n=4):
    return np.random.default_rng(0).normal(size=(n,) + model.input_shape[1:]).astype(np.float32)


def test_full_rank_reproduces_the_outputs():
    model = _model()
    factored, info = lowrank.factorize(model, lowrank.LowRankConfig(
        rank_ratio=1.0, min_params_saving=None))
    x = _x(model)
    np.testing.assert_allclose(factored(x).numpy(), model(x).numpy(), atol=1e-5, rtol=0)
    assert [row["layer"] for row in info["layers"] if row["factored"]] == ["pw", "fc1", "out"]
    names = [layer.name for layer in factored.layers]
    assert names.index("pw_svd") + 1 == names.index("pw") and "c3_svd" not in names
    assert factored.get_layer("pw_svd").strides == (2, 2)
    # A Sequential model too.
    seq = keras.Sequential([keras.Input((20,)), L.Dense(30, name="d1"), L.Dense(5, name="d2")])
    factored, _ = lowrank.factorize(seq, {"rank_ratio": 1.0, "min_params_saving": None})
    x = _x(seq)
    np.testing.assert_allclose(factored(x).numpy(), seq(x).numpy(), atol=1e-5, rtol=0)


def test_reduced_rank_params_and_best_approximation():
    model = _model()
    factored, info = lowrank.factorize(model, lowrank.LowRankConfig(rank_ratio=0.25,
                                                                    layers=["fc1"]))
    row = info["layers"][0]
    assert (row["layer"], row["rank"], row["full_rank"]) == ("fc1", 16, 64)
    fan_in = 2 * 2 * 24  # c3's output: 2x2 positions of 24 channels
    assert row["params_before"] == fan_in * 64 + 64
    assert row["params_after"] == 16 * (fan_in + 64) + 64
    assert info["params_before"] - info["params_after"] == \
        row["params_before"] - row["params_after"] == model.count_params() - \
        factored.count_params()
    # x A B is the truncated SVD of the kernel: its error is the dropped spectrum.
    w = model.get_layer("fc1").kernel.numpy().astype(np.float64)
    first, second = (factored.get_layer(n).kernel.numpy() for n in ("fc1_svd", "fc1"))
    product = first @ second
    s = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(np.sum((w - product) ** 2), np.sum(s[16:] ** 2), rtol=1e-3)
    np.testing.assert_allclose(row["energy_kept"], np.sum(s[:16] ** 2) / np.sum(s ** 2),
                               rtol=1e-6)
    np.testing.assert_array_equal(factored.get_layer("fc1").bias.numpy(),
                                  model.get_layer("fc1").bias.numpy())


def test_energy_rank_and_min_params_saving():
    model = _model()
    _, info = lowrank.factorize(model, lowrank.LowRankConfig(energy=0.8, rank_multiple=4))
    for row in info["layers"]:
        layer = model.get_layer(row["layer"])
        kernel = layer.kernel.numpy()
        s = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)
        energy = np.cumsum(s ** 2) / np.sum(s ** 2)
        smallest = int(np.searchsorted(energy, 0.8) + 1)
        assert row["rank"] == min(len(s), -(-smallest // 4) * 4)
        # Kept only where the two layers save >= 10% of the parameters.
        fan_in, fan_out = row["shape"]
        before = fan_in * fan_out + fan_out
        after = row["rank"] * (fan_in + fan_out) + fan_out
        assert row["factored"] == (after <= 0.9 * before)
    out = next(row for row in info["layers"] if row["layer"] == "out")
    assert not out["factored"] and "min_params_saving" in out["reason"]
    assert out["params_after"] == out["params_before"]


@pytest.mark.parametrize("kwargs, message", [
    ({"rank_ratio": 0}, "rank_ratio must be in (0, 1]"),
    ({"rank_ratio": 1.5}, "rank_ratio must be in (0, 1]"),
    ({"energy": None}, "set rank_ratio or energy"),
    ({"min_params_saving": 2}, "min_params_saving"),
    ({"rank_multiple": 0}, "rank_multiple"),
    ({"layers": ["c3"]}, "'c3' (Conv2D) cannot be factored: its kernel is 3x3"),
    ({"layers": ["nope"]}, "matches no layer"),
    ({"exclude": ["Dense", "pw"]}, "no layer of"),
])
def test_errors(kwargs, message):
    with pytest.raises(lowrank.LowRankError) as info:
        lowrank.factorize(_model(), lowrank.LowRankConfig(**kwargs))
    assert message in str(info.value)
    assert isinstance(info.value, TfcompressError) and isinstance(info.value, ValueError)


def test_format_info():
    _, info = lowrank.factorize(_model(), lowrank.LowRankConfig(rank_ratio=0.5,
                                                                min_params_saving=0.3))
    text = lowrank.format_info(info)
    assert "32/64 (kept)" in text and "5/10 " in text and "total" in text
