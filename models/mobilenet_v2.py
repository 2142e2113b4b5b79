"""MobileNetV2 (Sandler et al. 2018) from tf_keras.applications, untrained.

Inputs smaller than the 32x32 the architecture needs are resized inside the
model (a Resizing layer, RESIZE_BILINEAR in TFLite); the model stays flat (not
nested), which quantization-aware training needs.

Example:
    model = mobilenet_v2((28, 28, 1), 10, alpha=0.35, input_size=32)
"""

from tfcompress.keras import keras

_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
BATCH_NORM_MOMENTUM = 0.99


def mobilenet_v2(input_shape, num_classes, alpha=0.35, input_size=None,
                 classifier_activation="softmax"):
    """Builds MobileNetV2 with `weights=None`.

    Args:
        input_shape: (height, width, channels) of the data.
        num_classes: number of output classes.
        alpha: width multiplier, one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.
        input_size: side the images are resized to inside the model; by
            default the data's size, or 32 when that is smaller than 32.
        classifier_activation: "softmax", or None for logits.
    """
    if alpha not in _ALPHAS:
        raise ValueError(f"mobilenet_v2 alpha must be one of {_ALPHAS}, got {alpha}")
    height, width, channels = input_shape
    if input_size is None:
        size = (max(height, 32), max(width, 32))
    else:
        size = (int(input_size), int(input_size))
    if min(size) < 32:
        raise ValueError(f"mobilenet_v2 input_size must be >= 32, got {input_size}")
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    if size != (height, width):
        x = keras.layers.Resizing(*size, name="resize")(x)
    model = keras.applications.MobileNetV2(
        input_tensor=x, alpha=alpha, weights=None, classes=num_classes,
        classifier_activation=classifier_activation)
    # keras.applications builds its BatchNormalization layers with momentum 0.999, made for
    # ImageNet-length runs. After the few epochs a CPU run trains, the moving statistics are
    # still ~40% their initial values and the model in inference mode scores chance (measured
    # for issue 19: 83.6% training accuracy, 10.0% test, 2 Fashion-MNIST epochs). 0.99 is
    # Keras's default and what the zoo's other models use.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCH_NORM_MOMENTUM
    return model
