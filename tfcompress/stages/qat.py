"""`qat`: quantization-aware training (tfcompress.quantization); always the last stage."""

import dataclasses
from typing import ClassVar

from tfcompress import distribute
from tfcompress.stages.base import Distilling, one_of, register
from tfcompress.stages import context
from tfcompress.training import compile_for_training

SCHEMES = ("auto", "default", "prune_preserving", "cluster_preserving",
           "prune_cluster_preserving")


@register
@dataclasses.dataclass
class QATStage(Distilling):
    """Quantization-aware training; scheme "auto" preserves what earlier stages made."""
    KIND: ClassVar[str] = "qat"
    ORDER: ClassVar[int] = 70
    POSITION: ClassVar[str] = "last"
    POSITION_WHY: ClassVar[str] = "its model is fake-quantized; later stages cannot take it"
    REFUSED: ClassVar[dict] = {"parameter_server": distribute.parameter_server_refusal(
        distribute.PS_TFMOT.format(what="quantizer range"))}
    scheme: str = "auto"
    per_tensor: bool = False
    exclude_layers: list = dataclasses.field(default_factory=list)  # names or regexes: float
    exclude_types: list = dataclasses.field(default_factory=list)   # class names: float
    learning_rate: float = 1e-4

    def check(self, where):
        one_of(self.scheme, SCHEMES, where + ".scheme")

    def export_modes(self, modes):
        """A QAT model only goes to the modes that take its learned ranges (int8, int8_full)."""
        from tflite_export.convert import MODES
        return [m for m in modes if MODES[m].qat_ranges] or ["int8_full"]

    def run(self, model, ctx):
        """Returns the QAT model (it converts to int8 as is)."""
        from tfcompress import quantization
        scheme = qat_scheme(self, ctx.earlier_stages)
        qat_model = quantization.quantize(
            model, quantization.QATConfig(scheme=scheme, per_tensor=self.per_tensor,
                                          exclude_layers=tuple(self.exclude_layers),
                                          exclude_types=tuple(self.exclude_types)))
        trainee = context.with_teacher(qat_model, self, ctx)
        compile_for_training(trainee, self.learning_rate, context.total_steps(ctx, self), ctx.head)
        info = context.fit(trainee, ctx, self.epochs, self.batch_size)
        info["scheme"] = scheme
        return qat_model, info


def qat_scheme(settings, earlier_stages):
    """The QAT scheme; "auto" keeps what earlier stages made (zeros, centroids)."""
    if settings.scheme != "auto":
        return settings.scheme
    pruned, clustered = "prune" in earlier_stages, "cluster" in earlier_stages
    if pruned and clustered:
        return "prune_cluster_preserving"
    return "prune_preserving" if pruned else "cluster_preserving" if clustered else "default"
