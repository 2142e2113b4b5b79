"""A classifier's head: what its output means, detected once and used everywhere.

Users bring models that end in a softmax, in raw logits (trained with
`from_logits=True`), or in one sigmoid unit (a binary classifier: wake word,
person detection). The head decides the training loss, the accuracy rule (argmax,
or a threshold for one unit), how the Distiller reads logits and whether a data
set fits the model. `detect` reads it from the model's graph, never from how the
file was compiled: a model's compile is ignored for every number tfcompress reports.

    kind            output          loss                                  class 1 when
    softmax         (N, C) probs    SparseCategoricalCrossentropy()       argmax
    logits          (N, C) scores   SparseCategoricalCrossentropy(True)   argmax
    sigmoid         (N, 1) p        BinaryCrossentropy()                  p > 0.5
    binary_logits   (N, 1) z        BinaryCrossentropy(from_logits=True)  z > 0

Example:
    head = heads.detect(model)             # Head(kind="logits", units=10)
    model.compile("adam", loss=head.loss(), metrics=[head.metric()])
    head.accuracy(model.predict(x_test), y_test)
    heads.check_above_chance(0.09, 10, "the input model my.keras")   # raises ChanceLevelError
"""

import dataclasses

import numpy as np

from tfcompress.errors import TfcompressError

KINDS = ("softmax", "logits", "sigmoid", "binary_logits")
_EPSILON = 1e-7  # Keras's backend.epsilon(): where its cross-entropies clip probabilities


def _logit(p):
    p = np.clip(p, _EPSILON, 1 - _EPSILON)
    return np.log(p) - np.log1p(-p)


class HeadError(TfcompressError, ValueError):
    """The model's output is not one the pipeline can measure (several outputs, multi-label)."""


class ChanceLevelError(TfcompressError, ValueError):
    """A float model scores at chance on its own data: the data or the model is wrong."""


@dataclasses.dataclass(frozen=True)
class Head:
    """A single-output classifier head: `kind` (one of KINDS) and its output `units`."""
    kind: str
    units: int

    @property
    def binary(self):
        return self.units == 1

    @property
    def num_classes(self):
        """Classes in the data this head fits: one sigmoid unit scores two classes."""
        return 2 if self.binary else self.units

    @property
    def from_logits(self):
        return self.kind in ("logits", "binary_logits")

    @property
    def threshold(self):
        """The score above which a one-unit head predicts class 1."""
        return 0.0 if self.kind == "binary_logits" else 0.5

    def loss(self):
        """The training loss for integer class-id labels."""
        from tfcompress.keras import keras
        if self.binary:
            return keras.losses.BinaryCrossentropy(from_logits=self.from_logits)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits)

    def metric(self):
        """Keras's top-1 accuracy for this head, named "accuracy" (progress output only)."""
        from tfcompress.keras import keras
        if self.binary:
            return keras.metrics.BinaryAccuracy(name="accuracy", threshold=self.threshold)
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def classes(self, scores):
        """Predicted class ids of (N, units) scores; ties go to the lower id, as in Keras."""
        scores = np.asarray(scores, np.float64).reshape(len(scores), -1)
        if self.binary:
            return (scores[:, 0] > self.threshold).astype(np.int64)
        return np.argmax(scores, axis=1)

    def mean_loss(self, scores, labels):
        """The mean of `loss()` over (N, units) scores, in numpy: usable where a Keras loss
        is not (inside a tf.distribute scope). Probabilities are clipped as Keras does."""
        scores = np.asarray(scores, np.float64).reshape(len(scores), -1)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if self.binary:
            z = scores[:, 0] if self.from_logits else _logit(scores[:, 0])
            # log(1 + e^-|z|) + max(z, 0) - z*y: the stable form of binary cross-entropy.
            return float(np.mean(np.logaddexp(0, -np.abs(z)) + np.maximum(z, 0) - z * labels))
        if self.from_logits:
            shifted = scores - scores.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        else:
            log_p = np.log(np.clip(scores / scores.sum(axis=1, keepdims=True), _EPSILON, 1.0))
        return float(-np.mean(log_p[np.arange(len(labels)), labels]))

    def accuracy(self, scores, labels):
        """Top-1 accuracy of `scores` against integer class ids `labels`."""
        labels = np.asarray(labels).reshape(-1)
        return float(np.mean(self.classes(scores) == labels))

    def describe(self):
        return {"softmax": f"softmax over {self.units} classes",
                "logits": f"logits over {self.units} classes (no softmax)",
                "sigmoid": "one sigmoid unit (binary)",
                "binary_logits": "one logit unit (binary, no sigmoid)"}[self.kind]

    def to_dict(self):
        return {"kind": self.kind, "units": self.units}


def trace_output(model, specs):
    """Traces `model` once: (first output's shape without batch, type of the op that makes
    it, number of outputs)."""
    from tfcompress.keras import tf
    found = []

    def run(*inputs):
        outputs = tf.nest.flatten(model(inputs[0] if len(inputs) == 1 else list(inputs),
                                        training=False))
        found.append((getattr(getattr(outputs[0], "op", None), "type", None), len(outputs)))
        return outputs[0]

    concrete = tf.function(run, autograph=False).get_concrete_function(*specs)
    return (tuple(concrete.structured_outputs.shape[1:]),) + found[0]


