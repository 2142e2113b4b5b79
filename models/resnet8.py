"""ResNet-8 for CIFAR-10 as in the MLPerf Tiny image-classification benchmark.

A 3x3 conv stem and three residual stacks (16, 32, 64 filters; the last two
downsample by 2 with a 1x1 conv shortcut), global average pooling and a dense
classifier; ~78k parameters for 32x32x3 inputs.

Example:
    model = resnet8((32, 32, 3), 10)
"""

from tfcompress.keras import keras

layers = keras.layers


def _stack(x, filters, strides, name, l2):
    reg = keras.regularizers.l2(l2)
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", kernel_regularizer=reg,
                      name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", kernel_regularizer=reg, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if strides != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=strides, padding="same", kernel_regularizer=reg,
                          name=f"{name}_shortcut")(x)
    x = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_relu2")(x)


def resnet8(input_shape=(32, 32, 3), num_classes=10, l2=1e-4, classifier_activation="softmax"):
    """Builds ResNet-8.

    Args:
        input_shape: (height, width, channels); 32x32x3 for CIFAR-10.
        num_classes: number of output classes.
        l2: L2 weight decay on the conv kernels (MLPerf Tiny uses 1e-4).
        classifier_activation: "softmax", or None for logits.
    """
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(16, 3, padding="same", kernel_regularizer=keras.regularizers.l2(l2),
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = _stack(x, 16, 1, "stack1", l2)
    x = _stack(x, 32, 2, "stack2", l2)
    x = _stack(x, 64, 2, "stack3", l2)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation=classifier_activation, name="classifier")(x)
    return keras.Model(inputs, outputs, name="resnet8")
