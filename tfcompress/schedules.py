"""Pruning schedules that can be stated in steps, epochs or a fraction of training.

Users think in epochs ("prune to 80% over the first three epochs"); TFMOT's
schedules count training steps. These small serializable objects hold the
schedule in whichever unit it was stated in, and convert to steps only when
told how long an epoch is (`in_steps`) — then to the TFMOT object the pruning
wrapper needs (`to_tfmot`).

Step numbering is TFMOT's: the wrapper's counter reads 1 during the first
training batch and k during the k-th, so epoch e ends at step
e * steps_per_epoch. TFMOT prunes only at steps where
(step - begin_step) % frequency == 0 and step <= end_step
(pruning_schedule.py `_should_prune_in_step`); `to_tfmot` takes care that the
final sparsity is really applied (see `PolynomialDecay.to_tfmot`).

Example:
    from tfcompress import schedules
    schedule = schedules.PolynomialDecay(0.8, begin_epoch=0, end_epoch=3)
    schedule.in_steps(steps_per_epoch=469)     # PolynomialDecay(..., begin_step=0, end_step=1407)
    tfmot_schedule = schedule.to_tfmot(steps_per_epoch=469)
    schedules.get("polynomial")                # by name, dict, object or None

Reference:
    Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of
    pruning for model compression", https://arxiv.org/abs/1710.01878
"""

import math
import numbers

from tfcompress.keras import tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TFMOT imports TF)
from tfcompress.registry import Registry
import tensorflow_model_optimization as tfmot  # noqa: E402

__all__ = ["Schedule", "ConstantSparsity", "PolynomialDecay", "constant_sparsity",
           "polynomial_decay", "get", "serialize"]


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_sparsity(value, name, allow_none=True):
    if value is None and allow_none:
        return None
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_steps_per_epoch(steps_per_epoch):
    if steps_per_epoch is None:
        return None
    if not isinstance(steps_per_epoch, numbers.Integral) or isinstance(steps_per_epoch, bool) \
            or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
    return int(steps_per_epoch)


