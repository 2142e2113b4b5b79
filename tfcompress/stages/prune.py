"""`prune`: magnitude pruning (tfcompress.pruning) to a target sparsity, with fine-tuning."""

import dataclasses
import re
from typing import ClassVar, Optional

from tfcompress import distribute
from tfcompress.errors import RecipeError
from tfcompress.stages.base import (Distilling, number_in, one_of, register,
                                    sensitivity_samples_ok)
from tfcompress.stages import context
from tfcompress.training import compile_for_training


@register
@dataclasses.dataclass
class PruneStage(Distilling):
    """Magnitude pruning to `sparsity` on a polynomial or constant schedule.

    allocation: "uniform" (every pruned layer at `sparsity`) or "sensitivity"
    (each layer its own sparsity, the layers together at `sparsity`, chosen
    from each layer's measured loss increase: tfcompress.pruning.sensitivity);
    per_layer: {layer name or regex: sparsity} overrides, kept by both.
    """
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
    allocation: str = "uniform"
    per_layer: dict = dataclasses.field(default_factory=dict)
    sensitivity_samples: int = 2000

    def check(self, where):
        number_in(self.sparsity, 0, 1, where + ".sparsity", lo_open=True, hi_open=True)
        # The same forms tfcompress.pruning accepts, checked before any stage trains.
        if self.structure is not None and not re.fullmatch(r"\s*\d+\s*[:xX]\s*\d+\s*",
                                                           self.structure):
            raise RecipeError(f"{where}.structure: {self.structure!r} is not 'M:N' (e.g. '2:4') "
                              "or a block 'HxW' (e.g. '1x4'); null for unstructured")
        one_of(self.schedule, ("polynomial", "constant"), where + ".schedule")
        one_of(self.allocation, ("uniform", "sensitivity"), where + ".allocation")
        if self.allocation == "sensitivity" and self.structure is not None:
            raise RecipeError(f"{where}: allocation sensitivity gives each layer its own "
                              f"sparsity, which structure {self.structure!r} fixes; set "
                              "allocation: uniform or structure: null")
        if not isinstance(self.per_layer, dict):
            raise RecipeError(f"{where}.per_layer must be a mapping {{layer name: sparsity}}, "
                              f"got {self.per_layer!r}")
        for name, value in self.per_layer.items():
            number_in(value, 0, 1, f"{where}.per_layer[{name!r}]", hi_open=True)
        sensitivity_samples_ok(self.sensitivity_samples, where)

    def run(self, model, ctx):
        """Prunes, fine-tunes (or distills) and returns the stripped, sparse model."""
        from tfcompress import pruning, schedules
        steps = context.steps_per_epoch(ctx, self.batch_size)
        structured_nm = bool(self.structure and ":" in self.structure)
        config = pruning.PruningConfig(
            target_sparsity=None if structured_nm else self.sparsity,
            schedule=schedules.get(self.schedule), structure=self.structure,
            skip_first_and_last=self.skip_first_and_last, exclude=tuple(self.exclude),
            per_layer=dict(self.per_layer))
        allocation = None
        if self.allocation == "sensitivity":
            from tfcompress.pruning import sensitivity
            ctx.log(f"  measuring each layer's sensitivity on {self.sensitivity_samples:,} "
                    "training samples")
            allocation = sensitivity.allocate_sparsity(
                model, config, ctx.x_train, ctx.y_train, head=ctx.head,
                samples=self.sensitivity_samples, seed=ctx.seed)
            ctx.log("  " + allocation.format().replace("\n", "\n  "))
            config = allocation.apply(config)
        pruned = pruning.prune(model, config, steps_per_epoch=steps, total_epochs=self.epochs)
        trainee = context.with_teacher(pruned, self, ctx)
        compile_for_training(trainee, self.learning_rate, self.epochs * steps, ctx.head)
        info = context.fit(trainee, ctx, self.epochs, self.batch_size,
                   callbacks=pruning.pruning_callbacks())
        stripped = pruning.strip_pruning(pruned)
        report = pruning.sparsity_report(stripped)
        info["sparsity"] = report["total"]["sparsity"] if "total" in report else None
        if allocation is not None:
            info["allocation"] = allocation.to_dict()
        return stripped, info
