"""Weight clustering: cluster / strip, unique values through CQAT and PCQAT into int8 TFLite."""

import re

import numpy as np
import pytest

import tfcompress
from tfcompress import clustering, pruning, quantization, schedules
from tfcompress.clustering import ClusteringConfig, ClusteringError
from tfcompress.keras import keras
from tfcompress.quantization import QATConfig
from tflite_export.convert import convert

L = keras.layers


def _fit(model, x, y, lr=1e-3):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    return model


def _random(shape, classes, n=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, classes, n)


def _net(name="net"):
    """Bias-free conv + BN + ReLU, a conv with bias and ReLU, a dense head (12x12x3 in)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, use_bias=False, name="c1")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="r1")(x)
    x = L.Conv2D(16, 3, activation="relu", name="c2")(x)
    x = L.Flatten(name="f")(x)
    return keras.Model(inputs, L.Dense(4, activation="softmax", name="d")(x), name=name)


def _rows(report):
    return {row["layer"]: row for row in report["kernels"]}


def _qat_kernel(qat, name):
    """The float kernel variable a QAT wrapper holds (the inner layer's `kernel`
    attribute is the fake-quantized tensor once the model has been called)."""
    return next(w for w in qat.get_layer(f"quant_{name}").weights
                if w.name.split("/")[-1] == "kernel:0").numpy()


@pytest.fixture(scope="module")
def clustered16():
    """_net clustered to 16 values a kernel, fine-tuned one epoch, and stripped."""
    model = _net()
    x, y = _random((12, 12, 3), 4)
    before = [w.copy() for w in model.get_weights()]
    wrapped = _fit(clustering.cluster(model, ClusteringConfig(16)), x, y)
    return model, before, wrapped, clustering.strip_clustering(wrapped)


def test_sixteen_clusters_leave_at_most_sixteen_values_after_stripping(clustered16):
    model, before, wrapped, plain = clustered16
    assert {layer.name for layer in wrapped.layers} >= {"cluster_c1", "cluster_c2", "cluster_d"}
    # strip_clustering is the exact inverse in structure: names, order, shapes.
    assert [layer.name for layer in plain.layers] == [layer.name for layer in model.layers]
    assert [w.shape for w in plain.weights] == [w.shape for w in model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    rows = _rows(clustering.unique_values_report(plain))
    assert set(rows) == {"c1", "c2", "d"}  # kernels only: no BN, no biases
    for name in ("c1", "c2", "d"):
        assert rows[name]["unique"] <= 16 and rows[name]["size"] > 16, name
        assert len(np.unique(plain.get_layer(name).kernel.numpy())) == rows[name]["unique"]
    # The wrapped model reports what it computes with: the same kernels.
    assert _rows(clustering.unique_values_report(wrapped)) == rows
    text = clustering.format_unique_values_report(clustering.unique_values_report(plain))
    assert re.search(r"^c2\s+Conv2D\s+kernel\s+3x3x8x16\s+1,152\s+(1[0-6]|[1-9])\s", text, re.M)


def test_cluster_preserving_qat_keeps_the_clusters_into_the_int8_file(clustered16):
    _, _, _, plain = clustered16
    x, y = _random((12, 12, 3), 4, seed=1)
    qat = _fit(quantization.quantize(plain, QATConfig(scheme="cluster_preserving")), x, y, lr=0.01)
    # The float kernels the QAT model holds (its clustered weights)...
    for name in ("c1", "c2", "d"):
        assert len(np.unique(_qat_kernel(qat, name))) <= 16, name
    # ...and what it computes with (fake-quantized: conv scales are per channel,
    # so a conv keeps <= 16 values per channel, the per-tensor Dense <= 16 in all).
    qat_rows = _rows(clustering.unique_values_report(qat))
    assert qat_rows["d"]["unique"] <= 16
    assert all(qat_rows[n]["max_unique_per_channel"] <= 16 for n in ("c1", "c2"))
    data = convert(qat, "int8_full")
    tflite_rows = _rows(clustering.unique_values_report(data))
    assert set(tflite_rows) == {"c1", "c2", "d"}
    assert tflite_rows["d"]["unique"] <= 16
    assert all(tflite_rows[n]["max_unique_per_channel"] <= 16 for n in ("c1", "c2"))
    # The check can fail: plain QAT of the same model spreads the values out.
    plain_qat = _fit(quantization.quantize(plain), x, y, lr=0.01)
    assert len(np.unique(_qat_kernel(plain_qat, "d"))) > 16


def test_cqat_keeps_a_per_tensor_clustered_conv_per_tensor(tmp_path):
    # Every channel of this conv holds all 4 values, which makes TFMOT's CQAT
    # cluster it per channel and the kernel drift to 4 x 8 values (measured: 32).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 32))
    x = L.Flatten()(L.Conv2D(8, 3, name="conv")(inputs))
    model = keras.Model(inputs, L.Dense(3, name="d")(x))
    plain = clustering.strip_clustering(clustering.cluster(model, ClusteringConfig(4)))
    kernel = plain.get_layer("conv").kernel.numpy()
    assert [len(np.unique(kernel[..., c])) for c in range(8)] == [4] * 8
    x, y = _random((6, 6, 32), 3)
    qat = _fit(quantization.quantize(plain, QATConfig(scheme="cluster_preserving")), x, y, lr=0.01)
    assert len(np.unique(_qat_kernel(qat, "conv"))) == 4
    # From a file too (TFMOT could not rebuild CQAT layers from one at all).
    loaded = quantization.load_qat_model(tfcompress.save_model(qat, str(tmp_path / "cqat.h5")))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert len(np.unique(_qat_kernel(_fit(loaded, x, y, lr=0.01), "conv"))) == 4


def test_per_channel_clusters_each_channel_of_a_bias_free_conv():
    # TFMOT's cluster_weights skips every bias-free Conv2D with cluster_per_channel
    # (it reads the kernel as the bias when counting channels).
    model = _net()
    with pytest.warns(UserWarning, match=r"left unclustered.*c1 \(32 clusters\)"):
        wrapped = clustering.cluster(model, ClusteringConfig(32, per_channel=True))
    assert "c1" in [layer.name for layer in wrapped.layers]  # 27 weights a channel: too few
    rows = _rows(clustering.unique_values_report(wrapped))
    assert rows["c2"]["max_unique_per_channel"] <= 32 < rows["c2"]["unique"]
    assert rows["d"]["unique"] <= 32  # not a Conv2D: per kernel
    assert rows["c1"]["unique"] == rows["c1"]["size"]


def test_pruned_then_clustered_then_pcqat_keeps_zeros_and_clusters(tmp_path):
    model = _net()
    x, y = _random((12, 12, 3), 4)
    pruned = pruning.strip_pruning(_fit(pruning.prune(model, pruning.PruningConfig(
        0.5, schedule=schedules.get("constant"), include=["c2", "d"]), steps_per_epoch=2), x, y))
    zeros = {n: pruned.get_layer(n).kernel.numpy() == 0 for n in ("c2", "d")}
    assert all(0.45 < z.mean() < 0.55 for z in zeros.values())
    plain = clustering.strip_clustering(_fit(clustering.cluster(pruned, ClusteringConfig(
        8, preserve_sparsity=True, include=["c2", "d"])), x, y))
    for name, mask in zeros.items():
        kernel = plain.get_layer(name).kernel.numpy()
        assert np.all(kernel[mask] == 0) and len(np.unique(kernel)) <= 8, name
    # c1 has no zeros: stock TFMOT's shared conv quantizer then stops preserving
    # zeros for c2 as well (measured); each layer has its own here.
    qat = _fit(quantization.quantize(plain, QATConfig(scheme="prune_cluster_preserving")), x, y,
               lr=0.01)
    # (test_quantization checks PQAT zeros inside the int8 file; here the Keras side.)
    computed = {k["layer"]: k["values"] for k in quantization.quantized_kernels(qat)}
    for name, mask in zeros.items():
        float_kernel = _qat_kernel(qat, name)
        assert np.all(float_kernel[mask] == 0) and len(np.unique(float_kernel)) <= 8, name
        assert np.all(computed[name][mask] == 0), name
    # Saved and loaded, it goes on keeping both (the masks are rebuilt from the file).
    loaded = quantization.load_qat_model(tfcompress.save_model(qat, str(tmp_path / "q.keras")))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    _fit(loaded, x, y, lr=0.05)
    for name, mask in zeros.items():
        float_kernel = _qat_kernel(loaded, name)
        assert np.all(float_kernel[mask] == 0) and len(np.unique(float_kernel)) <= 8, name


def test_per_layer_clusters_and_selection():
    model = _net()
    wrapped = clustering.cluster(model, ClusteringConfig(
        4, include=["Conv2D", "d"], exclude=["c1"], per_layer={"d": 32}))
    assert [layer.name for layer in wrapped.layers if layer.name.startswith("cluster_")] == \
        ["cluster_c2", "cluster_d"]
    rows = _rows(clustering.unique_values_report(wrapped))
    assert rows["c2"]["unique"] <= 4 and 4 < rows["d"]["unique"] <= 32
    assert rows["c1"]["unique"] > 32  # left alone
    wrapped = clustering.cluster(model, ClusteringConfig(4, skip_first_and_last=True))
    assert [layer.name for layer in wrapped.layers if layer.name.startswith("cluster_")] == \
        ["cluster_c2"]


@pytest.mark.parametrize("kwargs, message", [
    ({"number_of_clusters": 1}, "number_of_clusters must be an integer >= 2, got 1"),
    ({"number_of_clusters": 2, "preserve_sparsity": True},
     "number_of_clusters must be an integer >= 3 with preserve_sparsity"),
    ({"number_of_clusters": True}, "number_of_clusters must be an integer >= 2, got True"),
    ({"init": "kmeans"}, "unknown centroid init 'kmeans'; choose one of kmeans++, linear, "
                         "density, random"),
    ({"per_layer": {"d": 1}}, "per_layer['d'] must be an integer >= 2"),
    ({"per_channel": "yes"}, "per_channel must be True or False"),
])
def test_bad_config_values_are_refused(kwargs, message):
    with pytest.raises(ClusteringError, match=re.escape(message)):
        ClusteringConfig(**kwargs)


def test_models_and_layers_clustering_cannot_take():
    model = _net()
    with pytest.raises(ClusteringError, match="include entry 'conv9' matches no layer"):
        clustering.cluster(model, ClusteringConfig(include=["conv9"]))
    with pytest.raises(ClusteringError, match="already clustered"):
        clustering.cluster(clustering.cluster(model))
    with pytest.raises(ClusteringError, match="quantization-aware"):
        clustering.cluster(quantization.quantize(model))

    class Scale(L.Layer):
        def build(self, input_shape):
            self.w = self.add_weight("w", shape=(input_shape[-1],))

        def call(self, x):
            return x * self.w

    inputs = keras.Input((6,))
    custom = keras.Model(inputs, L.Dense(2, name="d")(Scale(name="scale")(inputs)))
    with pytest.raises(ClusteringError, match=r"layer 'scale' \(Scale\) has weights TFMOT does "
                                              r"not know how to cluster.*exclude=\['scale'\]"):
        clustering.cluster(custom)
    assert isinstance(ClusteringError("x"), ValueError)
