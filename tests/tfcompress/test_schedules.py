import json

import numpy as np
import pytest

from tfcompress import schedules
from tfcompress.schedules import ConstantSparsity, PolynomialDecay
import tensorflow_model_optimization as tfmot  # noqa: E402  (after tfcompress)


def _tfmot_at(schedule, step):
    """(prunes at this step, sparsity) of a TFMOT schedule."""
    should_prune, sparsity = schedule(np.int64(step))
    return bool(should_prune.numpy()), float(sparsity.numpy())


# ------------------------------------------------------------------- step conversion


def test_epochs_convert_to_exact_steps():
    schedule = PolynomialDecay(0.8, begin_epoch=1, end_epoch=3)
    steps = schedule.in_steps(steps_per_epoch=469)
    assert (steps.unit, steps.begin, steps.end) == ("step", 469, 1407)
    # Everything but the window carries over.
    assert steps.get_config() == {"final_sparsity": 0.8, "initial_sparsity": 0.0,
                                  "begin_step": 469, "end_step": 1407, "power": 3,
                                  "frequency": 100}
    # Fractional epochs round to the nearest step (halves up).
    half = PolynomialDecay(0.8, begin_epoch=0.5, end_epoch=2.5).in_steps(steps_per_epoch=5)
    assert (half.begin, half.end) == (3, 13)


def test_fractions_convert_to_exact_steps():
    steps = PolynomialDecay(0.8, begin_fraction=0.25, end_fraction=0.75).in_steps(
        steps_per_epoch=100, total_epochs=4)
    assert (steps.begin, steps.end) == (100, 300)
    # 0.1 * 30 is 3.0000000000000004 in floating point: still step 3.
    steps = ConstantSparsity(0.5, begin_fraction=0.1).in_steps(steps_per_epoch=10,
                                                              total_epochs=3)
    assert (steps.begin, steps.end) == (3, None)
    # The default polynomial window is the first 75% of training.
    steps = PolynomialDecay(0.8).in_steps(steps_per_epoch=10, total_epochs=4)
    assert (steps.begin, steps.end) == (0, 30)


