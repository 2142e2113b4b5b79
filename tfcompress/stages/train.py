"""`train`: trains the teacher (a zoo model from scratch, or fine-tunes `teacher.path`)."""

import dataclasses
from typing import ClassVar

from tfcompress import distribute
from tfcompress.stages.base import Training, register
from tfcompress.stages import context
from tfcompress.training import compile_for_training


@register
@dataclasses.dataclass
class TrainStage(Training):
    """Trains the teacher (a zoo model from scratch, or fine-tunes `teacher.path`)."""
    KIND: ClassVar[str] = "train"
    ORDER: ClassVar[int] = 10
    MIN_EPOCHS: ClassVar[int] = 0
    POSITION: ClassVar[str] = "first"
    POSITION_WHY: ClassVar[str] = "it trains the teacher"
    REFUSED: ClassVar[dict] = {"parameter_server": distribute.parameter_server_refusal()}
    epochs: int = 5

    def run(self, model, ctx):
        compile_for_training(model, self.learning_rate, context.total_steps(ctx, self), ctx.head)
        info = context.fit(model, ctx, self.epochs, self.batch_size) if self.epochs else {}
        return model, info
