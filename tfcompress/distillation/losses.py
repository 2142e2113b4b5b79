"""The distillation losses, their names and their Keras-form configs.

A loss compares a teacher tensor with a student tensor, one value a sample;
the `Distiller` (tfcompress.distillation.distiller) decides which tensors.
Names, dicts and objects are read by `get` through `tfcompress.registry`.

Example:
    from tfcompress.distillation import losses
    losses.get("logits")                                   # LogitsDistillation()
    losses.get({"name": "feature", "teacher_layer_name": "conv3",
                "student_layer_name": "conv3"})
    losses.serialize(losses.LogitsDistillation(4.0))       # {"class_name": ..., "config": ...}

Reference:
    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
    Network", https://arxiv.org/abs/1503.02531
    Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (feature
    distillation with a learned projection), https://arxiv.org/abs/1412.6550
"""

import numbers

from tfcompress.errors import TfcompressError
from tfcompress.keras import tf
from tfcompress.registry import Registry

__all__ = ["DistillationError", "DistillationLoss", "LogitsDistillation", "FeatureDistillation",
           "logits_distillation", "feature_distillation", "get", "serialize"]


class DistillationError(TfcompressError, ValueError):
    """Teacher, student or distillation settings that cannot work; the message says the fix."""


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class DistillationLoss:
    """A loss between a teacher tensor and a student tensor, one value a sample.

    Subclasses implement `call(teacher, student) -> [batch]` and
    `get_config()`. Calling the object reduces like a Keras loss with
    SUM_OVER_BATCH_SIZE: sum(sample_weight * loss) / batch size.

    Attributes:
        teacher_layer_name, student_layer_name: the layers whose outputs the
            loss compares; None for the models' outputs.
        uses_logits: True when the loss compares logits (the Distiller then
            passes the pre-softmax tensors of softmax models).
    """

    teacher_layer_name = None
    student_layer_name = None
    uses_logits = False

    def call(self, teacher, student):
        raise NotImplementedError

    def __call__(self, teacher, student, sample_weight=None):
        per_sample = tf.cast(self.call(teacher, student), tf.float32)
        if sample_weight is not None:
            per_sample = per_sample * tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        return tf.reduce_sum(per_sample) / tf.cast(tf.shape(per_sample)[0], tf.float32)

    @property
    def short_name(self):
        """Name of this loss's own metric, without the `_loss` suffix."""
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        try:
            return cls(**config)
        except TypeError as e:  # an argument this loss does not take
            raise DistillationError(f"bad {cls.__name__} config {config!r}: {e}") from None

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class LogitsDistillation(DistillationLoss):
    """Hinton et al.'s soft-target loss: KL(softmax(t/T) || softmax(s/T)) * T^2 per sample.

    The T^2 factor keeps the gradients' size independent of T (Hinton et
    al. 2015, section 2), so `student_loss_weight` means the same at any
    temperature.

    Example:
        loss = LogitsDistillation(temperature=4.0)
        loss(teacher_logits, student_logits)        # mean over the batch

    Args:
        temperature: > 0; higher spreads the teacher's probability over more
            classes. 3 (Keras 3's default) to 5 is usual.
    """

    uses_logits = True

    def __init__(self, temperature=3.0):
        # Inf passes `> 0` but scales the loss by T^2 = inf: NaN from the first batch.
        if not _is_number(temperature) or not 0 < temperature < float("inf"):
            raise DistillationError(f"temperature must be a finite number > 0, got "
                                    f"{temperature!r}")
        self.temperature = float(temperature)

    def call(self, teacher, student):
        t = tf.cast(teacher, tf.float32) / self.temperature
        s = tf.cast(student, tf.float32) / self.temperature
        # log_softmax on both sides: finite even where a probability underflows.
        log_t = tf.nn.log_softmax(t, axis=-1)
        kl = tf.reduce_sum(tf.exp(log_t) * (log_t - tf.nn.log_softmax(s, axis=-1)), axis=-1)
        kl = tf.reshape(kl, [tf.shape(kl)[0], -1])  # sequence outputs: mean over positions
        return tf.reduce_mean(kl, axis=-1) * self.temperature ** 2

    @property
    def short_name(self):
        return "logits"

    def get_config(self):
        return {"temperature": self.temperature}


