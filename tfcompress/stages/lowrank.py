"""`lowrank`: SVD factorization of Dense and 1x1 Conv2D layers (tfcompress.lowrank)."""

import dataclasses
from typing import ClassVar, Optional

from tfcompress import distribute
from tfcompress.stages.base import Training, number_in, register
from tfcompress.stages import context
from tfcompress.training import compile_for_training


@register
@dataclasses.dataclass
class LowRankStage(Training):
    """SVD factorization of Dense and 1x1 Conv2D layers, then fine-tuning (epochs may be 0)."""
    KIND: ClassVar[str] = "lowrank"
    ORDER: ClassVar[int] = 50
    MIN_EPOCHS: ClassVar[int] = 0
    REFUSED: ClassVar[dict] = {"parameter_server": distribute.parameter_server_refusal()}
    energy: float = 0.9
    rank_ratio: Optional[float] = None
    min_params_saving: float = 0.1
    learning_rate: float = 1e-3

    def check(self, where):
        number_in(self.energy, 0, 1, where + ".energy", lo_open=True)
        if self.rank_ratio is not None:
            number_in(self.rank_ratio, 0, 1, where + ".rank_ratio", lo_open=True)

    def run(self, model, ctx):
        from tfcompress import lowrank
        factored, details = lowrank.factorize(model, lowrank.LowRankConfig(
            energy=self.energy, rank_ratio=self.rank_ratio,
            min_params_saving=self.min_params_saving))
        ctx.log(f"  low-rank: parameters {details['params_before']:,} -> "
                f"{details['params_after']:,}")
        compile_for_training(factored, self.learning_rate, context.total_steps(ctx, self), ctx.head)
        info = context.fit(factored, ctx, self.epochs, self.batch_size) if self.epochs else {}
        info["factored_layers"] = [row["layer"] for row in details["layers"]
                                   if row.get("factored")]
        return factored, info
