"""DS-CNN keyword spotting (Zhang et al. 2017, "Hello Edge"), as in MLPerf Tiny.

A strided 10x4 conv, then depthwise-separable blocks (3x3 depthwise + 1x1
pointwise, each with BatchNorm + ReLU), average pooling and a dense classifier.
Size "S" matches the MLPerf Tiny reference layer for layer (64 filters, 4 blocks,
24,908 parameters for 49x10 MFCC inputs and 12 classes).

Example:
    model = ds_cnn((49, 10, 1), 12, size="S")
"""

from tfcompress.keras import keras

layers = keras.layers

# size: (filters, depthwise-separable blocks), from the Hello Edge paper.
SIZES = {"S": (64, 4), "M": (172, 4), "L": (276, 5)}


def ds_cnn(input_shape=(49, 10, 1), num_classes=12, size="S", classifier_activation="softmax"):
    """Builds DS-CNN-S/M/L.

    Args:
        input_shape: (time frames, features, 1); the MLPerf input is (49, 10, 1).
        num_classes: number of output classes (12 for Speech Commands KWS).
        size: "S", "M" or "L".
        classifier_activation: "softmax", or None for logits.
    """
    if size not in SIZES:
        raise ValueError(f"ds_cnn size must be one of {sorted(SIZES)}, got {size!r}")
    filters, blocks = SIZES[size]
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(filters, (10, 4), strides=(2, 2), padding="same", name="conv1")(inputs)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.ReLU(name="conv1_relu")(x)
    x = layers.Dropout(0.2, name="conv1_dropout")(x)
    for i in range(1, blocks + 1):
        x = layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        x = layers.BatchNormalization(name=f"dw{i}_bn")(x)
        x = layers.ReLU(name=f"dw{i}_relu")(x)
        x = layers.Conv2D(filters, 1, name=f"pw{i}")(x)
        x = layers.BatchNormalization(name=f"pw{i}_bn")(x)
        x = layers.ReLU(name=f"pw{i}_relu")(x)
    x = layers.Dropout(0.4, name="dropout")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation=classifier_activation, name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"ds_cnn_{size.lower()}")
