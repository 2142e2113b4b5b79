"""The `Distiller`: a tf_keras `Model` that trains a student on a teacher with plain `fit`.

The loss and the logits of softmax models are described in
`tfcompress.distillation`'s docstring; the losses themselves are in
`tfcompress.distillation.losses`. This module checks the teacher/student
pair, plans which tensors each loss compares (model outputs, or intermediate
layers through one feature-extractor model per side, with learned
projections where channel widths differ) and runs it.

Example:
    from tfcompress.distillation import Distiller, LogitsDistillation
    distiller = Distiller(teacher, student, LogitsDistillation(temperature=4.0))
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy())
    distiller.fit(x, y, epochs=3)
"""

from tfcompress import heads
from tfcompress._compat import is_compiled
from tfcompress.checks import check_finite_weights
from tfcompress.distillation.losses import (DistillationError, LogitsDistillation, _is_number,
                                            get)
from tfcompress.keras import ensure_tf_keras_model, keras, tf

__all__ = ["Distiller"]

# Where `Distiller.call` leaves the student's intermediate features for
# `compute_loss`: on the prediction tensor itself (graph and eager tensors
# take attributes; Keras does the same with `_keras_mask`/`_keras_logits`).
# Each replica of a MirroredStrategy has its own tensor, so this is
# thread-safe, and nothing outlives the training step.
_FEATURES_ATTR = "_tfcompress_student_features"
# log(p) floor for probabilities with no softmax op in reach (see the package docstring).
_LOG_FLOOR = 1e-30


def _check_weight(value, name):
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise DistillationError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


# ----------------------------------------------------------------- model checks


def _probe(model, specs, role):
    """Traces `model` once: (output shape without batch, output kind).

    The kind is read from the graph (tfcompress.heads): "softmax" (also rows
    that are probability vectors without a softmax op in reach), "sigmoid",
    or "other" (logits).
    """
    shape, op_type, outputs = heads.trace_output(model, specs)
    if outputs > 1:
        raise DistillationError(
            f"the {role} {model.name!r} has several outputs; the Distiller needs models with "
            "one output (distill a multi-output model through FeatureDistillation on a "
            "single-output sub-model)")
    if op_type in ("Softmax", "Sigmoid"):
        return shape, op_type.lower()
    return shape, "softmax" if heads.outputs_probabilities(model, specs) else "other"


def _layer_weights(model):
    return {id(v): v for v in model.weights}


def _shared_layers(teacher, student):
    """Names of student layers whose weights the teacher also holds."""
    shared = set(_layer_weights(teacher)) & set(_layer_weights(student))
    if not shared:
        return []
    names = []
    for layer in student.submodules:
        if isinstance(layer, keras.layers.Layer) and any(id(w) in shared
                                                         for w in layer.weights):
            names.append(layer.name)
    return sorted(set(names)) or ["(unnamed)"]


def _find_layer(model, name, role):
    """The top-level layer called `name`, or the wrapper (pruning, QAT) of a layer of that name."""
    for layer in model.layers:
        if layer.name == name:
            return layer
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Layer) and inner.name == name:
            return layer
    valid = [layer.name for layer in model.layers
             if not isinstance(layer, keras.layers.InputLayer)]
    raise DistillationError(
        f"the {role} {model.name!r} has no layer {name!r}; its layers are: {', '.join(valid)}")


def _pre_softmax(output, kind):
    """The logits behind a model output (see the package docstring).

    A one-unit head (sigmoid or binary logit z) is the two-class softmax over
    logits [0, z]: sigmoid(z) = softmax([0, z])[1].
    """
    if kind == "logits":
        return output
    if kind in ("sigmoid", "binary_logits"):
        if kind == "binary_logits":
            z = output
        elif not isinstance(output, tf.__internal__.EagerTensor) and output.op.type == "Sigmoid":
            z = output.op.inputs[0]
        else:
            p = tf.clip_by_value(tf.cast(output, tf.float32), _LOG_FLOOR, 1 - 1e-7)
            z = tf.math.log(p) - tf.math.log1p(-p)
        return tf.concat([tf.zeros_like(z), z], axis=-1)
    if not isinstance(output, tf.__internal__.EagerTensor) and output.op.type == "Softmax":
        return output.op.inputs[0]
    logits = getattr(output, "_keras_logits", None)
    if logits is not None:
        return logits
    return tf.math.log(tf.maximum(tf.cast(output, tf.float32), _LOG_FLOOR))


