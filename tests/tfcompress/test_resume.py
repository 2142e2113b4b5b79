"""tfcompress.resume: per-epoch order from (seed, epoch); an interrupted fit resumes bit-exact."""

import numpy as np
import pytest

import models
from tfcompress.keras import keras
from tfcompress.resume import EpochBatches, resumable_fit


def _data(n=192):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = (rng.random((n, 8, 8, 1)) * 0.5 + 0.25 * y[:, None, None, None]).astype(np.float32)
    return x, y


def test_each_epoch_is_a_permutation_keyed_by_seed_and_epoch():
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50)
    batches = EpochBatches(x, y, batch_size=16, seed=3)
    assert len(batches) == 4  # the last batch is partial, as in Keras
    seen = []
    for epoch in range(3):
        batches.epoch = epoch
        rows = np.concatenate([batches[i][1] for i in range(len(batches))])
        assert sorted(rows) == list(range(50))
        seen.append(rows)
    assert not np.array_equal(seen[0], seen[1])
    again = EpochBatches(x, y, batch_size=16, seed=3)
    again.epoch = 2
    np.testing.assert_array_equal(np.concatenate([again[i][1] for i in range(4)]), seen[2])
    other_seed = EpochBatches(x, y, batch_size=16, seed=4)
    assert not np.array_equal(np.concatenate([other_seed[i][1] for i in range(4)]), seen[0])
    in_order = EpochBatches(x, y, batch_size=16, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([in_order[i][1] for i in range(4)]), y)


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="x has 3 rows but y has 2"):
        EpochBatches(np.zeros((3, 1)), np.zeros(2), batch_size=2)
    with pytest.raises(ValueError, match="training split is empty"):
        EpochBatches(np.zeros((0, 1)), np.zeros(0), batch_size=2)


class _Interrupt(keras.callbacks.Callback):
    """Stops fit with an exception as epoch `at` begins (the backup holds epoch at-1)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt("simulated kill")


def _fresh_model():
    keras.utils.set_random_seed(0)
    model = models.get_model("small_cnn", (8, 8, 1), 3, width=4, dropout=0.5)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy())
    return model


def test_interrupted_fit_resumes_to_the_same_weights(tmp_path):
    x, y = _data()
    reference = _fresh_model()
    resumable_fit(reference, x, y, 32, 4, str(tmp_path / "ref"), seed=1, verbose=0)

    model = _fresh_model()
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        resumable_fit(model, x, y, 32, 4, backup, seed=1, verbose=0, callbacks=[_Interrupt(2)])
    # Burn some random state, as a new process would have a different one.
    np.random.default_rng().random(10)
    keras.utils.set_random_seed(123)
    resumed = _fresh_model()
    history = resumable_fit(resumed, x, y, 32, 4, backup, seed=1, verbose=0)
    assert len(history.epoch) == 2  # epochs 2 and 3 only: it resumed
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dropout_masks_follow_the_seed(tmp_path):
    """With the data order fixed, only the dropout masks depend on the seed: they must."""
    x, y = _data()
    weights = []
    for seed in (1, 2):
        model = _fresh_model()
        resumable_fit(model, x, y, 32, 2, str(tmp_path / f"s{seed}"), seed=seed, verbose=0,
                      shuffle=False)
        weights.append(model.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(*weights))