_FEATURE_LOSSES = {"mse": "mse", "mean_squared_error": "mse",
                   "cosine": "cosine", "cosine_similarity": "cosine"}


class FeatureDistillation(DistillationLoss):
    """Matches an intermediate layer of the student to one of the teacher (FitNets hints).

    When the two layers' last (channel) axes differ, the Distiller learns a
    linear projection from the student's width to the teacher's (a 1x1
    convolution on feature maps), trained with the student and dropped
    afterwards: it is not part of `distiller.student`. All other axes must
    agree (pick layers with the same spatial size).

    Example:
        FeatureDistillation("conv3", "conv3")                 # MSE, projected if widths differ
        FeatureDistillation("relu2", "relu2", loss="cosine")

    Args:
        teacher_layer_name: a layer of the teacher, or None for its output.
        student_layer_name: a layer of the student, or None for its output.
            For a pruned or QAT student the wrapped layer's own name works
            ("conv3" finds "prune_low_magnitude_conv3").
        loss: "mse" (mean squared difference over all feature values) or
            "cosine" (1 - cosine similarity along the channel axis, averaged
            over positions; insensitive to the features' scale).
    """

    def __init__(self, teacher_layer_name=None, student_layer_name=None, loss="mse"):
        for name, value in (("teacher_layer_name", teacher_layer_name),
                            ("student_layer_name", student_layer_name)):
            if value is not None and not (isinstance(value, str) and value):
                raise DistillationError(f"{name} must be a layer name or None, got {value!r}")
        if loss not in _FEATURE_LOSSES:
            raise DistillationError(f"FeatureDistillation loss must be 'mse' or 'cosine', "
                                    f"got {loss!r}")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.loss = _FEATURE_LOSSES[loss]

    def call(self, teacher, student):
        t = tf.cast(teacher, tf.float32)
        s = tf.cast(student, tf.float32)
        if self.loss == "mse":
            per_value = tf.math.squared_difference(t, s)
        else:
            per_value = 1.0 - tf.reduce_sum(tf.math.l2_normalize(t, axis=-1)
                                            * tf.math.l2_normalize(s, axis=-1), axis=-1)
        return tf.reduce_mean(tf.reshape(per_value, [tf.shape(per_value)[0], -1]), axis=-1)

    @property
    def short_name(self):
        return f"feature_{self.student_layer_name or 'output'}"

    def get_config(self):
        return {"teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name, "loss": self.loss}


# snake_case aliases, as in larq and Keras.
logits_distillation = LogitsDistillation
feature_distillation = FeatureDistillation

# An explicit table (not a registry filled by import side effects).
_REGISTRY = Registry(
    "distillation loss",
    {"logits": LogitsDistillation, "logits_distillation": LogitsDistillation,
     "LogitsDistillation": LogitsDistillation,
     "feature": FeatureDistillation, "feature_distillation": FeatureDistillation,
     "FeatureDistillation": FeatureDistillation},
    base=DistillationLoss, error=DistillationError,
    choices="choose 'logits' or 'feature'",
    accepts="'logits', a config dict, a LogitsDistillation/FeatureDistillation object or None")


def serialize(loss):
    """`{"class_name": ..., "config": ...}`, the Keras form `get` reads back."""
    return _REGISTRY.serialize(loss)


def get(identifier):
    """Returns a distillation loss for a name, a config dict, a loss object or None.

    Example:
        get("logits")                                             # LogitsDistillation()
        get({"class_name": "LogitsDistillation", "config": {"temperature": 4.0}})
        get({"name": "feature", "teacher_layer_name": "conv3",
             "student_layer_name": "conv3"})                      # recipe form

    Raises:
        DistillationError: for anything else, an unknown name or a bad config.
    """
    if isinstance(identifier, str) and _REGISTRY.lookup(identifier) is FeatureDistillation:
        raise DistillationError("a 'feature' distillation loss needs its layers: pass "
                                "FeatureDistillation(teacher_layer_name, student_layer_name) "
                                "or a dict with those keys")
    return _REGISTRY.get(identifier)
