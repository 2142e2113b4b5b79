"""The compression pipeline: run a recipe's stages, then export, evaluate, inspect and benchmark.

`run(recipe, out_dir)` executes the stages in order. Stage N writes into
`out_dir/NN-kind/`:

    model.keras     the stage's output model (a QAT model for `qat`)
    metrics.json    Keras test accuracy, parameters, epochs, training seconds, history
    tflite/         the model in each of the stage's export modes
    variants.json   per mode: interpreter accuracy, sizes, non-zero weights, Edge TPU
                    verdict, latency per device profile
    manifest.json   written last: the stage's recipe hash; its presence means "done"

A rerun skips every stage whose manifest has the same hash (change a stage's
settings and it and the stages after it run again), resumes an interrupted stage
from `backup/` (Keras BackupAndRestore, at the last finished epoch), and with
`force=True` redoes everything. A teacher given as a file is stage `00-input`.
The recipe's `strategy` (tfcompress.distribute) runs the stages on
tf.distribute; under multi_worker only the chief writes into `out_dir`.
Finally `report.json`, `report.md` and `pareto.png` are written (tfcompress.report).

Example:
    from tfcompress import config, pipeline
    report = pipeline.run(config.load_recipe("fashion_mnist"), "runs/demo")
    print(open("runs/demo/report.md").read())
"""

import json
import os
import shutil
import time

from tfcompress import config as config_lib
from tfcompress import data as data_lib
from tfcompress import distribute, heads
from tfcompress import stages as stages_lib
from tfcompress.checks import check_finite_weights
from tfcompress.errors import TfcompressError, stage_errors
from tfcompress.keras import keras
from tfcompress.saving import load_model, save_model, saved_compile, write_json_atomic


class PipelineError(TfcompressError, ValueError):
    """A recipe cannot run as given (missing model file, data that does not fit...)."""


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _stage_dirs(recipe):
    """[(index, kind, dir name)] including 00-input for a teacher given as a file."""
    out = []
    if recipe.teacher.path:
        out.append((-1, "input", "00-input"))
    for i, stage in enumerate(recipe.stages):
        out.append((i, stage.kind, f"{i + 1:02d}-{stage.kind}"))
    return out


def _input_hash(recipe):
    path = recipe.teacher.path
    stat = os.stat(path)
    return config_lib.digest([os.path.abspath(path), stat.st_size, int(stat.st_mtime)])


class SavedStageModel:
    """A finished stage's model on disk, loaded on demand with `load()`."""

    def __init__(self, stage_dir, kind, allow_unsafe=False):
        self.stage_dir, self.kind, self.allow_unsafe = stage_dir, kind, allow_unsafe

    @property
    def path(self):
        return os.path.join(self.stage_dir, "model.keras")

    def load(self):
        if self.kind == "qat":
            from tfcompress import quantization
            return quantization.load_qat_model(self.path, allow_unsafe=self.allow_unsafe,
                                               compile=False)
        return load_model(self.path, allow_unsafe=self.allow_unsafe, compile=False)


def _check_model_fits(model, ds, what):
    """The model reads the data's inputs and its head scores the data's classes."""
    if len(model.inputs or []) > 1:
        raise PipelineError(f"{what} has {len(model.inputs)} inputs; the pipeline feeds one "
                            "array of samples (data.dataset)")
    if tuple(model.input_shape[1:]) != tuple(ds.input_shape):
        raise PipelineError(f"{what} takes inputs of shape {tuple(model.input_shape[1:])} but "
                            f"the data {ds.source} has {tuple(ds.input_shape)}; fix data.dataset "
                            f"or the model")
    head = heads.detect(model, name=what)
    heads.check_fits(head, ds.num_classes, what, f"the data {ds.source}")
    return head


def _build(spec, ds, what, allow_unsafe=False):
    import models
    if spec.path:
        if not os.path.exists(spec.path):
            raise PipelineError(f"{what}.path {spec.path}: no such file or directory")
        model = load_model(spec.path, allow_unsafe=allow_unsafe, compile=False)
    else:
        model = models.get_model(spec.model, ds.input_shape, ds.num_classes, **spec.options)
    _check_model_fits(model, ds, f"{what} {spec.path or spec.model}")
    return model


