"""Knowledge distillation for tf_keras models: a `Distiller` that trains with plain `fit`.

TFMOT has no distillation, and Keras 3's `keras.distillation.Distiller` does
not run on tf_keras. This is the same API on tf_keras: a `keras.Model` whose
`call` runs the student and whose `compute_loss` adds the teacher's signal,
so `fit`, `evaluate`, `predict`, callbacks (BackupAndRestore, TensorBoard,
the pruning callbacks), `tf.data` inputs, sample weights and
`tf.distribute.MirroredStrategy` work as for any Keras model.

Example:
    from tfcompress import distillation, pruning
    distiller = distillation.Distiller(
        teacher, student,
        distillation_losses=distillation.LogitsDistillation(temperature=4.0),
        student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    distiller.fit(x, y, batch_size=128, epochs=3,
                  callbacks=[keras.callbacks.BackupAndRestore("run/backup"),
                             *pruning.pruning_callbacks()])
    tfcompress.save_model(distiller.student, "run/student.keras")   # save the student

The loss, as in Keras 3:

    loss = student_loss_weight * student_loss
           + (1 - student_loss_weight) * sum_i(distillation_loss_weights[i] * distillation_loss_i)
           + the student's regularization losses

`student_loss` is the loss given to `compile` on the student's outputs as
they are (probabilities with `SparseCategoricalCrossentropy()` for the zoo's
softmax models). Logged: `loss` (the total, what Keras callbacks monitor),
`total_loss` (the same value, under Keras 3's name), `student_loss`,
`distillation_loss` (the weighted sum), one `<name>_loss` per distillation
loss when there are several, and the compiled metrics of the student.

Logits of a softmax model. Hinton's soft targets need logits, and the zoo's
models end in softmax. The Distiller takes the tensor that goes into the
final softmax op, in the same graph, at no cost: the same route tf_keras's
own cross-entropy takes for numerical stability (`backend._get_logits`: the
Softmax op's input, or the `_keras_logits` Keras attaches in eager mode).
That tensor is exact; the alternative, log of the probabilities, loses the
gaps beyond float32's range (a clip at 1e-7 would flatten every logit gap
above 16, which temperature 4 brings back into play). Only when a model's
output is a probability vector without a softmax op in reach (a reshape
after the softmax, say) is `log(max(p, 1e-30))` used; it equals the logits
up to a per-row constant, which softmax ignores. A model with any other
output is taken to output logits. A binary classifier's one unit (a sigmoid,
or a logit z) is the two-class softmax over [0, z]; several sigmoid units
(multi-label) are refused.

Reference:
    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
    Network", https://arxiv.org/abs/1503.02531
    Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (feature
    distillation with a learned projection), https://arxiv.org/abs/1412.6550
"""

from tfcompress.distillation.distiller import Distiller
from tfcompress.distillation.losses import (DistillationError, DistillationLoss,
                                            FeatureDistillation, LogitsDistillation,
                                            feature_distillation, get, logits_distillation,
                                            serialize)

__all__ = ["DistillationError", "DistillationLoss", "LogitsDistillation", "FeatureDistillation",
           "logits_distillation", "feature_distillation", "get", "serialize", "Distiller"]
