"""`cluster`: weight clustering (tfcompress.clustering), sparsity-preserving by default."""

import dataclasses
from typing import ClassVar

from tfcompress import distribute
from tfcompress.errors import RecipeError
from tfcompress.stages.base import Distilling, one_of, register
from tfcompress.stages import context
from tfcompress.training import compile_for_training

# tfcompress.clustering.INITS (not imported: that would import TensorFlow).
INITS = ("kmeans++", "linear", "density", "random")


@register
@dataclasses.dataclass
class ClusterStage(Distilling):
    """Weight clustering (sparsity-preserving when the model was pruned)."""
    KIND: ClassVar[str] = "cluster"
    ORDER: ClassVar[int] = 60
    REFUSED: ClassVar[dict] = {"parameter_server": distribute.parameter_server_refusal(
        distribute.PS_TFMOT.format(what="clustering (centroids, indices)"))}
    clusters: int = 16
    init: str = "kmeans++"
    preserve_sparsity: bool = True
    exclude: list = dataclasses.field(default_factory=list)  # layer names, regexes, class names
    learning_rate: float = 1e-4

    def check(self, where):
        # One cluster holds the zeros when sparsity is preserved (tfcompress.clustering).
        minimum = 3 if self.preserve_sparsity else 2
        if self.clusters < minimum:
            raise RecipeError(f"{where}.clusters must be >= {minimum}"
                              f"{' with preserve_sparsity' if self.preserve_sparsity else ''}, "
                              f"got {self.clusters}")
        one_of(self.init, INITS, where + ".init")

    def run(self, model, ctx):
        from tfcompress import clustering
        config = clustering.ClusteringConfig(number_of_clusters=self.clusters, init=self.init,
                                             preserve_sparsity=self.preserve_sparsity,
                                             exclude=tuple(self.exclude))
        clustered = clustering.cluster(model, config)
        trainee = context.with_teacher(clustered, self, ctx)
        compile_for_training(trainee, self.learning_rate, context.total_steps(ctx, self), ctx.head)
        info = context.fit(trainee, ctx, self.epochs, self.batch_size)
        stripped = clustering.strip_clustering(clustered)
        info["max_unique_values"] = clustering.unique_values_report(stripped)["max_unique"]
        return stripped, info