class Schedule:
    """Base of the tfcompress schedules: a sparsity, a window and a frequency.

    The window [begin, end] is stated in one unit: steps, epochs or a fraction
    of the whole training. Subclasses name their sparsity argument after
    TFMOT's (`target_sparsity`, `final_sparsity`) so a TFMOT schedule's
    `get_config()` is also a valid config here.
    """

    _SPARSITY = "sparsity"  # name of the sparsity argument in the subclass
    _END_REQUIRED = True

    def __init__(self, sparsity, window, frequency):
        setattr(self, self._SPARSITY, check_sparsity(sparsity, self._SPARSITY))
        self.unit, self.begin, self.end = self._check_window(window)
        if not isinstance(frequency, numbers.Integral) or isinstance(frequency, bool) \
                or frequency < 1:
            raise ValueError(f"frequency must be an integer number of steps >= 1, got "
                             f"{frequency!r}")
        self.frequency = int(frequency)

    def _check_window(self, window):
        """`window`: {unit: (begin, end)} of the arguments that were given."""
        given = {unit: pair for unit, pair in window.items() if pair != (None, None)}
        if len(given) > 1:
            names = [f"{edge}_{unit}" for unit, pair in given.items()
                     for edge, value in zip(("begin", "end"), pair) if value is not None]
            raise ValueError(f"{type(self).__name__}: state begin and end in one unit "
                             f"(steps, epochs or fractions of training), got {', '.join(names)}")
        unit, (begin, end) = next(iter(given.items()), self._default_window())
        begin = 0 if begin is None else begin
        if unit == "step" and end == -1 and not self._END_REQUIRED:
            end = None  # TFMOT's "prune until training ends"
        for edge, value in (("begin", begin), ("end", end)):
            if value is None:
                continue
            name = f"{edge}_{unit}"
            if unit == "step" and (not isinstance(value, numbers.Integral)
                                   or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            if not _is_number(value) or value < 0 or (unit == "fraction" and value > 1):
                limits = "in [0, 1]" if unit == "fraction" else ">= 0"
                raise ValueError(f"{name} must be a number {limits}, got {value!r}")
        if end is None and self._END_REQUIRED:
            raise ValueError(f"{type(self).__name__} needs an end: pass end_{unit}")
        if end is not None and not begin < end:
            raise ValueError(f"begin_{unit} ({begin}) must be before end_{unit} ({end})")
        return unit, begin, end

    def _default_window(self):
        return "step", (0, None)

    @property
    def sparsity(self):
        """The sparsity the schedule ends at (None: left for PruningConfig to fill)."""
        return getattr(self, self._SPARSITY)

    def with_sparsity(self, sparsity):
        """A copy of this schedule that ends at `sparsity` (per-layer overrides)."""
        return self.from_config(dict(self.get_config(), **{self._SPARSITY: sparsity}))

    def _to_step(self, value, steps_per_epoch, total_epochs):
        if value is None or self.unit == "step":
            return value
        if steps_per_epoch is None:
            raise ValueError(f"{type(self).__name__} is stated in {self.unit}s; pass "
                             "steps_per_epoch (batches per epoch) to convert it to steps")
        if self.unit == "epoch":
            steps = value * steps_per_epoch
        else:
            if total_epochs is None:
                raise ValueError(f"{type(self).__name__} is stated as a fraction of training; "
                                 "pass total_epochs (and steps_per_epoch) to convert it to steps")
            if not _is_number(total_epochs) or total_epochs <= 0:
                raise ValueError(f"total_epochs must be a number > 0, got {total_epochs!r}")
            steps = value * steps_per_epoch * total_epochs
        # Nearest step, halves up; the epsilon absorbs float error such as 0.1 * 30.
        return int(math.floor(steps + 0.5 + 1e-9))

    def in_steps(self, steps_per_epoch=None, total_epochs=None):
        """The same schedule stated in steps.

        Epochs convert with `steps_per_epoch`; fractions of training with
        `steps_per_epoch * total_epochs`. Non-integral results are rounded to
        the nearest step.

        Raises:
            ValueError: a needed argument is missing, or the window becomes empty.
        """
        steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
        begin = self._to_step(self.begin, steps_per_epoch, total_epochs)
        end = self._to_step(self.end, steps_per_epoch, total_epochs)
        if end is not None and end <= begin:
            raise ValueError(
                f"{self!r} covers no whole step with steps_per_epoch={steps_per_epoch} and "
                f"total_epochs={total_epochs} (begin_step {begin}, end_step {end}); "
                "widen the window or train longer")
        config = {k: v for k, v in self.get_config().items()
                  if not k.startswith(("begin_", "end_"))}
        return self.from_config(dict(config, begin_step=begin, end_step=end))

    def _window_config(self):
        return {f"begin_{self.unit}": self.begin, f"end_{self.unit}": self.end}

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        try:
            return cls(**config)
        except TypeError as e:  # an argument this schedule does not take
            raise ValueError(f"bad {cls.__name__} config {config!r}: {e}") from None

    def to_tfmot(self, steps_per_epoch=None, total_epochs=None):
        raise NotImplementedError

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ConstantSparsity(Schedule):
    """Prunes to one sparsity from `begin` on, re-computing the mask every `frequency` steps.

    The usual choice for a model that is already trained: prune at once, then
    fine-tune with the mask.

    Example:
        ConstantSparsity(0.5)                                   # from the first step
        ConstantSparsity(0.5, begin_epoch=1, frequency=50)

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1); None
            leaves it to `PruningConfig.target_sparsity`.
        begin_step, end_step / begin_epoch, end_epoch /
        begin_fraction, end_fraction: the window in one unit. Begin defaults
            to 0; no end (or `end_step=-1`, TFMOT's spelling) prunes until
            training stops.
        frequency: steps between mask updates (TFMOT's default, 100).

    Raises:
        ValueError: naming the argument that is out of range.
    """

    _SPARSITY = "target_sparsity"
    _END_REQUIRED = False

    def __init__(self, target_sparsity=None, begin_step=None, end_step=None, *, begin_epoch=None,
                 end_epoch=None, begin_fraction=None, end_fraction=None, frequency=100):
        super().__init__(target_sparsity, {"step": (begin_step, end_step),
                                           "epoch": (begin_epoch, end_epoch),
                                           "fraction": (begin_fraction, end_fraction)}, frequency)

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, **self._window_config(),
                "frequency": self.frequency}

    def to_tfmot(self, steps_per_epoch=None, total_epochs=None):
        """The `tfmot.sparsity.keras.ConstantSparsity` for this schedule.

        A schedule that begins at step 0 begins at step 1 in TFMOT: the
        wrapper's counter is never 0 during training, so TFMOT would first
        prune at step `frequency`, and not at all in a run shorter than that
        (tensorflow/model-optimization#975).
        """
        if self.target_sparsity is None:
            raise ValueError("ConstantSparsity has no target_sparsity; pass it, or set "
                             "PruningConfig.target_sparsity")
        steps = self.in_steps(steps_per_epoch, total_epochs)
        begin = max(steps.begin, 1)
        end = -1 if steps.end is None else max(steps.end, begin)
        return tfmot.sparsity.keras.ConstantSparsity(
            self.target_sparsity, begin_step=begin, end_step=end, frequency=self.frequency)


