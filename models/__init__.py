"""The reference model zoo: one builder per file, listed here by name.

Every builder takes `(input_shape, num_classes, **options)` and returns an
untrained tf_keras model that converts to TFLite.

Example:
    import models
    models.list_models()                       # ['ds_cnn', 'mobilenet_v2', ...]
    model = models.get_model("small_cnn", (28, 28, 1), 10, width=16)
"""

import inspect

from models.ds_cnn import ds_cnn
from models.mobilenet_v2 import mobilenet_v2
from models.resnet8 import resnet8
from models.small_cnn import small_cnn

# An explicit table (not filled by import side effects): adding a model is one line.
MODELS = {
    "ds_cnn": ds_cnn,
    "mobilenet_v2": mobilenet_v2,
    "resnet8": resnet8,
    "small_cnn": small_cnn,
}


def list_models():
    """Names of the zoo models, sorted."""
    return sorted(MODELS)


def options_of(name):
    """The options zoo model `name`'s builder takes (besides input_shape, num_classes)."""
    return [p for p in inspect.signature(MODELS[name]).parameters
            if p not in ("input_shape", "num_classes")]


def check_options(name, options):
    """Raises ValueError for an unknown model `name` or an option its builder does not take."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    valid = options_of(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"model {name!r} has no option {', '.join(unknown)}; "
                         f"its options are {', '.join(valid)}")


def get_model(name, input_shape, num_classes, **options):
    """Builds zoo model `name` for `input_shape` and `num_classes`.

    Raises:
        ValueError: unknown name, or an option the builder does not take.
    """
    check_options(name, options)
    return MODELS[name](tuple(input_shape), int(num_classes), **options)
