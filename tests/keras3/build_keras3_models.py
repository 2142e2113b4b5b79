"""Builds Keras 3 model files the way a Keras 3 user does (`import keras`, TF 2.16+).

Run as a script in a process without TF_USE_LEGACY_KERAS (so `keras` is Keras 3);
the tests never import it. Every model has a fixed seed; each file is written with
the model's outputs on a fixed batch (`NAME.npz`: x or x0/x1, y), so a test can
compare tfcompress's import with what Keras 3 itself computed.

Example:
    python build_keras3_models.py OUT_DIR mobilenet_v2 nested two_input
    python build_keras3_models.py OUT_DIR fashion FASHION_NPZ   # trains on a subset
    python build_keras3_models.py OUT_DIR predict MODEL.keras INPUTS.npz  # OUT_DIR/predicted.npy
"""

import json
import os
import sys

os.environ.pop("TF_USE_LEGACY_KERAS", None)
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

SEED = 7


# keras.applications with 10 classes and logits out: a softmax over 1000 classes of an
# untrained model is ~0.001 everywhere and would hide a wrong weight.
HEAD = {"weights": None, "classes": 10, "classifier_activation": None}


def mobilenet_v2():
    return keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, **HEAD)


def mobilenet_v3_small():
    return keras.applications.MobileNetV3Small(input_shape=(96, 96, 3), **HEAD)


def efficientnet_b0():
    return keras.applications.EfficientNetB0(input_shape=(64, 64, 3), **HEAD)


def resnet50():
    return keras.applications.ResNet50(input_shape=(64, 64, 3), **HEAD)


def nested():
    """A backbone model called as a layer (frozen BN inside), a Sequential head."""
    inner = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same", name="b_conv")(inner)
    x = layers.BatchNormalization(name="b_bn")(x)
    x = layers.ReLU(name="b_relu")(x)
    backbone = keras.Model(inner, layers.GlobalAveragePooling2D(name="b_gap")(x),
                           name="backbone")
    backbone.get_layer("b_bn").trainable = False
    head = keras.Sequential([layers.Dense(16, activation="relu", name="h1"),
                             layers.Dense(5, name="h2")], name="head")
    inputs = keras.Input((32, 32, 3), name="image")
    features = backbone(inputs, training=False)  # the transfer-learning idiom
    return keras.Model(inputs, head(features), name="nested")


def two_input():
    a = keras.Input((12,), name="a")
    b = keras.Input((6,), name="b")
    x = layers.Concatenate(name="cat")([layers.Dense(8, name="da")(a),
                                        layers.Dense(8, name="db")(b)])
    x = layers.LeakyReLU(negative_slope=0.2, name="leaky")(x)
    return keras.Model([a, b], layers.Dense(3, activation="softmax", name="out")(x),
                       name="two_input")


def shared():
    """Layers called twice at different depths: `s` first on a deep tensor (its node 0),
    then on the input (node 1), and a(b(a(b(x)))); node order matters."""
    inputs = keras.Input((6,), name="x")
    s = layers.Dense(6, name="s")
    deep = s(layers.Dense(6, name="c2")(layers.Dense(6, name="c1")(inputs)))
    shallow = s(inputs)
    a = layers.Dense(6, activation="tanh", name="a")
    b = layers.Dense(6, name="b")
    x = layers.Add(name="join")([deep, shallow * 2.0])
    return keras.Model(inputs, a(b(a(b(x)))), name="shared")


def mixed():
    """Rescaling, Dropout, a frozen BN, keras.ops calls, hard_sigmoid/hard_silu, LayerNorm."""
    inputs = keras.Input((28, 28, 1), name="pixels")
    x = layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="c1")(x)
    bn = layers.BatchNormalization(name="bn_frozen")
    bn.trainable = False
    x = bn(x)
    x = layers.Activation("hard_silu", name="hswish")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Add(name="residual")([x, y])
    x = ops.relu(x * 0.5 + 1.0)
    gate = layers.Activation("hard_sigmoid", name="hsig")(ops.mean(x, axis=(1, 2),
                                                                   keepdims=True))
    x = layers.Multiply(name="se")([x, gate])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.LayerNormalization(name="ln")(x)
    x = layers.Dropout(0.3, name="drop")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="mixed")