def outputs_probabilities(model, specs):
    """True when the outputs on a small random batch are probability rows (sum 1, >= 0):
    a softmax the graph hides (a reshape after it, say)."""
    rng = np.random.default_rng(0)
    batch = [rng.random((2,) + tuple(d or 1 for d in s.shape[1:])).astype(s.dtype.as_numpy_dtype)
             if s.dtype.is_floating else
             np.zeros((2,) + tuple(d or 1 for d in s.shape[1:]), s.dtype.as_numpy_dtype)
             for s in specs]
    values = np.asarray(model(batch[0] if len(batch) == 1 else batch, training=False))
    return bool(values.ndim >= 2 and values.shape[-1] > 1 and np.all(values >= 0)
                and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3))


def input_specs(model):
    """TensorSpecs of the model's inputs (batch dimension None), or None if unknown."""
    from tfcompress.keras import tf
    if getattr(model, "inputs", None):
        return [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype) for t in model.inputs]
    spec = model.save_spec(dynamic_batch=True) if model.built else None
    if spec and spec[0]:
        return tf.nest.flatten(spec[0][0])
    return None


def detect(model, specs=None, name=None):
    """The head of a single-output classifier, read from its graph.

    The op that makes the output decides: Softmax -> "softmax", Sigmoid ->
    "sigmoid" (one unit; several sigmoid units are multi-label, refused). Any
    other op is "logits" (one unit: "binary_logits"), unless the outputs on a
    small random batch are probability rows (a reshape after a softmax), which
    is "softmax".

    Args:
        model: a tf_keras model.
        specs: input TensorSpecs when the model does not know them.
        name: how errors name the model (default its name).

    Raises:
        HeadError: several outputs, outputs that are not (batch, classes),
            multi-label sigmoid outputs, a one-unit softmax.
    """
    what = name or f"model {model.name!r}"
    specs = specs or input_specs(model)
    if specs is None:
        raise HeadError(f"{what} does not know its input shape; build it with keras.Input "
                        "(or call it once on data) first")
    shape, op_type, outputs = trace_output(model, specs)
    if outputs > 1:
        raise HeadError(f"{what} has {outputs} outputs; the pipeline trains and measures "
                        "single-output classifiers. `tfcompress export MODEL` still converts "
                        "it to .tflite; to compress it, save a model with the one head to "
                        "measure (keras.Model(model.input, model.outputs[i]))")
    if len(shape) != 1 or not shape[0]:
        raise HeadError(f"{what} outputs shape {shape} per sample; the pipeline measures "
                        "classifiers whose output is (batch, classes)")
    units = int(shape[0])
    if op_type == "Softmax":
        kind = "softmax"
    elif op_type == "Sigmoid":
        kind = "sigmoid"
    else:
        kind = "binary_logits" if units == 1 else "logits"
        if units > 1 and outputs_probabilities(model, specs):
            kind = "softmax"
    if kind == "sigmoid" and units > 1:
        raise HeadError(f"{what} ends in {units} sigmoid units (multi-label); the pipeline "
                        "measures single-label classifiers: softmax, logits or one sigmoid unit")
    if kind == "softmax" and units == 1:
        raise HeadError(f"{what} ends in a softmax over one unit, which is always 1.0; a binary "
                        "classifier needs Dense(1, activation='sigmoid') or Dense(2) + softmax")
    return Head(kind, units)


def check_fits(head, num_classes, what, data_name="the data"):
    """Raises HeadError unless `head` scores `num_classes` classes."""
    if head.num_classes == num_classes:
        return
    if head.binary:
        raise HeadError(f"{what} is a binary classifier ({head.describe()}) but {data_name} has "
                        f"{num_classes} classes; a one-unit head needs labels 0 and 1")
    raise HeadError(f"{what} has {head.units} outputs ({head.describe()}) but {data_name} has "
                    f"{num_classes} classes; give the data set the model was trained on "
                    "(data.dataset, --data)")


def chance_floor(num_classes):
    """The accuracy below which a classifier counts as at chance: 1.5x uniform chance,
    and 60% for two classes (1.5 x 50% would ask 75% of a hard binary task)."""
    return 0.6 if num_classes == 2 else min(1.0, 1.5 / num_classes)


def check_above_chance(accuracy, num_classes, what, causes=""):
    """Raises ChanceLevelError when `accuracy` is below `chance_floor(num_classes)`.

    Args:
        accuracy: the float model's top-1 on its test split, as a fraction.
        num_classes: classes in the data.
        what: names the model and data in the message.
        causes: the likely causes to name, e.g. a data.scale hint.
    """
    floor = chance_floor(num_classes)
    if num_classes > 1 and accuracy < floor:
        raise ChanceLevelError(
            f"{what} scores {100 * accuracy:.2f}% top-1, at chance for {num_classes} classes "
            f"(chance {100 / num_classes:.1f}%, the run needs >= {100 * floor:.1f}%), so no "
            f"compressed variant could be judged; nothing was compressed. Likely causes: "
            + (causes or "the data scaling (data.scale), the label order, or a model trained on "
               "other data"))
