"""Run by tests/distribute/test_strategy.py in a fresh process (logical devices are set once).

Runs the stage kinds named in argv (train first, always) through
`tfcompress.stages.run_stage` on one device and under MirroredStrategy over two
logical CPU devices, from the same weights, data and global batch; with
"library" in argv also the training library (`models.train_lib.train`, train +
prune) both ways. Prints one RESULT line of JSON.
"""

import json
import os
import shutil
import sys
import tempfile
import time

os.environ["TFCOMPRESS_CPU_DEVICES"] = "2"
from tfcompress.keras import keras  # noqa: E402

import numpy as np  # noqa: E402

from tfcompress import config as C, distribute, pruning, stages  # noqa: E402

SHAPE = (16, 16, 1)
BATCH = 32


def data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.normal(0.3, 0.2, (n,) + SHAPE).astype(np.float32)
    for c in range(10):  # a learnable signal: class c brightens rows c..c+2
        x[y == c, c:c + 3, :, 0] += 0.6
    return x, y


def plain_cnn(width, seed):
    """No BatchNorm, no dropout: one device and two replicas compute the same thing."""
    keras.utils.set_random_seed(seed)
    i = keras.Input(SHAPE)
    h = keras.layers.Conv2D(width, 3, strides=2, activation="relu", name="conv1")(i)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(16, activation="relu", name="fc")(h)
    o = keras.layers.Dense(10, activation="softmax", name="classifier")(h)
    return keras.Model(i, o, name=f"plain_cnn_w{width}")


SETTINGS = {
    "train": C.TrainStage(epochs=1, batch_size=BATCH),
    "distill": C.DistillStage(epochs=1, batch_size=BATCH),
    "prune": C.PruneStage(epochs=2, batch_size=BATCH, sparsity=0.5),
    "channel_prune": C.ChannelPruneStage(epochs=1, batch_size=BATCH, criterion="taylor",
                                         distill=True),
    "lowrank": C.LowRankStage(epochs=1, batch_size=BATCH, energy=0.8),
    "cluster": C.ClusterStage(epochs=1, batch_size=BATCH, clusters=8, preserve_sparsity=False),
    "qat": C.QATStage(epochs=1, batch_size=BATCH, scheme="default", distill=True),
}


def copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def run_stages(strategy, x, y, work, kinds):
    trained = plain_cnn(8, 0)
    out = {}
    for kind in ["train", *[k for k in kinds if k != "train"]]:
        settings = SETTINGS[kind]
        # Every stage starts from (a fresh copy of) the train stage's model.
        teacher = copy(trained)
        seen = {}
        original_strip = pruning.strip_pruning

        def spy(model):  # the pruning step counters and optimizer steps at the end of fit
            seen["steps"] = sorted({int(l.pruning_step.numpy()) for l in pruning._wrappers(model)})
            seen["iterations"] = int(model.optimizer.iterations.numpy())
            return original_strip(model)

        pruning.strip_pruning = spy
        ctx = stages.StageContext(x, y, x[:64], y[:64], work_dir=os.path.join(work, kind),
                                  seed=0, verbose=0, log=lambda line: None, strategy=strategy,
                                  student_builder=lambda: plain_cnn(4, 1),
                                  teacher_builder=lambda: copy(trained))
        start = time.time()
        try:
            model, info = stages.run_stage(kind, teacher, settings, ctx)
        finally:
            pruning.strip_pruning = original_strip
        if kind == "train":
            trained = copy(model)
        out[kind] = {"loss": info["history"]["loss"], "info": {k: v for k, v in info.items()
                                                               if k != "history"},
                     "names": [w.name for w in model.weights],
                     "weights": [w.numpy().tolist() for w in model.weights],
                     "seconds": round(time.time() - start, 1), **seen}
    return out


def run_library(strategy_name, npz, init_model, work):
    from models.train_lib import TrainConfig, train
    result = train(TrainConfig(
        dataset=f"npz:{npz}", init_model=init_model, epochs=1, batch_size=BATCH,
        prune_sparsity=0.5, prune_epochs=2, prune_skip_first_and_last=False, verbose=0,
        model_dir=os.path.join(work, strategy_name), strategy=strategy_name))
    return {"weights": [w.tolist() for w in result.model.get_weights()],
            "metrics": {k: v for k, v in result.metrics.items() if k != "sparsity"},
            "sparsity": result.metrics["sparsity"]["sparsity"]}


def main(argv):
    """argv: the stage kinds to run (train always runs first), and "library"."""
    work = tempfile.mkdtemp(prefix="tfcompress-strategy-test-")
    try:
        return _main(argv, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _main(argv, work):
    kinds = [k for k in argv if k in SETTINGS]
    t0 = time.time()
    x, y = data(128, 0)
    mirrored = distribute.make_strategy("mirrored")
    result = {"replicas": mirrored.num_replicas_in_sync,
              "default": run_stages(None, x, y, os.path.join(work, "default"), kinds),
              "mirrored": run_stages(mirrored, x, y, os.path.join(work, "mirrored"), kinds)}
    if "library" not in argv:
        result["seconds"] = time.time() - t0
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    xt, yt = data(64, 1)
    npz = os.path.join(work, "data.npz")
    np.savez(npz, x=x, y=y, x_test=xt, y_test=yt)
    init = os.path.join(work, "init.keras")
    from tfcompress import save_model
    save_model(plain_cnn(4, 2), init)
    result["library"] = {name: run_library(name, npz, init, work)
                         for name in ("default", "mirrored")}
    result["seconds"] = time.time() - t0
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
