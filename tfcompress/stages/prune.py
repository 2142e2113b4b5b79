"""`prune`: magnitude pruning (tfcompress.pruning) to a target sparsity, with fine-tuning."""

import dataclasses
import re
from typing import ClassVar, Optional

from tfcompress import distribute
from tfcompress.errors import RecipeError
from tfcompress.stages.base import Distilling, number_in, one_of, register
from tfcompress.stages import context
from tfcompress.training import compile_for_training


@register
@dataclasses.dataclass
class PruneStage(Distilling):
    """Magnitude pruning to `sparsity` on a polynomial or constant schedule."""
    KIND: ClassVar[str] = "prune"
    ORDER: ClassVar[int] = 30
    REFUSED: ClassVar[dict] = {"parameter_server": distribute.parameter_server_refusal(
        distribute.PS_PRUNE)}
    sparsity: float = 0.8
    epochs: int = 3
    schedule: str = "polynomial"
    structure: Optional[str] = None     # "2:4", "4x1" block, ...
    skip_first_and_last: bool = False
    exclude: list = dataclasses.field(default_factory=list)  # layer names, regexes, class names

    def check(self, where):
        number_in(self.sparsity, 0, 1, where + ".sparsity", lo_open=True, hi_open=True)
        # The same forms tfcompress.pruning accepts, checked before any stage trains.
        if self.structure is not None and not re.fullmatch(r"\s*\d+\s*[:xX]\s*\d+\s*",
                                                           self.structure):
            raise RecipeError(f"{where}.structure: {self.structure!r} is not 'M:N' (e.g. '2:4') "
                              "or a block 'HxW' (e.g. '1x4'); null for unstructured")
        one_of(self.schedule, ("polynomial", "constant"), where + ".schedule")

    def run(self, model, ctx):
        """Prunes, fine-tunes (or distills) and returns the stripped, sparse model."""
        from tfcompress import pruning, schedules
        steps = context.steps_per_epoch(ctx, self.batch_size)
        structured_nm = bool(self.structure and ":" in self.structure)
        config = pruning.PruningConfig(
            target_sparsity=None if structured_nm else self.sparsity,
            schedule=schedules.get(self.schedule), structure=self.structure,
            skip_first_and_last=self.skip_first_and_last, exclude=tuple(self.exclude))
        pruned = pruning.prune(model, config, steps_per_epoch=steps, total_epochs=self.epochs)
        trainee = context.with_teacher(pruned, self, ctx)
        compile_for_training(trainee, self.learning_rate, self.epochs * steps, ctx.head)
        info = context.fit(trainee, ctx, self.epochs, self.batch_size,
                   callbacks=pruning.pruning_callbacks())
        stripped = pruning.strip_pruning(pruned)
        report = pruning.sparsity_report(stripped)
        info["sparsity"] = report["total"]["sparsity"] if "total" in report else None
        return stripped, info
