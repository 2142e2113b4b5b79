"""`channel_prune`: removes whole channels (tfcompress.channel_pruning), then fine-tunes."""

import dataclasses
from typing import ClassVar, Optional

from tfcompress import distribute
from tfcompress.errors import RecipeError
from tfcompress.stages.base import (Distilling, number_in, one_of, register,
                                    sensitivity_samples_ok)
from tfcompress.stages import context
from tfcompress.training import compile_for_training

CRITERIA = ("l1", "l2", "bn_scale", "taylor")  # tfcompress.channel_pruning's importance


@register
@dataclasses.dataclass
class ChannelPruneStage(Distilling):
    """Removes whole channels (a thinner, faster model), then fine-tunes.

    ratio: fraction of channels removed (or target_macs: MACs to keep, a count
    or a fraction); allocation: "uniform" (every group loses `ratio`) or
    "sensitivity" (each group its own ratio, `ratio` of all channels in total,
    from each group's measured loss increase: tfcompress.channel_pruning.
    sensitivity); distill: fine-tune by distilling from the unpruned model.
    """
    KIND: ClassVar[str] = "channel_prune"
    ORDER: ClassVar[int] = 40
    REFUSED: ClassVar[dict] = {"parameter_server": distribute.parameter_server_refusal()}
    ratio: Optional[float] = 0.5
    criterion: str = "l1"
    round_to: int = 1
    target_macs: Optional[float] = None
    skip_first_and_last: bool = False
    epochs: int = 3
    allocation: str = "uniform"
    sensitivity_samples: int = 2000

    def check(self, where):
        if (self.ratio is None) == (self.target_macs is None):
            raise RecipeError(f"{where}: give ratio (fraction of channels removed) or "
                              f"target_macs, not both (set the other to null)")
        if self.ratio is not None:
            number_in(self.ratio, 0, 1, where + ".ratio", hi_open=True)
        if self.target_macs is not None and not self.target_macs > 0:
            raise RecipeError(f"{where}.target_macs must be > 0 (a count, or a fraction < 1)")
        one_of(self.criterion, CRITERIA, where + ".criterion")
        if self.round_to < 1:
            raise RecipeError(f"{where}.round_to must be >= 1, got {self.round_to}")
        one_of(self.allocation, ("uniform", "sensitivity"), where + ".allocation")
        if self.allocation == "sensitivity" and self.ratio is None:
            raise RecipeError(f"{where}: allocation sensitivity divides a total ratio among the "
                              "layers; give ratio, not target_macs")
        sensitivity_samples_ok(self.sensitivity_samples, where)

    def run(self, model, ctx):
        from tfcompress import channel_pruning, distillation
        config = channel_pruning.ChannelPruningConfig(
            ratio=self.ratio, criterion=self.criterion, round_to=self.round_to,
            target_macs=self.target_macs, skip_first_and_last=self.skip_first_and_last)
        # Taylor importance needs gradients on a few batches of training data.
        data = (ctx.x_train[:2048], ctx.y_train[:2048]) if self.criterion == "taylor" else None
        allocation = None
        if self.allocation == "sensitivity":
            from tfcompress.channel_pruning import sensitivity
            ctx.log(f"  measuring each group's sensitivity on {self.sensitivity_samples:,} "
                    "training samples")
            allocation = distribute.outside_strategy(
                sensitivity.allocate_ratios, model, config, ctx.x_train, ctx.y_train,
                ctx.head, samples=self.sensitivity_samples, seed=ctx.seed, data=data)
            ctx.log("  " + allocation.format().replace("\n", "\n  "))
            config = allocation.apply(config)
        if distribute.strategy_name(ctx.strategy) == "default":
            thin, plan = channel_pruning.prune_channels(model, config, data=data)
        else:
            # Under a strategy the plan is made on a plain copy: Taylor's GradientTape
            # cannot watch mirrored variables outside fit ("DistributedVariable.handle
            # is not available outside the replica context"). The thin model is then
            # rebuilt inside the strategy's scope to train.
            thin, plan = distribute.outside_strategy(_plain_prune_channels, model, config, data)
            thin = distribute.in_scope(thin, ctx.strategy)
        ctx.log(f"  channels pruned ({self.criterion}): MACs {plan.macs_before:,} -> "
                f"{plan.macs_after:,}, parameters {plan.params_before:,} -> {plan.params_after:,}")
        steps = self.epochs * context.steps_per_epoch(ctx, self.batch_size)
        if self.distill:  # the unpruned model teaches its thinner self
            trainee = distillation.Distiller(
                model, thin,
                distillation_losses=distillation.LogitsDistillation(temperature=self.temperature),
                student_loss_weight=self.alpha)
        else:
            trainee = thin
        compile_for_training(trainee, self.learning_rate, steps, ctx.head)
        info = context.fit(trainee, ctx, self.epochs, self.batch_size)
        info.update(macs_before=plan.macs_before, macs_after=plan.macs_after,
                    parameters_before=plan.params_before)
        if allocation is not None:
            info["allocation"] = allocation.to_dict()
        return thin, info


def _plain_prune_channels(model, config, data):
    from tfcompress import channel_pruning
    from tfcompress.keras import keras
    plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    return channel_pruning.prune_channels(plain, config, data=data)
