"""`distill`: distills the current model (the teacher) into a fresh `student`."""

import dataclasses
from typing import ClassVar

from tfcompress import distribute, heads
from tfcompress.stages.base import SoftTargets, register
from tfcompress.stages import context
from tfcompress.training import compile_for_training


@register
@dataclasses.dataclass
class DistillStage(SoftTargets):
    """Distills the current model (teacher) into `student` (Hinton et al. 2015).

    alpha is the weight of the student's hard-label loss; 1 - alpha goes to
    the soft-target loss at `temperature`.
    """
    KIND: ClassVar[str] = "distill"
    ORDER: ClassVar[int] = 20
    UNIQUE: ClassVar[bool] = True
    NEEDS_STUDENT: ClassVar[bool] = True
    REFUSED: ClassVar[dict] = {"parameter_server": distribute.parameter_server_refusal()}
    epochs: int = 5

    def run(self, teacher, ctx):
        from tfcompress import distillation
        student = distribute.in_scope(ctx.student_builder(), ctx.strategy)
        student_head = heads.detect(student, name=f"the student {student.name!r}")
        heads.check_fits(student_head, ctx.head.num_classes, f"the student {student.name!r}",
                         "the teacher's data")
        distiller = distillation.Distiller(
            teacher, student,
            distillation_losses=distillation.LogitsDistillation(temperature=self.temperature),
            student_loss_weight=self.alpha)
        compile_for_training(distiller, self.learning_rate, context.total_steps(ctx, self),
                             student_head)
        info = context.fit(distiller, ctx, self.epochs, self.batch_size)
        info["teacher_parameters"] = int(teacher.count_params())
        info["student_parameters"] = int(distiller.student.count_params())
        ctx.head = student_head  # the stage's output model is the student (run_stage records it)
        return distiller.student, info
