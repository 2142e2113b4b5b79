"""Keras 3 op nodes (`x + 3.0`, `keras.ops.mean(...)`) as tf_keras layers, for `keras3_import`.

A Keras 3 functional model records a call of `keras.ops` (or an operator on a tensor)
as an op node: a class name (`Add`, `Mean`...), its options and its arguments. Each
builder here takes (node name, positional args, kwargs, options) with tf_keras tensors
in place and returns the tf_keras output: a Keras layer where one computes the same
(TFMOT's QAT can wrap those, not TF-op layers), else a TF-op layer.

Example:
    OPS["Add"]("add_1", [x, 3.0], {}, {})     # Rescaling(1.0, 3.0, name="add_1")(x)
"""

from tfcompress import activations
from tfcompress.keras import keras, tf


class Unsupported(Exception):
    """An op's arguments have no tf_keras equivalent; the message says which."""


def _tf_op(function):
    """An op builder calling the TF function `function` (a tf_keras TF-op layer results)."""
    def build(name, args, kwargs, config):
        if kwargs or config:
            raise Unsupported(f"arguments {sorted({**kwargs, **config})} are not supported")
        return function(*args)
    return build


def _activation_op(activation):
    def build(name, args, kwargs, config):
        if len(args) != 1 or kwargs or config:
            raise Unsupported("takes one tensor and no options here")
        return keras.layers.Activation(activation, name=name)(args[0])
    return build


def _reduce(function):
    def build(name, args, kwargs, config):
        if config.pop("initial", None) is not None:
            raise Unsupported("`initial` is not supported")
        return function(args[0], axis=config.get("axis"), keepdims=config.get("keepdims", False))
    return build


def _mean(name, args, kwargs, config):
    """A mean over the spatial axes (a squeeze-and-excite pool) as the pooling layer."""
    x, axis = args[0], config.get("axis")
    axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
    pools = {(4, (1, 2)): keras.layers.GlobalAveragePooling2D,
             (3, (1,)): keras.layers.GlobalAveragePooling1D}
    pool = pools.get((len(x.shape), axis))
    if pool is not None and not kwargs:
        return pool(keepdims=config.get("keepdims", False), name=name)(x)
    return _reduce(tf.math.reduce_mean)(name, args, kwargs, config)


def _reshape(name, args, kwargs, config):
    shape = list(config.get("newshape") or [])
    if shape and shape[0] in (-1, None) and -1 not in shape[1:] and not kwargs:
        return keras.layers.Reshape(shape[1:], name=name)(args[0])
    return tf.reshape(args[0], shape)


def _transpose(name, args, kwargs, config):
    axes = config.get("axes")
    if axes and axes[0] == 0 and not kwargs:
        return keras.layers.Permute(tuple(axes[1:]), name=name)(args[0])
    return tf.transpose(args[0], perm=axes)


def _softmax(name, args, kwargs, config):
    return keras.layers.Softmax(axis=config.get("axis", -1), name=name)(args[0])


def _gelu(name, args, kwargs, config):
    return tf.nn.gelu(args[0], approximate=config.get("approximate", True))


def _with(function, **renames):
    """A builder passing the op's config to `function` as keyword arguments (renamed)."""
    def build(name, args, kwargs, config):
        options = {renames.get(k, k): v for k, v in config.items()}
        return function(*args, **options, **kwargs)
    return build


def _concat(name, args, kwargs, config):
    tensors, axis = list(args[0]), config.get("axis", 0)
    if axis != 0 and len(tensors) > 1:  # axis 0 is the batch: not a layer's job
        return keras.layers.Concatenate(axis=axis, name=name)(tensors)
    return tf.concat(tensors, axis=axis)


def _get_item(name, args, kwargs, config):
    return args[0][tuple(args[1]) if isinstance(args[1], list) else args[1]]


def _is_tensor(value):
    return keras.backend.is_keras_tensor(value) if hasattr(value, "shape") else False


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _elementwise(kind, function, merge=None):
    """`x + 3.0`, `x * (1 / 6)`, `x - y`...: Keras layers where one exists, so TFMOT's
    QAT can wrap them (it cannot wrap a TF-op layer): a tensor and a number become a
    `Rescaling` (x * scale + offset), two tensors a merge layer (`Add`, `Multiply`...;
    they broadcast as Keras 3's ops do); anything else a TF-op layer."""
    def build(name, args, kwargs, config):
        if kwargs or config or len(args) != 2:
            raise Unsupported(f"arguments {sorted({**kwargs, **config})} are not supported")
        a, b = args
        if _is_tensor(a) and _is_tensor(b) and merge is not None:
            return merge(name=name)([a, b])
        x, number = (a, b) if _is_tensor(a) and _is_number(b) else (b, a)
        if _is_tensor(x) and _is_number(number):
            affine = {("Add", 0): (1.0, number), ("Add", 1): (1.0, number),
                      ("Subtract", 0): (1.0, -number), ("Subtract", 1): (-1.0, number),
                      ("Multiply", 0): (number, 0.0), ("Multiply", 1): (number, 0.0)}
            if kind in ("TrueDivide", "Divide") and x is a and number != 0:
                affine[(kind, 0)] = (1.0 / number, 0.0)
            scale_offset = affine.get((kind, 0 if x is a else 1))
            if scale_offset is not None:
                return keras.layers.Rescaling(*scale_offset, name=name)(x)
        return function(a, b)
    return build


def _negative(name, args, kwargs, config):
    return keras.layers.Rescaling(-1.0, name=name)(args[0])


OPS = {
    "Add": _elementwise("Add", tf.math.add, keras.layers.Add),
    "Subtract": _elementwise("Subtract", tf.math.subtract, keras.layers.Subtract),
    "Multiply": _elementwise("Multiply", tf.math.multiply, keras.layers.Multiply),
    "TrueDivide": _elementwise("TrueDivide", tf.math.truediv),
    "Divide": _elementwise("Divide", tf.math.truediv),
    "Maximum": _elementwise("Maximum", tf.math.maximum, keras.layers.Maximum),
    "Minimum": _elementwise("Minimum", tf.math.minimum, keras.layers.Minimum),
    "Power": _tf_op(tf.math.pow), "Negative": _negative, "Absolute": _tf_op(tf.math.abs),
    "Abs": _tf_op(tf.math.abs), "Sqrt": _tf_op(tf.math.sqrt), "Square": _tf_op(tf.math.square),
    "Exp": _tf_op(tf.math.exp), "Log": _tf_op(tf.math.log), "Erf": _tf_op(tf.math.erf),
    "Matmul": _tf_op(tf.linalg.matmul), "Tanh": _activation_op("tanh"),
    "Relu": _activation_op("relu"), "Relu6": _activation_op("relu6"),
    "Sigmoid": _activation_op("sigmoid"), "Silu": _activation_op("swish"),
    "HardSigmoid": _activation_op(activations.hard_sigmoid),
    "HardSilu": _activation_op(activations.hard_swish), "Softmax": _softmax, "Gelu": _gelu,
    "Mean": _mean, "Sum": _reduce(tf.math.reduce_sum),
    "Max": _reduce(tf.math.reduce_max), "Min": _reduce(tf.math.reduce_min),
    "Reshape": _reshape, "Transpose": _transpose,
    "ExpandDims": _with(tf.expand_dims), "Squeeze": _with(tf.squeeze),
    "Clip": _with(tf.clip_by_value, x_min="clip_value_min", x_max="clip_value_max"),
    "Cast": _with(tf.cast), "Concatenate": _concat, "GetItem": _get_item,
}