# ---------------------------------------------------------------------- Distiller


class Distiller(keras.Model):
    """Trains `student` on labels and on a frozen `teacher`'s outputs, with plain `fit`.

    `call` runs the student, so `predict` and `evaluate` give the student's
    outputs; `compute_loss` runs the teacher (`training=False`, never
    updated: it is set non-trainable) and combines the losses as in the
    module docstring. Keras 3's `keras.distillation.Distiller` has the same
    arguments and meaning.

    The student may be pruned (`tfcompress.pruning.prune`; pass
    `pruning.pruning_callbacks()` to `fit`) or quantization-aware (TFMOT
    QAT): distill while compressing. Afterwards `distiller.student` is an
    ordinary model: strip it and save it with `tfcompress.save_model`. The
    Distiller itself is not saved (`save` raises and says so); checkpoints
    (`BackupAndRestore`, `save_weights`) work and resume.

    Example:
        distiller = Distiller(teacher, student, LogitsDistillation(temperature=4.0))
        distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(),
                          metrics=["accuracy"])
        distiller.fit(x, y, epochs=3)
        tfcompress.save_model(distiller.student, "student.keras")

    Args:
        teacher: a trained tf_keras model; set non-trainable here.
        student: the tf_keras model to train; same input and output shapes.
        distillation_losses: a distillation loss (object, name or dict, see
            `get`) or a list of them. Default `LogitsDistillation()`.
        distillation_loss_weights: one weight in [0, 1] per distillation
            loss; default 1.0 each. They split the (1 - student_loss_weight)
            share among the distillation losses.
        student_loss_weight: weight in [0, 1] of the compiled (hard-label)
            loss. 1 trains on labels only (the teacher is not run); 0 on the
            teacher only, and then `compile(loss=None)` and `fit(x)` without
            labels work.

    Raises:
        DistillationError: the teacher is the student or shares its layers;
            input or output shapes differ; a weight outside [0, 1]; a
            feature layer that does not exist (the message lists the valid
            names); multi-label sigmoid outputs with LogitsDistillation; a teacher
            still wrapped for pruning.
        TypeError: a model that is not a tf_keras model.
    """

    def __init__(self, teacher, student, distillation_losses=None, distillation_loss_weights=None,
                 student_loss_weight=0.5, name="distiller", **kwargs):
        teacher = ensure_tf_keras_model(teacher)
        student = ensure_tf_keras_model(student)
        losses, weights = _check_losses(distillation_losses, distillation_loss_weights)
        student_loss_weight = _check_weight(student_loss_weight, "student_loss_weight")
        plan = _check_models(teacher, student, losses)
        # A NaN weight makes every loss NaN from the first batch on.
        check_finite_weights(teacher, "the teacher")
        check_finite_weights(student, "the student")
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        # The teacher's weights must stay bit-identical: not trainable (no
        # gradients, no optimizer slots), and run with training=False (no
        # BatchNorm statistics updates, no dropout).
        self.teacher.trainable = False
        self._setup(losses, weights, student_loss_weight, plan)
        # Metric and projection variables are made here, inside whatever
        # distribution strategy scope the Distiller is made in. The
        # projections are tracked (trainable, checkpointed) but are not part
        # of the student.
        names = ["loss", "student_loss", "distillation_loss", "total_loss"]
        if len(losses) > 1:
            for loss in losses:
                name = f"{loss.short_name}_loss"
                while name in names:
                    name = f"{name}_{len(names)}"
                names.append(name)
        self._trackers = [keras.metrics.Mean(name=name) for name in names]
        self.projections = []
        for index, (student_shape, width) in sorted(plan["projections"].items()):
            layer = keras.layers.Dense(
                width, name=f"projection_{index}_{losses[index].student_layer_name or 'output'}")
            with tf.name_scope(layer.name):  # variables named after the layer, as in a call
                layer.build((None,) + tuple(student_shape))
            self.projections.append(layer)
            self._projection_of[index] = layer
        # Every variable exists now (teacher, student, projections), so the
        # Distiller is built. Saying so matters to BackupAndRestore: for an
        # unbuilt model it skips building the optimizer before restoring (a
        # warning only), and the backup's optimizer slots are not restored.
        self.built = True

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _setup(self, losses, weights, student_loss_weight, plan):
        # Untracked: plain Python objects, and extractor models whose layers
        # (and so variables) belong to the teacher and student already.
        self.distillation_losses = losses
        self.distillation_loss_weights = weights
        self.student_loss_weight = student_loss_weight
        self._teacher_kind = plan["teacher_kind"]
        self._student_kind = plan["student_kind"]
        self._teacher_extractor = _extractor(self.teacher, plan["teacher_layers"])
        self._student_extractor = _extractor(self.student, plan["student_layers"])
        self._loss_inputs = plan["loss_inputs"]
        self._projection_of = {}

    # ------------------------------------------------------------------ Keras API

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """The ordinary Keras compile; `loss` is the student's hard-label loss.

        `loss` may be None only with `student_loss_weight=0` (distillation
        without labels).
        """
        if loss is None and self.student_loss_weight > 0:
            raise DistillationError(
                f"compile needs loss= (the student's hard-label loss, e.g. "
                f"keras.losses.SparseCategoricalCrossentropy()) because student_loss_weight is "
                f"{self.student_loss_weight:g}; to distill without labels build the Distiller "
                "with student_loss_weight=0")
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        """The student's outputs (its features for `compute_loss` ride along)."""
        if self._student_extractor is None:
            return self.student(inputs, training=training)
        outputs = self._student_extractor(inputs, training=training)
        prediction = outputs[0]
        setattr(prediction, _FEATURES_ATTR, outputs)
        return prediction

    @property
    def metrics(self):
        # Our loss trackers instead of the compiled loss's "loss" metric,
        # which would report the hard-label loss alone as "loss".
        # Keras's list is [compiled loss's, compiled metrics', every layer's metrics].
        hidden = []
        if is_compiled(self) and self.compiled_loss is not None:
            hidden = self.compiled_loss.metrics
        return list(getattr(self, "_trackers", [])) + [
            metric for metric in super().metrics if not any(metric is h for h in hidden)]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        """The weighted total of the student and distillation losses (module docstring)."""
        if y_pred is None:
            y_pred = self(x, training=False)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch = tf.shape(y_pred)[0]
        zero = tf.constant(0.0)
        # The compiled loss is already divided among replicas (tf_keras
        # compile_utils.LossesContainer); the trackers record per-replica
        # means weighted by batch size, as Keras's own loss metric does.
        student_loss = zero
        if self.compiled_loss is not None and y is not None:
            scaled = self.compiled_loss(y, y_pred, sample_weight)
            if scaled is not None:
                student_loss = tf.cast(scaled, tf.float32) * replicas
        distillation_loss, each = zero, []
        if self.student_loss_weight < 1.0:
            each = self._distillation_losses(x, y_pred, sample_weight)
            distillation_loss = tf.add_n([w * value for w, value in
                                          zip(self.distillation_loss_weights, each)])
        regularization = [tf.cast(loss, tf.float32) for loss in self.student.losses]
        for layer in self.projections:
            regularization += [tf.cast(loss, tf.float32) for loss in layer.losses]
        regularization = tf.add_n(regularization) if regularization else zero
        total = (self.student_loss_weight * student_loss
                 + (1.0 - self.student_loss_weight) * distillation_loss + regularization)
        weight = tf.cast(batch, tf.float32)
        for tracker, value in zip(self._trackers, [total, student_loss, distillation_loss,
                                                   total, *each]):
            tracker.update_state(value, sample_weight=weight)
        # Divided by the replica count like the compiled loss: gradients are
        # summed across replicas, so the step is the global-batch mean.
        return total / replicas

    def _distillation_losses(self, x, y_pred, sample_weight):
        """Each distillation loss's per-replica mean, unweighted."""
        teacher_model = self._teacher_extractor or self.teacher
        teacher_outputs = teacher_model(x, training=False)
        if self._teacher_extractor is None:
            teacher_outputs = [teacher_outputs]
        student_outputs = getattr(y_pred, _FEATURES_ATTR, None)
        if student_outputs is None:
            if self._student_extractor is None:
                student_outputs = [y_pred]
            else:  # y_pred did not come from self.call: run the student again
                student_outputs = self._student_extractor(x, training=False)
        values = []
        for index, (loss, (t, s)) in enumerate(zip(self.distillation_losses,
                                                   self._loss_inputs)):
            teacher, student = teacher_outputs[t], student_outputs[s]
            if loss.uses_logits:
                # Before stop_gradient: it would hide the Softmax op.
                teacher = _pre_softmax(teacher, self._teacher_kind)
                student = _pre_softmax(student, self._student_kind)
            teacher = tf.stop_gradient(teacher)
            if index in self._projection_of:
                student = self._projection_of[index](student)
            values.append(loss(teacher, student, sample_weight))
        return values

    def save(self, filepath, *args, **kwargs):
        """Refused: save the student (the Distiller is a training harness)."""
        raise DistillationError(
            f"the Distiller is not saved as a model; save the student instead: "
            f"tfcompress.save_model(distiller.student, {str(filepath)!r}) (strip pruning or "
            "quantization wrappers first if you want a plain model). To checkpoint the "
            "training itself use keras.callbacks.BackupAndRestore or save_weights")

    def get_config(self):
        raise NotImplementedError(
            "the Distiller has no config to save; save distiller.student with "
            "tfcompress.save_model")


