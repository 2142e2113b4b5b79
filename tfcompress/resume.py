"""Resumable, deterministic `fit`: a killed run resumes to the same weights.

Keras's `BackupAndRestore` restores weights and optimizer state at the last
finished epoch, but not the random streams: `fit(x, y, shuffle=True)` draws
each epoch's order from an op whose state starts over in a new process, so a
resumed epoch 3 sees epoch 0's order and the result drifts. Here the order of
epoch `e` is a pure function of `(seed, e)` (`EpochBatches`), and the resumed
epoch number reaches it before its first batch is read (`_StartAtResumedEpoch`).
Dropout masks come from `tf.random.Generator`s (`tfcompress.keras` switches
tf_keras to them) reseeded from `(seed, epoch, layer)` as each epoch begins, so
they resume too.

Example:
    history = resumable_fit(model, x, y, batch_size=128, epochs=5,
                            backup_dir="runs/x/backup", seed=0)
"""

import os
import shutil

import numpy as np

from tfcompress._compat import initial_epoch_from_backup
from tfcompress.keras import keras


class EpochBatches(keras.utils.Sequence):
    """(x, y) batches whose order in epoch `e` depends only on `(seed, e)`.

    Example:
        batches = EpochBatches(x, y, batch_size=128, seed=0)
        xb, yb = batches[0]          # the first batch of epoch 0
    """

    def __init__(self, x, y, batch_size, seed=0, shuffle=True):
        super().__init__()
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if len(x) == 0:
            raise ValueError("no training samples: the training split is empty")
        self.x, self.y = x, y
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), shuffle
        self.epoch = 0
        self._order_epoch, self._order = None, None

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def order(self, epoch):
        """The sample order of `epoch` (a permutation, or 0..n-1 without shuffle)."""
        if self._order_epoch != epoch:
            n = len(self.x)
            self._order = (np.random.default_rng([self.seed, epoch]).permutation(n)
                           if self.shuffle else np.arange(n))
            self._order_epoch = epoch
        return self._order

    def __getitem__(self, index):
        rows = self.order(self.epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        # Sorted rows read memory in order; the batch's content is what matters.
        rows = np.sort(rows)
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        # Keras calls this once after each epoch, before the next epoch's iterator exists.
        self.epoch += 1


class _StartAtResumedEpoch(keras.callbacks.Callback):
    """Points `batches` at the epoch `fit` is about to resume from.

    Runs after `BackupAndRestore.on_train_begin` has restored the checkpoint and
    asks the model the same question `fit` asks next (tf_keras 2.21's
    `_maybe_load_initial_counters_from_ckpt`), so the two cannot disagree.
    """

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_train_begin(self, logs=None):
        self.batches.epoch = int(initial_epoch_from_backup(self.model, len(self.batches)))


def resumable_fit(model, x, y, batch_size, epochs, backup_dir, seed=0, callbacks=(),
                  verbose="auto", shuffle=True):
    """`model.fit` that resumes from `backup_dir` after a kill, bit-exact on one device.

    Args:
        model: a compiled tf_keras model (built, or it is built on one sample:
            BackupAndRestore silently restores nothing into an unbuilt model).
        x, y: training arrays.
        batch_size, epochs: as in `fit`.
        backup_dir: BackupAndRestore's folder; removed when `fit` finishes.
        seed: keys each epoch's sample order.
        callbacks: more Keras callbacks (run after the backup is restored).
        verbose: Keras verbosity.
        shuffle: False keeps the arrays' order in every epoch.

    Returns:
        The Keras `History`.
    """
    if not model.built:
        model(x[:1], training=False)
    batches = EpochBatches(x, y, batch_size, seed=seed, shuffle=shuffle)
    all_callbacks = [keras.callbacks.BackupAndRestore(backup_dir), _StartAtResumedEpoch(batches),
                     _ReseedRandomLayers(_random_generators(model), seed), *callbacks]
    # shuffle=False: the order is EpochBatches's, not Keras's (which would draw it
    # from Python's global `random`, not restored on resume).
    history = model.fit(batches, epochs=epochs, shuffle=False, callbacks=all_callbacks,
                        verbose=verbose)
    # Keras deletes the checkpoint after a finished fit but leaves the folder.
    # Under MultiWorkerMirroredStrategy (tfcompress.distribute) the folder is the
    # chief's and the other workers write their temporary copies inside it: only
    # the chief removes it, after every worker has finished writing (a worker that
    # removed it broke the chief's last save: "NotFoundError ... [Op:SaveV2]").
    from tfcompress import distribute
    distribute.sync_from_chief(model.distribute_strategy)
    if model.distribute_strategy.extended.should_checkpoint:
        shutil.rmtree(backup_dir, ignore_errors=True)
    return history


def _random_generators(model):
    """The `tf.random.Generator`s of the model's random layers (Dropout...), created now.

    tf_keras creates them lazily at the first training step; we need them before.
    Layers built before `tfcompress.keras` switched tf_keras to generators use
    legacy stateful ops and have none.
    """
    generators = []
    for layer in model.submodules:
        random_generator = getattr(layer, "_random_generator", None)
        if random_generator is None or not hasattr(random_generator, "_maybe_init"):
            continue
        random_generator._maybe_init()
        if getattr(random_generator, "_generator", None) is not None:
            generators.append(random_generator._generator)
    return generators


class _ReseedRandomLayers(keras.callbacks.Callback):
    """Seeds each random layer's generator from `(seed, epoch, layer)` as an epoch begins.

    BackupAndRestore does not checkpoint these generators (tf_keras does not track
    them), so instead of restoring their state we make it a function of the epoch.
    """

    def __init__(self, generators, seed):
        super().__init__()
        self.generators, self.seed = generators, seed

    def on_epoch_begin(self, epoch, logs=None):
        for i, generator in enumerate(self.generators):
            state = np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]
            generator.reset_from_seed(int(state))


def has_backup(backup_dir):
    """True when `backup_dir` holds a checkpoint to resume from."""
    return os.path.isdir(backup_dir) and bool(os.listdir(backup_dir))
