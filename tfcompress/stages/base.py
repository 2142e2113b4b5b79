"""The stage registry: each stage kind is one settings dataclass registered with its code.

A stage class holds its recipe key (`KIND`), its settings (dataclass fields, with
their defaults), its checks (`check`), its work (`run(model, ctx)`), the
strategies it cannot run under (`REFUSED`) and where it may stand in a recipe.
Recipe parsing (`tfcompress.config`), the strategy support matrix
(`tfcompress.distribute`), the pipeline and `tfcompress stages` read the registry.
Importing this module does not import TensorFlow (recipes are checked without it).

Example (a whole new stage kind, in its own file under tfcompress/stages/):
    @register
    @dataclasses.dataclass
    class NoiseStage(Training):
        '''Adds Gaussian noise to the weights, then fine-tunes.'''
        KIND: ClassVar[str] = "noise"
        ORDER: ClassVar[int] = 65
        stddev: float = 0.01

        def check(self, where):
            number_in(self.stddev, 0, 1, where + ".stddev", lo_open=True)

        def run(self, model, ctx):
            ...
            return model, {"stddev": self.stddev}
"""

import dataclasses
from typing import ClassVar, Optional

from tfcompress.errors import RecipeError

_REGISTRY = {}


def register(cls):
    """Class decorator: makes `cls` (a StageSettings dataclass) the stage `cls.KIND`."""
    if not cls.KIND:
        raise TypeError(f"{cls.__name__} has no KIND (its recipe key)")
    if cls.KIND in _REGISTRY and _REGISTRY[cls.KIND] is not cls:
        raise TypeError(f"stage kind {cls.KIND!r} is registered twice: "
                        f"{_REGISTRY[cls.KIND].__name__} and {cls.__name__}")
    _REGISTRY[cls.KIND] = cls
    return cls


def kinds():
    """The registered stage kinds, in their usual pipeline order (ORDER)."""
    return tuple(sorted(_REGISTRY, key=lambda kind: (_REGISTRY[kind].ORDER, kind)))


def get(kind):
    """The settings class of stage `kind`; RecipeError (naming the valid kinds) if none."""
    if kind not in _REGISTRY:
        raise RecipeError(f"unknown stage {kind!r}; valid stages: {', '.join(kinds())}")
    return _REGISTRY[kind]


# ----------------------------------------------------------------------------- checks

def number_in(value, lo, hi, where, lo_open=False, hi_open=False):
    """Raises RecipeError unless lo <(=) value <(=) hi."""
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise RecipeError(f"{where} must be in {interval}, got {value}")


def sensitivity_samples_ok(value, where):
    """Raises RecipeError unless `value` is an integer >= 100 (a sensitivity slice's rows)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 100:
        raise RecipeError(f"{where}.sensitivity_samples must be an integer >= 100 (training "
                          f"rows the sensitivity is measured on), got {value!r}")


def one_of(value, choices, where):
    """Raises RecipeError unless `value` is one of `choices`, naming them."""
    if value not in choices:
        raise RecipeError(f"{where}: unknown {value!r}; valid: {', '.join(choices)}")


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass
class StageSettings:
    """Base of every stage kind. Subclasses are dataclasses and set the ClassVars."""
    KIND: ClassVar[str] = ""
    ORDER: ClassVar[int] = 100          # where `kinds()` lists it (train 10 ... qat 70)
    MIN_EPOCHS: ClassVar[int] = 1
    POSITION: ClassVar[Optional[str]] = None  # "first" or "last": where it must stand
    POSITION_WHY: ClassVar[str] = ""    # why, for the error message
    UNIQUE: ClassVar[bool] = False      # at most one per recipe
    NEEDS_STUDENT: ClassVar[bool] = False  # reads recipe.student (and its hash does)
    # {strategy: (why not, what to use instead)}; see tfcompress.distribute.
    REFUSED: ClassVar[dict] = {}

    @classmethod
    def summary(cls):
        """The first line of the class docstring: what the stage does."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    def validate(self, where):
        """The checks every stage shares, then the kind's own `check`."""
        for key in ("epochs", "batch_size"):
            if hasattr(self, key):
                minimum = self.MIN_EPOCHS if key == "epochs" else 1
                value = getattr(self, key)
                if value < minimum:
                    raise RecipeError(f"{where}.{key} must be >= {minimum}, got {value}")
        if hasattr(self, "learning_rate"):
            number_in(self.learning_rate, 0, 10, where + ".learning_rate", lo_open=True)
        if hasattr(self, "temperature"):
            number_in(self.temperature, 0, 1000, where + ".temperature", lo_open=True)
            number_in(self.alpha, 0, 1, where + ".alpha")
        for key in ("exclude", "exclude_layers", "exclude_types"):
            if not all(isinstance(p, str) for p in getattr(self, key, [])):
                raise RecipeError(f"{where}.{key} must be a list of layer names, regular "
                                  f"expressions or class names, got {getattr(self, key)!r}")
        self.check(where)

    def check(self, where):
        """The kind's own checks; raises RecipeError naming `where`.KEY."""

    def export_modes(self, modes):
        """The recipe's export modes this stage's model goes to (all, by default)."""
        return list(modes)

    def run(self, model, ctx):
        """Does the stage's work on `model`; returns (model, info dict for the report)."""
        raise NotImplementedError(f"stage {self.KIND!r} has no run()")


@dataclasses.dataclass
class Training(StageSettings):
    """Options of every stage that trains: epochs, peak learning rate, global batch size."""
    epochs: int = 1
    learning_rate: float = 2e-3
    batch_size: int = 128


@dataclasses.dataclass
class SoftTargets(Training):
    """Hinton soft targets: `temperature`, and `alpha` the weight of the hard-label loss
    (1 - alpha goes to the soft-target loss)."""
    temperature: float = 4.0
    alpha: float = 0.5


@dataclasses.dataclass
class Distilling(SoftTargets):
    """A stage that may train against the teacher's soft targets too (`distill: true`)."""
    distill: bool = False


def markdown_table():
    """The registered stages as a Markdown table: kind, what it does, its keys with defaults."""
    lines = ["| stage | what | keys (defaults) |", "|---|---|---|"]
    for kind in kinds():
        cls = _REGISTRY[kind]
        shared = {f.name for f in dataclasses.fields(Distilling)}  # the options every stage has
        fields = sorted(dataclasses.fields(cls), key=lambda f: f.name in shared)
        keys = ", ".join(f"`{f.name}: {_default(f)}`" for f in fields)
        place = {"first": " Comes first.", "last": " Comes last."}.get(cls.POSITION, "")
        lines.append(f"| `{kind}` | {cls.summary()}{place} | {keys} |")
    return "\n".join(lines)


def _default(field):
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING \
        else field.default
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else value