def _chance_causes(model, ds):
    """The likely reasons a float model scores at chance on `ds`, most specific first."""
    inside = [layer.name for layer in model.submodules
              if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))]
    if inside and ds.scale != "none":
        return (f"the model scales its own input (layer {inside[0]!r}) but the data was scaled "
                f"too ({ds.scale_words}): rerun with --set data.scale=none")
    if not inside and ds.scale == "none" and ds.value_range[1] > 2:
        return (f"the data is fed as stored, in [{ds.value_range[0]:g}, {ds.value_range[1]:g}], "
                "and the model has no scaling layer: rerun with --set data.scale=unit "
                "(/ 255) or data.scale=symmetric ([-1, 1]), as the model was trained")
    return (f"the data scaling (data.scale is {ds.scale}; try unit, none or symmetric, and "
            "data.mean/data.std), the label order (class ids must match the model's outputs), "
            "or a different data set than the model was trained on. If the model really is "
            "this weak, --set chance_check=false compresses it anyway")


def _input_stage(recipe, ds, ctx, log, allow_unsafe):
    """00-input: the user's model, its head, and the sanity check before any work."""
    path = recipe.teacher.path
    # compile=False: the file's loss and metrics are never used to measure.
    model = load_model(path, allow_unsafe=allow_unsafe, compile=False)
    head = _check_model_fits(model, ds, f"teacher {path}")
    check_finite_weights(model, f"the input model {path}")  # NaN would read as "at chance"
    compiled = saved_compile(path)
    if compiled:
        log(f"  {path} was saved compiled ({compiled}); tfcompress ignores the file's loss "
            "and metrics and measures top-1 from the model's outputs")
    accuracy = stages_lib.keras_accuracy(model, ctx, head)
    log(f"  head: {head.describe()}; float top-1 on the test split {100 * accuracy:.2f}% "
        f"({ds.summary()})")
    if recipe.chance_check:
        heads.check_above_chance(accuracy, ds.num_classes,
                                 f"the input model {path} on {ds.name}",
                                 _chance_causes(model, ds))
    return model, {"keras_test_accuracy": accuracy, "parameters": int(model.count_params()),
                   "source": path, "head": head.to_dict(), "saved_compile": compiled}


def load_data(recipe):
    """The recipe's data set, scaled and with training rows subsampled as the recipe says."""
    ds = data_lib.load_dataset(recipe.data.dataset, test_fraction=recipe.data.test_fraction,
                               seed=recipe.seed, scale=recipe.data.scale,
                               mean=recipe.data.mean, std=recipe.data.std)
    x, y = data_lib.subsample(ds.x_train, ds.y_train, recipe.data.max_train_samples, recipe.seed)
    if len(x) == 0 or len(ds.x_test) == 0:
        raise PipelineError(f"data {recipe.data.dataset}: the training or test split is empty")
    return ds, x, y