class PolynomialDecay(Schedule):
    """Gradual pruning of Zhu & Gupta (2017): sparsity rises fast, then levels off.

    At step t in [t0, t1] the sparsity is
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power, with the
    paper's cubic power by default: many weights go early, while the network
    still has redundancy, fewer near the end. After `end` the mask stays fixed
    and training recovers accuracy.

    Example:
        PolynomialDecay(0.8, begin_epoch=0, end_epoch=3).to_tfmot(steps_per_epoch=469)
        PolynomialDecay(0.8)    # over the first 75% of training (needs total_epochs)

    Args:
        final_sparsity: sparsity reached at `end`, in [0, 1); None leaves it
            to `PruningConfig.target_sparsity`.
        initial_sparsity: sparsity at `begin` (default 0).
        begin_step, end_step / begin_epoch, end_epoch /
        begin_fraction, end_fraction: the window in one unit; begin defaults
            to 0. With no window at all: fractions 0 to 0.75, leaving the last
            quarter of training to recover with the final mask.
        power: the exponent (3 in the paper).
        frequency: steps between mask updates (TFMOT's default, 100).

    Raises:
        ValueError: naming the argument that is out of range.

    Reference:
        Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy
        of pruning for model compression", https://arxiv.org/abs/1710.01878
    """

    _SPARSITY = "final_sparsity"

    def __init__(self, final_sparsity=None, initial_sparsity=0.0, begin_step=None, end_step=None,
                 *, begin_epoch=None, end_epoch=None, begin_fraction=None, end_fraction=None,
                 power=3, frequency=100):
        super().__init__(final_sparsity, {"step": (begin_step, end_step),
                                          "epoch": (begin_epoch, end_epoch),
                                          "fraction": (begin_fraction, end_fraction)}, frequency)
        self.initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity",
                                                allow_none=False)
        if self.final_sparsity is not None and self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity ({self.initial_sparsity}) must not exceed "
                             f"final_sparsity ({self.final_sparsity})")
        if not _is_number(power) or power <= 0:
            raise ValueError(f"power must be a number > 0, got {power!r}")
        self.power = power

    def _default_window(self):
        return "fraction", (0.0, 0.75)

    def get_config(self):
        return {"final_sparsity": self.final_sparsity, "initial_sparsity": self.initial_sparsity,
                **self._window_config(), "power": self.power, "frequency": self.frequency}

    def to_tfmot(self, steps_per_epoch=None, total_epochs=None):
        """The `tfmot.sparsity.keras.PolynomialDecay` for this schedule.

        TFMOT applies the final sparsity only if end_step - begin_step is a
        multiple of `frequency` (otherwise the last mask update comes earlier,
        below the target, and the rest of training leaves small values in the
        pruned places, tensorflow/model-optimization#684). So `frequency` is
        capped at the window's length and `end_step` moved back to the last
        step TFMOT prunes at; the target is reached at most `frequency - 1`
        steps early, never missed.
        """
        if self.final_sparsity is None:
            raise ValueError("PolynomialDecay has no final_sparsity; pass it, or set "
                             "PruningConfig.target_sparsity")
        steps = self.in_steps(steps_per_epoch, total_epochs)
        span = steps.end - steps.begin
        frequency = min(self.frequency, span)
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=self.initial_sparsity, final_sparsity=self.final_sparsity,
            begin_step=steps.begin, end_step=steps.begin + span // frequency * frequency,
            power=self.power, frequency=frequency)


# snake_case aliases, as in larq and Keras.
constant_sparsity = ConstantSparsity
polynomial_decay = PolynomialDecay

# An explicit table (not a registry filled by import side effects).
_REGISTRY = Registry(
    "pruning schedule",
    {"constant": ConstantSparsity, "constant_sparsity": ConstantSparsity,
     "ConstantSparsity": ConstantSparsity,
     "polynomial": PolynomialDecay, "polynomial_decay": PolynomialDecay,
     "PolynomialDecay": PolynomialDecay},
    base=Schedule, error=ValueError, dict_name="schedule",
    choices="choose one of 'constant', 'polynomial'",
    accepts="a name ('constant', 'polynomial'), a config dict, a schedule object or None")


def serialize(schedule):
    """`{"class_name": ..., "config": ...}`, the Keras form `get` reads back."""
    return _REGISTRY.serialize(schedule)


def get(identifier):
    """Returns a schedule for a name, a config dict, a schedule object or None.

    Example:
        get("polynomial")                                       # PolynomialDecay()
        get({"class_name": "ConstantSparsity", "config": {"target_sparsity": 0.5}})
        get({"name": "polynomial", "final_sparsity": 0.8, "end_epoch": 3})   # recipe form
        get(tfmot.sparsity.keras.PolynomialDecay(0, 0.8, 0, 1000))          # from TFMOT

    Args:
        identifier: "constant"/"polynomial" (or the snake_case or class
            names); a dict in Keras form (`serialize`, also what a TFMOT
            schedule's get_config gives) or flat with a "name" key; a
            tfcompress or TFMOT schedule; or None.

    Returns:
        A `Schedule`, or None for None.

    Raises:
        ValueError: for anything else, or an unknown name.
    """
    if isinstance(identifier, tfmot.sparsity.keras.PruningSchedule):
        identifier = identifier.get_config()
    return _REGISTRY.get(identifier)