def all_ops():
    """Every Keras 3 op the importer translates, on two inputs."""
    a, b = keras.Input((4, 6), name="a"), keras.Input((4, 6), name="b")
    outputs = [
        a + b, a - b, a * b, a / b, 2.0 - a, 1.0 / (a + 3.0), a / 4.0, -a,
        ops.maximum(a, b), ops.minimum(a, 0.5), ops.abs(a), ops.sqrt(ops.abs(a)),
        ops.square(a), ops.exp(a), ops.log(ops.abs(a) + 1.0), ops.power(a, 3.0), a ** 2,
        ops.erf(a), ops.mean(a, axis=-1, keepdims=True), ops.mean(a, axis=1),
        ops.sum(a, axis=1), ops.max(a, axis=2), ops.min(a, axis=2), ops.reshape(a, (-1, 24)),
        ops.transpose(a, (0, 2, 1)), ops.concatenate([a, b], axis=-1),
        ops.expand_dims(a, 1), ops.squeeze(ops.expand_dims(a, 1), axis=1),
        ops.matmul(a, ops.transpose(b, (0, 2, 1))), ops.clip(a, -1, 1), ops.cast(a, "float16"),
        ops.relu(a), ops.relu6(a), ops.sigmoid(a), ops.hard_sigmoid(a), ops.hard_silu(a),
        ops.silu(a), ops.tanh(a), ops.softmax(a, axis=-1), ops.gelu(a), a[:, 1:3, ::2]]
    # One output (the test compares one array): every op's result, flattened and joined.
    flat = [ops.cast(ops.reshape(t, (-1, int(np.prod(t.shape[1:])))), "float32")
            for t in outputs]
    return keras.Model([a, b], ops.concatenate(flat, axis=1), name="all_ops")


def plain():
    """Only layers (no ops): Keras 3 can read its own .h5 file of it."""
    return keras.Sequential([keras.Input((20,)), layers.Dense(16, activation="gelu", name="d1"),
                             layers.Dropout(0.1), layers.Dense(4, activation="hard_sigmoid",
                                                               name="d2")], name="plain")


def with_lambda():
    """A Lambda layer: its bytecode must never run on import."""
    inputs = keras.Input((4,))
    return keras.Model(inputs, layers.Lambda(lambda t: t * 2.0, name="double")(inputs))


def unsupported_op():
    inputs = keras.Input((6,))
    return keras.Model(inputs, layers.Dense(2, name="d")(ops.cumsum(inputs, axis=1)))


def rms_norm():
    inputs = keras.Input((6,))
    return keras.Model(inputs, layers.LayerNormalization(rms_scaling=True, name="rms")(inputs))


def subclassed():
    @keras.saving.register_keras_serializable("user")
    class TwoDense(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d1 = layers.Dense(8, activation="relu", name="d1")
            self.d2 = layers.Dense(3, name="d2")

        def call(self, x):
            return self.d2(self.d1(x))

    model = TwoDense(name="two_dense")
    model(np.zeros((1, 10), np.float32))
    return model


def _inputs(model, rng):
    arrays = []
    for tensor in model.inputs:
        shape = [3] + list(tensor.shape[1:])
        arrays.append(rng.uniform(0, 255 if tensor.shape[-1] in (1, 3) else 1,
                                  size=shape).astype("float32"))
    return arrays


def build(out, name):
    keras.utils.set_random_seed(SEED)
    model = globals()[name]()
    rng = np.random.default_rng(SEED)
    if name == "subclassed":
        x = [rng.standard_normal((3, 10)).astype("float32")]
    else:
        x = _inputs(model, rng)
    y = np.asarray(model(x if len(x) > 1 else x[0], training=False))
    arrays = {"y": y, **({"x": x[0]} if len(x) == 1 else {f"x{i}": a for i, a in enumerate(x)})}
    np.savez(os.path.join(out, f"{name}.npz"), **arrays)
    model.save(os.path.join(out, f"{name}.keras"))
    if name in ("plain", "subclassed"):
        suffix = ".weights.h5"
        model.save_weights(os.path.join(out, f"{name}{suffix}"))
    if name == "plain":
        model.save(os.path.join(out, f"{name}.h5"))


def fashion(out, data_path):
    """A small Keras 3 CNN trained on a Fashion-MNIST subset (uint8 pixels in, Rescaling
    inside, BN, depthwise, hard-swish, a residual add), with its own test accuracy."""
    keras.utils.set_random_seed(SEED)
    data = np.load(data_path)
    inputs = keras.Input((28, 28, 1), name="pixels")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.Activation("hard_swish")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization(momentum=0.9)(y)
    y = layers.ReLU()(y)
    x = layers.Add()([x, y])
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(x), name="k3_cnn")
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data["x"], data["y"], epochs=4, batch_size=64, verbose=0)
    accuracy = float(model.evaluate(data["x_test"], data["y_test"], verbose=0)[1])
    model.save(os.path.join(out, "fashion.keras"))
    with open(os.path.join(out, "fashion.json"), "w") as f:
        json.dump({"accuracy": accuracy, "keras_version": keras.__version__}, f)


def predict(out, model_path, npz_path):
    """Keras 3 reads a file tfcompress wrote (keras3_export) and predicts, as a user would."""
    model = keras.saving.load_model(model_path)
    data = np.load(npz_path)
    xs = [data[k] for k in sorted(data.files) if k.startswith("x")]
    y = np.asarray(model.predict(xs if len(xs) > 1 else xs[0], verbose=0))
    np.save(os.path.join(out, "predicted.npy"), y)


if __name__ == "__main__":
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    if sys.argv[2] == "predict":
        predict(out_dir, sys.argv[3], sys.argv[4])
    elif sys.argv[2] == "fashion":
        fashion(out_dir, sys.argv[3])
    else:
        for model_name in sys.argv[2:]:
            build(out_dir, model_name)