def run(recipe, out_dir, force=False, log=print, verbose=None, allow_unsafe=False,
        measure=True, callbacks=(), tensorboard_dir=None, data=None):
    """Runs `recipe` into `out_dir` (see the module docstring); returns the report dict.

    `allow_unsafe` loads a teacher file that holds code (Lambda layers...), and the
    stage models made from it; only for files you trust (`tfcompress.load_model`).
    A float input model at chance on the data stops the run before any work
    (`heads.check_above_chance`, unless `recipe.chance_check` is False); an error
    inside Keras/TF is one `StageError` line naming the stage and its model file.

    The training binary (`models/train.py`) runs its phases through here with
    `measure=False`: no export, evaluation, benchmark or report; it returns
    {"stages": [{"name", "kind", "dir", "info", "reused"}], "model": the last stage's
    model (or a SavedStageModel), "data": (ds, x_train, y_train), "chief": bool}.
    `callbacks` are extra Keras callbacks of every stage; `tensorboard_dir` adds a
    TensorBoard callback writing to `tensorboard_dir/KIND` (the train stage's to
    `tensorboard_dir` itself); `data` is an already loaded (ds, x_train, y_train).
    """
    from tfcompress import report as report_lib
    from tfcompress import variants as variants_lib
    start = time.time()
    # Before any TensorFlow op: a mirrored strategy may split the CPU into devices.
    strategy = distribute.make_strategy(recipe.strategy)
    distributed = recipe.strategy != "default"
    # Under multi_worker only the chief writes into out_dir; the other workers
    # write the same files into a throwaway folder (`out`), but read the chief's
    # manifests and train against its backups (BackupAndRestore's own scheme).
    chief = distribute.is_chief()
    out = distribute.write_dir(out_dir)
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, "recipe.json"), recipe.to_dict())
    ds, x_train, y_train = data or load_data(recipe)
    log(f"recipe {recipe.name}: {ds.summary()}; {len(x_train)} training samples; "
        f"stages: {', '.join(s.kind for s in recipe.stages) or 'none'}; out {out_dir}")
    if distributed:
        log(f"{distribute.describe(strategy)}; stage batch sizes are global batches, split "
            f"evenly over the replicas" + ("" if chief else f"; this worker writes to {out}"))
    calibration = data_lib.calibration_samples(x_train, recipe.data.calibration_samples,
                                               seed=recipe.seed)
    steps = _stage_dirs(recipe)
    # `model` is the last stage's model, or a SavedStageModel for a finished stage:
    # loaded only when a later stage trains on it or its variants are rebuilt.
    model, rerun_rest, kinds_done, ran = None, force, [], []
    model_file = None  # the file of `model`: what an error inside the next stage names
    first = None  # the first stage's model: the teacher of stages with distill: true
    for n, (index, kind, name) in enumerate(steps, start=1):
        stage_dir = os.path.join(out_dir, name)   # the chief's: manifests, backup/
        write_dir = os.path.join(out, name)       # this process's writes (the same on the chief)
        stage_hash = _input_hash(recipe) if kind == "input" else recipe.stage_hash(index)
        manifest = _read_json(os.path.join(stage_dir, "manifest.json"))
        t0 = time.time()
        reuse = not rerun_rest and bool(manifest) and manifest.get("hash") == stage_hash
        # Every worker must take the chief's decision (they run collectives together).
        reuse = bool(distribute.sync_from_chief(strategy, reuse))
        if reuse:
            log(f"[{n}/{len(steps)}] {name}: done in an earlier run, reusing {stage_dir}")
            model = SavedStageModel(stage_dir, kind, allow_unsafe)
            model_file = model.path
            info = _read_json(os.path.join(stage_dir, "metrics.json")) or {}
        else:
            pending = _read_json(os.path.join(write_dir, "pending.json"))
            if rerun_rest or (pending or {}).get("hash") != stage_hash:
                shutil.rmtree(write_dir, ignore_errors=True)  # a different recipe's leftovers
            rerun_rest = True  # later stages take this stage's new model
            os.makedirs(write_dir, exist_ok=True)
            write_json_atomic(os.path.join(write_dir, "pending.json"), {"hash": stage_hash})
            # No worker reads the backup before the chief has cleared leftovers.
            distribute.sync_from_chief(strategy)
            log(f"[{n}/{len(steps)}] {name}: running")
            source = model_file or recipe.teacher.path or f"zoo model {recipe.teacher.model}"
            try:
                with stage_errors(name, source):
                    model = model.load() if isinstance(model, SavedStageModel) else model
                    extra = list(callbacks)
                    if tensorboard_dir and kind != "input":
                        extra.append(keras.callbacks.TensorBoard(
                            tensorboard_dir if kind == "train" else
                            os.path.join(tensorboard_dir, kind), update_freq="epoch"))
                    model, info = _run_one(recipe, index, kind, model, ds, x_train, y_train,
                                           stage_dir, kinds_done, log, verbose, first, strategy,
                                           allow_unsafe, tuple(extra))
            except BaseException:
                if kind == "input":  # nothing to resume: leave no half-made stage behind
                    shutil.rmtree(write_dir, ignore_errors=True)
                raise
            # Every worker saves (reading mirrored BatchNorm statistics is a collective
            # under multi_worker); only the chief's copy is in out_dir.
            model_file = save_model(model, os.path.join(write_dir, "model.keras"))
            info["seconds"] = round(time.time() - t0, 2)
            # epochs_run differs between a resumed and an uninterrupted run: it is this
            # call's fact (the training binary's epochs_run_this_time), not the stage's.
            write_json_atomic(os.path.join(write_dir, "metrics.json"),
                              {k: v for k, v in info.items() if k != "epochs_run"})
            write_json_atomic(os.path.join(write_dir, "manifest.json"),
                              {"hash": stage_hash, "stage": kind, "name": name,
                               "index": index, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            os.remove(os.path.join(write_dir, "pending.json"))
            if recipe.strategy == "multi_worker":
                # The chief exports from the saved file: a plain model. Reading the
                # trained one's BatchNorm statistics is a collective the others would miss.
                model = SavedStageModel(write_dir, kind, allow_unsafe)
            stage_dir = write_dir  # this stage's files, for the variants and `first`
            done = "loaded" if kind == "input" else "trained"
            log(f"[{n}/{len(steps)}] {name}: {done} in {time.time() - t0:.0f} s, Keras test "
                f"accuracy {info['keras_test_accuracy']:.4f}")
        kinds_done.append(kind)
        ran.append({"name": name, "kind": kind, "dir": stage_dir, "info": info,
                    "reused": reuse})
        first = first or SavedStageModel(stage_dir, kind, allow_unsafe)
        if not measure:
            continue
        modes = recipe.stage_modes(index) if index >= 0 else list(recipe.export.modes)
        # Exports, accuracies and timings depend on the model and on these settings.
        variant_hash = config_lib.digest([stage_hash, modes, recipe.to_dict()["export"],
                                         recipe.to_dict()["ptq"],
                                         recipe.to_dict()["benchmark"], recipe.data.eval_samples,
                                         recipe.data.calibration_samples])
        if chief:  # exports, evaluation and benchmarks are the chief's alone
            with stage_errors(f"{name} (export)", os.path.join(stage_dir, "model.keras")):
                variants_lib.build_variants(model, stage_dir, name, modes, variant_hash, recipe,
                                            ds, calibration, force=rerun_rest, log=log)
        log(f"[{n}/{len(steps)}] {name}: finished in {time.time() - t0:.0f} s")
    distribute.sync_from_chief(strategy)  # the other workers wait for the chief to finish
    if not measure:
        return {"stages": ran, "model": model, "data": (ds, x_train, y_train), "chief": chief}
    if not chief:
        log(f"pipeline finished in {time.time() - start:.0f} s on {distribute.task_label()}; "
            f"the chief wrote {out_dir}")
        return {"variants": [], "stages": [], "out_dir": out_dir, "chief": False}
    report = report_lib.build_report(out_dir)
    report_lib.write_report(out_dir, report)
    log(f"pipeline finished in {time.time() - start:.0f} s; report in "
        f"{os.path.join(out_dir, 'report.md')}")
    return report


def _run_one(recipe, index, kind, model, ds, x_train, y_train, stage_dir, kinds_done, log,
             verbose, first, strategy=None, allow_unsafe=False, callbacks=()):
    ctx = stages_lib.StageContext(
        x_train, y_train, ds.x_test, ds.y_test, work_dir=stage_dir, seed=recipe.seed,
        verbose=verbose, log=log, strategy=strategy, earlier_stages=tuple(kinds_done),
        callbacks=callbacks,
        student_builder=lambda: _build(recipe.student, ds, "student", allow_unsafe),
        teacher_builder=first.load if first else None)
    if kind == "input":
        return _input_stage(recipe, ds, ctx, log, allow_unsafe)
    if model is None:  # a train stage first: the teacher from the zoo
        keras.utils.set_random_seed(recipe.seed)
        model = _build(recipe.teacher, ds, "teacher", allow_unsafe)
    settings = recipe.stages[index].settings
    return stages_lib.run_stage(kind, model, settings, ctx)