def _check_losses(distillation_losses, distillation_loss_weights):
    if distillation_losses is None:
        distillation_losses = [LogitsDistillation()]
    elif isinstance(distillation_losses, (list, tuple)):
        distillation_losses = list(distillation_losses)
    else:
        distillation_losses = [distillation_losses]
    losses = [get(loss) for loss in distillation_losses]
    if not losses or any(loss is None for loss in losses):
        raise DistillationError("distillation_losses must hold at least one loss, and no None")
    if distillation_loss_weights is None:
        weights = [1.0] * len(losses)
    else:
        weights = (list(distillation_loss_weights)
                   if isinstance(distillation_loss_weights, (list, tuple))
                   else [distillation_loss_weights])
        if len(weights) != len(losses):
            raise DistillationError(
                f"{len(weights)} distillation_loss_weights for {len(losses)} "
                "distillation_losses; give one weight per loss")
        weights = [_check_weight(w, f"distillation_loss_weights[{i}]")
                   for i, w in enumerate(weights)]
    return losses, weights


def _check_models(teacher, student, losses):
    """Validates the pair; returns what the Distiller needs to wire the losses."""
    if teacher is student:
        raise DistillationError(
            f"teacher and student are the same model object ({student.name!r}): pass the "
            "trained, larger model as teacher and a separate, new model as student")
    shared = _shared_layers(teacher, student)
    if shared:
        raise DistillationError(
            f"the teacher {teacher.name!r} and the student {student.name!r} share the weights "
            f"of layer(s) {', '.join(shared[:5])}: training the student would change the "
            "teacher. Build the student from new layers (keras.models.clone_model gives a copy)")
    from tfcompress.pruning import is_pruned_model  # TFMOT is a dependency anyway
    if is_pruned_model(teacher):
        raise DistillationError(
            f"the teacher {teacher.name!r} is still wrapped for pruning, and the pruning "
            "callbacks would re-mask its weights; pass pruning.strip_pruning(teacher)")
    if not student.trainable_weights:
        raise DistillationError(f"the student {student.name!r} has no trainable weights; "
                                "set student.trainable = True")
    teacher_specs, student_specs = heads.input_specs(teacher), heads.input_specs(student)
    if teacher_specs is None and student_specs is None:
        raise DistillationError("neither model knows its input shape; build them with "
                                "keras.Input (or call them once on data) first")
    if teacher_specs is not None and student_specs is not None:
        shapes = ([tuple(s.shape[1:]) for s in teacher_specs],
                  [tuple(s.shape[1:]) for s in student_specs])
        if shapes[0] != shapes[1]:
            raise DistillationError(
                f"input shapes differ: teacher {teacher.name!r} takes {shapes[0]}, student "
                f"{student.name!r} takes {shapes[1]}; both must read the same inputs")
    teacher_shape, teacher_kind = _probe(teacher, teacher_specs or student_specs, "teacher")
    student_shape, student_kind = _probe(student, student_specs or teacher_specs, "student")
    # A one-unit binary head and a two-class softmax predict the same two classes: the
    # logits losses read the one unit as the logits [0, z].
    binary_pair = {teacher_shape, student_shape} == {(1,), (2,)} and all(
        loss.uses_logits and not (loss.teacher_layer_name or loss.student_layer_name)
        for loss in losses)
    if teacher_shape != student_shape and not binary_pair:
        raise DistillationError(
            f"output shapes differ: teacher {teacher.name!r} gives {teacher_shape}, student "
            f"{student.name!r} gives {student_shape}; they must predict the same classes")
    if any(loss.uses_logits for loss in losses):
        for role, model, kind, shape in (("teacher", teacher, teacher_kind, teacher_shape),
                                         ("student", student, student_kind, student_shape)):
            if kind == "sigmoid" and shape != (1,):
                raise DistillationError(
                    f"the {role} {model.name!r} ends in {shape[-1]} sigmoid units "
                    "(multi-label); LogitsDistillation compares softmax distributions, so it "
                    "needs a softmax, logits or one-sigmoid-unit output (use "
                    "FeatureDistillation for other outputs)")

    def kind_of(kind, shape):  # how _pre_softmax finds the logits
        if shape == (1,):
            return "sigmoid" if kind == "sigmoid" else "binary_logits"
        return kind if kind in ("softmax", "sigmoid") else "logits"

    plan = {"teacher_kind": kind_of(teacher_kind, teacher_shape),
            "student_kind": kind_of(student_kind, student_shape),
            "teacher_layers": [], "student_layers": [], "loss_inputs": [], "projections": {}}
    for index, loss in enumerate(losses):
        t = _feature_index(teacher, loss.teacher_layer_name, "teacher", plan["teacher_layers"])
        s = _feature_index(student, loss.student_layer_name, "student", plan["student_layers"])
        plan["loss_inputs"].append((t, s))
        if t or s:
            t_shape = _feature_shape(teacher, plan["teacher_layers"], t, teacher_shape)
            s_shape = _feature_shape(student, plan["student_layers"], s, student_shape)
            if len(t_shape) != len(s_shape) or t_shape[:-1] != s_shape[:-1]:
                raise DistillationError(
                    f"{loss!r}: feature shapes differ in more than the channel axis: teacher "
                    f"{t_shape}, student {s_shape}; pick layers with the same spatial size")
            if t_shape[-1] != s_shape[-1]:
                plan["projections"][index] = (s_shape, t_shape[-1])
    return plan


def _feature_index(model, name, role, layers):
    """Position of `name`'s output in the extractor's outputs (0 is the model output)."""
    if name is None:
        return 0
    if not (getattr(model, "inputs", None) and getattr(model, "outputs", None)):
        raise DistillationError(
            f"FeatureDistillation on layer {name!r} needs a functional or Sequential {role}; "
            f"{model.name!r} is subclassed. Distill its output instead (layer name None)")
    layer = _find_layer(model, name, role)
    if layer not in layers:
        layers.append(layer)
    return 1 + layers.index(layer)


def _feature_shape(model, layers, index, output_shape):
    if index == 0:
        return tuple(output_shape)
    layer = layers[index - 1]
    try:
        return tuple(layer.output.shape[1:])
    except AttributeError as e:  # a layer called more than once has no single output
        raise DistillationError(f"layer {layer.name!r} of {model.name!r} is used more than "
                                f"once, so its output is ambiguous: {e}") from None


def _extractor(model, layers):
    """One model giving [output, *layer outputs] from a single pass; None without layers."""
    if not layers:
        return None
    return keras.Model(model.inputs, [model.outputs[0]] + [layer.output for layer in layers],
                       name=f"{model.name}_features")