def test_conversion_names_what_is_missing():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        PolynomialDecay(0.8, end_epoch=3).in_steps()
    with pytest.raises(ValueError, match="total_epochs"):
        PolynomialDecay(0.8, end_fraction=0.5).in_steps(steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1"):
        PolynomialDecay(0.8, end_epoch=3).in_steps(steps_per_epoch=0)
    with pytest.raises(ValueError, match="covers no whole step"):
        PolynomialDecay(0.8, begin_epoch=0, end_epoch=0.1).in_steps(steps_per_epoch=2)
    # Steps need nothing.
    assert PolynomialDecay(0.8, end_step=10).in_steps().end == 10


def test_polynomial_to_tfmot_reaches_the_target_at_its_last_pruning_step():
    schedule = PolynomialDecay(0.8, initial_sparsity=0.1, begin_epoch=0, end_epoch=3,
                               frequency=100).to_tfmot(steps_per_epoch=469)
    assert isinstance(schedule, tfmot.sparsity.keras.PolynomialDecay)
    # 1407 is not a multiple of 100: TFMOT's last mask update would be at step
    # 1400, below 0.8; the end moves back to 1400, where the target is applied.
    config = schedule.get_config()["config"]
    assert config == {"initial_sparsity": 0.1, "final_sparsity": 0.8, "power": 3,
                      "begin_step": 0, "end_step": 1400, "frequency": 100}
    assert _tfmot_at(schedule, 1400) == (True, pytest.approx(0.8))
    assert _tfmot_at(schedule, 1500)[0] is False
    assert _tfmot_at(schedule, 700)[1] == pytest.approx(0.8 - 0.7 * 0.5 ** 3)  # cubic ramp
    # A window shorter than the frequency still prunes, once, at its end.
    short = PolynomialDecay(0.5, end_step=6).to_tfmot()
    assert (short.frequency, short.end_step) == (6, 6)
    assert _tfmot_at(short, 6) == (True, pytest.approx(0.5))


def test_constant_to_tfmot_starts_at_the_first_training_step():
    # TFMOT's step counter reads 1 in the first batch; begin_step=0 would mean
    # the first prune at step `frequency` (never, in a short run).
    schedule = ConstantSparsity(0.6).to_tfmot()
    assert isinstance(schedule, tfmot.sparsity.keras.ConstantSparsity)
    assert schedule.get_config()["config"] == {"target_sparsity": 0.6, "begin_step": 1,
                                               "end_step": -1, "frequency": 100}
    assert _tfmot_at(schedule, 1) == (True, pytest.approx(0.6))
    later = ConstantSparsity(0.6, begin_epoch=2, end_epoch=4, frequency=5).to_tfmot(
        steps_per_epoch=10)
    assert (later.begin_step, later.end_step, later.frequency) == (20, 40, 5)


def test_to_tfmot_needs_a_sparsity():
    with pytest.raises(ValueError, match="final_sparsity"):
        PolynomialDecay(end_step=10).to_tfmot()
    assert PolynomialDecay(end_step=10).with_sparsity(0.7).to_tfmot().final_sparsity == 0.7


# ------------------------------------------------------------------------------ get


def test_get_accepts_names_aliases_dicts_objects_and_none():
    assert schedules.get(None) is None
    assert schedules.get("polynomial") == PolynomialDecay()
    assert schedules.get("polynomial_decay") == PolynomialDecay()
    assert schedules.get("constant") == ConstantSparsity()
    assert schedules.get("ConstantSparsity") == ConstantSparsity()
    schedule = PolynomialDecay(0.8, end_epoch=3)
    assert schedules.get(schedule) is schedule
    assert schedules.get(schedules.serialize(schedule)) == schedule
    assert schedules.get({"name": "polynomial", "final_sparsity": 0.8, "end_epoch": 3}) \
        == schedule
    assert schedules.polynomial_decay is PolynomialDecay
    assert schedules.constant_sparsity is ConstantSparsity


def test_get_reads_tfmot_schedules_and_their_configs():
    tfmot_schedule = tfmot.sparsity.keras.PolynomialDecay(0.1, 0.8, 10, 1000, frequency=50)
    expected = PolynomialDecay(0.8, 0.1, begin_step=10, end_step=1000, frequency=50)
    assert schedules.get(tfmot_schedule) == expected
    assert schedules.get(tfmot_schedule.get_config()) == expected
    # TFMOT's "end_step=-1" (forever) is our end None.
    constant = schedules.get(tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    assert constant == ConstantSparsity(0.5, begin_step=0) and constant.end is None


@pytest.mark.parametrize("bad", [42, 0.5, ["polynomial"], "cubic", {"config": {}},
                                 {"class_name": "Exponential", "config": {}}, object(),
                                 {"class_name": "PolynomialDecay", "config": {"end": 3}},
                                 {"name": "constant", "sparsity": 0.5}])
def test_get_rejects_anything_else(bad):
    with pytest.raises(ValueError):
        schedules.get(bad)


@pytest.mark.parametrize("schedule", [
    PolynomialDecay(0.8, 0.2, begin_epoch=1, end_epoch=4, power=2, frequency=10),
    PolynomialDecay(),
    ConstantSparsity(0.5, begin_fraction=0.1, end_fraction=0.9, frequency=7),
    ConstantSparsity(0.3, begin_step=5),
])
def test_config_round_trips_through_json(schedule):
    config = json.loads(json.dumps(schedules.serialize(schedule)))
    restored = schedules.get(config)
    assert restored == schedule and restored is not schedule
    assert type(schedule).from_config(schedule.get_config()) == schedule
    assert repr(restored) == repr(schedule)


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, message", [
    (dict(final_sparsity=1.0, end_step=10), "final_sparsity must be a number in \\[0, 1\\)"),
    (dict(final_sparsity=-0.1, end_step=10), "final_sparsity"),
    (dict(final_sparsity=0.5, initial_sparsity=0.6, end_step=10), "initial_sparsity"),
    (dict(final_sparsity=0.5, begin_step=10, end_step=10), "begin_step \\(10\\) must be before "
                                                           "end_step \\(10\\)"),
    (dict(final_sparsity=0.5, begin_epoch=3, end_epoch=1), "begin_epoch"),
    (dict(final_sparsity=0.5, end_fraction=1.5), "end_fraction must be a number in \\[0, 1\\]"),
    (dict(final_sparsity=0.5, begin_step=1.5, end_step=10), "begin_step must be an integer"),
    (dict(final_sparsity=0.5, end_step=10, frequency=0), "frequency"),
    (dict(final_sparsity=0.5, end_step=10, power=0), "power"),
    (dict(final_sparsity=0.5, begin_step=0, end_epoch=3), "one unit.*begin_step, end_epoch"),
    (dict(final_sparsity=0.5, begin_epoch=1), "needs an end: pass end_epoch"),
])
def test_polynomial_validates_in_the_constructor(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolynomialDecay(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_sparsity=1.0), "target_sparsity"),
    (dict(target_sparsity=0.5, begin_step=-1), "begin_step must be an integer >= 0"),
    (dict(target_sparsity=0.5, begin_epoch=2, end_epoch=2), "begin_epoch \\(2\\) must be before"),
    (dict(target_sparsity=0.5, frequency=2.5), "frequency"),
])
def test_constant_validates_in_the_constructor(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConstantSparsity(**kwargs)
