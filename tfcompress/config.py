"""Recipes: what a pipeline run builds, as typed dataclasses loaded from YAML or JSON.

A recipe names the data, the teacher (a zoo model to train or a saved model file),
the student, an ordered list of stages, the TFLite export modes and the device
profiles to benchmark on. Every stage takes the model the stage before it made.

    name: my_recipe
    seed: 0
    data: {dataset: fashion_mnist, calibration_samples: 200}
    teacher: {model: small_cnn, options: {width: 16}}
    student: {model: small_cnn, options: {width: 8}}
    stages:
      - train: {epochs: 5}
      - distill: {epochs: 5, temperature: 4.0, alpha: 0.5}
      - prune: {sparsity: 0.8, epochs: 3}
      - qat: {epochs: 1}
    export: {modes: [float32, int8_full]}
    benchmark: {devices: [host-1t], runs: 50}

Unknown keys and bad values raise `RecipeError`, naming the key and the valid
choices. YAML is read with `yaml.safe_load`: a recipe cannot construct objects.

Example:
    recipe = load_recipe("fashion_mnist")          # built-in, see list_recipes()
    recipe = load_recipe("my_recipe.yaml", overrides=["stages.0.train.epochs=1"])
"""

import dataclasses
import hashlib
import json
import os
import typing
from typing import Optional

from tfcompress import stages as stages_lib
from tfcompress.stages import number_in
# The export modes: the rows of tflite_export.convert.MODES (a TF-free import).
from tflite_export.convert import MODE_NAMES as EXPORT_MODES
from tfcompress.errors import RecipeError, TfcompressError
# Each stage kind's settings class (the registry: tfcompress.stages).
from tfcompress.stages import (ChannelPruneStage, ClusterStage, DistillStage,  # noqa: F401
                               LowRankStage, PruneStage, QATStage, TrainStage)

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")


# ----------------------------------------------------------------------------- sections

@dataclasses.dataclass
class DataConfig:
    """dataset: a `tfcompress.data.load_dataset` spec (fashion_mnist, npz:PATH, ...).

    scale, mean, std: how stored values map to the model's input, the same for
    training, calibration and evaluation (`tfcompress.data.SCALES`): "auto"
    (uint8 / 255, other types as stored), "unit" (/ 255), "none", "symmetric"
    (/ 127.5 - 1); then (x - mean) / std when given (a number, or one per channel).
    """
    dataset: str = "fashion_mnist"
    max_train_samples: Optional[int] = None
    calibration_samples: int = 200
    eval_samples: Optional[int] = None  # None: the whole test split
    test_fraction: float = 0.2          # for npz/imagefolder data without a test split
    scale: str = "auto"
    mean: object = None
    std: object = None

    def validate(self, where):
        _check(self.dataset, where + ".dataset", "a data spec such as fashion_mnist or npz:FILE")
        from tfcompress.data import SCALES  # numpy only: cheap
        if self.scale not in SCALES:
            raise RecipeError(f"{where}.scale: unknown {self.scale!r}; valid: {', '.join(SCALES)} "
                              "(auto: uint8 data / 255, other data as stored)")
        for key in ("mean", "std"):
            value = getattr(self, key)
            values = value if isinstance(value, list) else [value]
            if value is not None and (not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise RecipeError(f"{where}.{key} must be a number or a list of numbers (one "
                                  f"per channel), got {value!r}")
        stds = self.std if isinstance(self.std, list) else [self.std]
        if self.std is not None and not all(v > 0 for v in stds):
            raise RecipeError(f"{where}.std must be > 0, got {self.std!r}")
        _positive(self.max_train_samples, where + ".max_train_samples", optional=True)
        _positive(self.calibration_samples, where + ".calibration_samples")
        _positive(self.eval_samples, where + ".eval_samples", optional=True)
        if not 0 < self.test_fraction < 1:
            raise RecipeError(f"{where}.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclasses.dataclass
class ModelSpec:
    """A zoo model (`model` + `options`) or a saved model file (`path`)."""
    model: Optional[str] = None
    options: dict = dataclasses.field(default_factory=dict)
    path: Optional[str] = None

    def validate(self, where):
        import models
        if self.model and self.path:
            raise RecipeError(f"{where}: give either model (a zoo name) or path (a saved "
                              f"model file), not both")
        if self.model and self.model not in models.MODELS:
            raise RecipeError(f"{where}.model: unknown zoo model {self.model!r}; valid: "
                              f"{', '.join(models.list_models())}")
        if self.model:
            # Checked now: a student's options are otherwise read only after the teacher trained.
            valid = models.options_of(self.model)
            unknown = sorted(set(self.options) - set(valid))
            if unknown:
                raise RecipeError(f"{where}.options: zoo model {self.model!r} has no option "
                                  f"{unknown[0]!r}; valid: {', '.join(valid)}")
        if self.path is not None and not isinstance(self.path, str):
            raise RecipeError(f"{where}.path must be a file path, got {self.path!r}")
        if self.path and not os.path.exists(self.path):
            raise RecipeError(f"{where}.path {self.path}: no such file or directory")

    @property
    def given(self):
        return bool(self.model or self.path)


@dataclasses.dataclass
class Stage:
    """One step of the pipeline: its kind (a registered stage, `stages.kinds()`) and its
    settings (that kind's settings class)."""
    kind: str
    settings: object
    export: Optional[list] = None  # this stage's export modes; None: the recipe's

    def to_dict(self):
        out = {self.kind: dataclasses.asdict(self.settings)}
        if self.export is not None:
            out[self.kind]["export"] = list(self.export)
        return out


@dataclasses.dataclass
class ExportConfig:
    modes: list = dataclasses.field(default_factory=lambda: ["float32", "int8_full"])
    batch_size: int = 1
    # Also write each float/pruned stage's model as a Keras 3 file (keras3_export).
    keras3: bool = False


@dataclasses.dataclass
class PtqConfig:
    """The budget of the `int4_mixed` export mode (tflite_export.mixed_precision): the
    smallest weight-only file within `max_drop` points of the float model on
    `validation_samples` held-out training rows, or down to `max_bytes`."""
    max_drop: Optional[float] = None
    max_bytes: Optional[int] = None
    validation_samples: int = 500
    learned_rounding: bool = True


@dataclasses.dataclass
class BudgetConfig:
    """What the report recommends (tfcompress.report.recommend): the smallest variant, and
    per device the fastest, at most `max_drop` points below the float baseline."""
    max_drop: Optional[float] = None


@dataclasses.dataclass
class BenchmarkConfig:
    """Device profiles (tflite_export.benchmark) to time every variant on; [] skips it."""
    devices: list = dataclasses.field(default_factory=lambda: ["host-1t"])
    runs: int = 50
    min_seconds: float = 0.5
    warmup: int = 5
    devices_file: Optional[str] = None


@dataclasses.dataclass
class Recipe:
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    student: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    stages: list = dataclasses.field(default_factory=list)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = dataclasses.field(default_factory=BenchmarkConfig)
    ptq: PtqConfig = dataclasses.field(default_factory=PtqConfig)
    budget: BudgetConfig = dataclasses.field(default_factory=BudgetConfig)
    # tf.distribute strategy of the training stages (tfcompress.distribute): default,
    # mirrored, multi_worker. Not in the stage hash: a run may resume under another.
    strategy: str = "default"
    # Stop before any work when the float input model scores at chance on the data
    # (tfcompress.heads.chance_floor): wrong data.scale, label order or data set.
    chance_check: bool = True

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    def stage_hash(self, index):
        """A hash of everything stage `index` depends on: a rerun reuses a stage with the same hash."""
        d = self.to_dict()
        relevant = {k: d[k] for k in ("seed", "data", "teacher")}
        relevant["stages"] = d["stages"][:index + 1]
        # The student matters from the distill stage on, not to the teacher's training.
        if any(s.settings.NEEDS_STUDENT for s in self.stages[:index + 1]):
            relevant["student"] = d["student"]
        relevant["data"] = {k: v for k, v in relevant["data"].items()
                            if k not in ("calibration_samples", "eval_samples")}
        return digest(relevant)

    def stage_modes(self, index):
        """Export modes of stage `index`: its own `export:`, else the recipe's modes the
        stage takes (a QAT model only goes to the int8 modes)."""
        stage = self.stages[index]
        if stage.export is not None:
            return list(stage.export)
        return stage.settings.export_modes(self.export.modes)


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- parsing

def _check(value, where, what):
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{where} must be {what}, got {value!r}")


def _positive(value, where, optional=False):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecipeError(f"{where} must be an integer >= 1, got {value!r}")


def _type_ok(value, hint):
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool, list, dict):
        return isinstance(value, hint)
    return True


def _from_dict(cls, values, where):
    """Builds dataclass `cls` from a dict, refusing unknown keys and wrong types."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RecipeError(f"{where} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r}; valid keys: "
                          f"{', '.join(fields)}")
    kwargs = {}
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise RecipeError(f"{where}.{key}: expected {_type_name(hints[key])}, got {value!r}")
        kwargs[key] = float(value) if hints[key] is float else value
    return cls(**kwargs)


def _type_name(hint):
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _validate_benchmark(bench):
    """Checked up front: otherwise a bad device fails only after every stage has trained."""
    number_in(bench.min_seconds, 0, float("inf"), "benchmark.min_seconds", hi_open=True)
    if bench.warmup < 0:
        raise RecipeError(f"benchmark.warmup must be >= 0, got {bench.warmup}")
    if not bench.devices:
        return
    from tflite_export import benchmark  # no TensorFlow import: cheap
    try:
        profiles = benchmark.load_profiles(bench.devices_file)
    except TfcompressError as e:
        raise RecipeError(f"benchmark.devices_file: {e}") from None
    unknown = [d for d in bench.devices if d not in profiles]
    if unknown:
        raise RecipeError(f"benchmark.devices: unknown device profile {unknown[0]!r}; valid: "
                          f"{', '.join(profiles)} (add your own with benchmark.devices_file)")


def _parse_stage(item, index):
    where = f"stages[{index}]"
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError(f"{where} must be one mapping like {{prune: {{sparsity: 0.8}}}}; "
                          f"valid stages: {', '.join(stages_lib.kinds())}")
    (kind, values), = item.items()
    try:
        cls = stages_lib.get(kind)
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None
    values = dict(values or {})
    export = values.pop("export", None)
    settings = _from_dict(cls, values, f"{where}.{kind}")
    settings.validate(f"{where}.{kind}")
    if export is not None:
        _validate_modes(export, f"{where}.{kind}.export")
    return Stage(kind, settings, export)


def _validate_modes(modes, where):
    if not isinstance(modes, list) or not modes:
        raise RecipeError(f"{where} must be a non-empty list of modes: {', '.join(EXPORT_MODES)}")
    for mode in modes:
        if mode not in EXPORT_MODES:
            raise RecipeError(f"{where}: unknown mode {mode!r}; valid: {', '.join(EXPORT_MODES)}")


def recipe_from_dict(values):
    """Builds and validates a Recipe from plain data (a parsed YAML/JSON document)."""
    if not isinstance(values, dict):
        raise RecipeError(f"a recipe must be a mapping at the top level, got {type(values).__name__}")
    values = dict(values)
    sections = {"data": DataConfig, "teacher": ModelSpec, "student": ModelSpec,
                "export": ExportConfig, "benchmark": BenchmarkConfig, "ptq": PtqConfig,
                "budget": BudgetConfig}
    parsed = {name: _from_dict(cls, values.pop(name, None), name)
              for name, cls in sections.items()}
    stages = values.pop("stages", None) or []
    if not isinstance(stages, list):
        raise RecipeError(f"stages must be a list, got {stages!r}")
    recipe = _from_dict(Recipe, values, "recipe")
    for name, section in parsed.items():
        setattr(recipe, name, section)
    recipe.stages = [_parse_stage(item, i) for i, item in enumerate(stages)]
    validate(recipe)
    return recipe


def _validate_ptq(recipe):
    """int4_mixed needs a budget; the budget's numbers are in range."""
    ptq = recipe.ptq
    modes = set(recipe.export.modes)
    for stage in recipe.stages:
        modes |= set(stage.export or ())
    if "int4_mixed" in modes and ptq.max_drop is None and ptq.max_bytes is None:
        raise RecipeError("export mode int4_mixed needs a budget: set ptq.max_drop (points "
                          "below the float model, e.g. 1.0) or ptq.max_bytes")
    if ptq.max_drop is not None and (isinstance(ptq.max_drop, bool) or not isinstance(
            ptq.max_drop, (int, float)) or not 0 <= ptq.max_drop <= 100):
        raise RecipeError(f"ptq.max_drop must be points in [0, 100], got {ptq.max_drop!r}")
    if ptq.max_bytes is not None:
        _positive(ptq.max_bytes, "ptq.max_bytes")
    _positive(ptq.validation_samples, "ptq.validation_samples")


def _validate_strategy(recipe):
    """The strategy exists and every stage runs under it (checked before anything trains)."""
    from tfcompress import distribute  # no TensorFlow import at this point
    if recipe.strategy not in distribute.STRATEGIES:
        raise RecipeError(f"recipe.strategy: unknown {recipe.strategy!r}; valid: "
                          f"{', '.join(distribute.STRATEGIES)}")
    for i, stage in enumerate(recipe.stages):
        try:
            distribute.check_supported(stage.kind, recipe.strategy)
        except distribute.DistributeError as e:
            raise RecipeError(f"stages[{i}]: {e}") from None


def validate(recipe):
    """Cross-section checks; raises RecipeError."""
    if isinstance(recipe.seed, bool) or not isinstance(recipe.seed, int) or recipe.seed < 0:
        raise RecipeError(f"recipe.seed must be an integer >= 0, got {recipe.seed!r}")
    recipe.data.validate("data")
    recipe.teacher.validate("teacher")
    recipe.student.validate("student")
    _validate_modes(recipe.export.modes, "export.modes")
    _positive(recipe.export.batch_size, "export.batch_size")
    _validate_ptq(recipe)
    max_drop = recipe.budget.max_drop
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(
            max_drop, (int, float)) or not 0 <= max_drop <= 100):
        raise RecipeError(f"budget.max_drop must be points in [0, 100] (e.g. 1.0), got "
                          f"{max_drop!r}")
    _validate_strategy(recipe)
    if not isinstance(recipe.benchmark.devices, list):
        raise RecipeError("benchmark.devices must be a list of device profile names "
                          "(tfcompress bench --list-devices)")
    _positive(recipe.benchmark.runs, "benchmark.runs")
    _validate_benchmark(recipe.benchmark)
    kinds = [s.kind for s in recipe.stages]
    if not recipe.teacher.given:
        raise RecipeError("teacher: give model (a zoo name, trained by a train stage) or path "
                          "(a saved model file)")
    if recipe.teacher.model and kinds[:1] != ["train"]:
        raise RecipeError(f"teacher.model {recipe.teacher.model!r} is a zoo model with random "
                          "weights: start stages with a train stage, or give teacher.path")
    _validate_order(recipe)
    return recipe


def _validate_order(recipe):
    """Where each stage may stand: its class's POSITION, UNIQUE and NEEDS_STUDENT."""
    kinds = [s.kind for s in recipe.stages]
    classes = [type(s.settings) for s in recipe.stages]
    for i, (kind, cls) in enumerate(zip(kinds, classes)):
        if cls.POSITION == "first" and i > 0:
            raise RecipeError(f"stages: a {kind} stage may only come first ({cls.POSITION_WHY})")
    for kind, cls in zip(kinds, classes):
        if cls.NEEDS_STUDENT and not recipe.student.given:
            raise RecipeError(f"a {kind} stage needs a student: set student.model (a zoo name) "
                              "or student.path")
    for kind, cls in zip(kinds, classes):
        if cls.UNIQUE and kinds.count(kind) > 1:
            raise RecipeError(f"stages: at most one {kind} stage")
    for i, (kind, cls) in enumerate(zip(kinds, classes)):
        if cls.POSITION == "last" and i != len(kinds) - 1:
            raise RecipeError(f"stages[{i}]: {kind} must be the last stage ({cls.POSITION_WHY})")


# ----------------------------------------------------------------------------- loading

def list_recipes():
    """{name: description} of the built-in recipes."""
    out = {}
    for file in sorted(os.listdir(RECIPE_DIR)):
        if file.endswith(".yaml"):
            out[file[:-5]] = _read(os.path.join(RECIPE_DIR, file)).get("description", "")
    return out


def _read(path):
    import yaml
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path} is not a text (YAML or JSON) recipe file: byte "
                          f"{e.start} is not UTF-8") from e
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)  # safe: plain data only, never Python objects
    except (yaml.YAMLError, ValueError) as e:
        raise RecipeError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                          f"{' '.join(str(e).split())}") from e


def _apply_override(values, override):
    """KEY.PATH=VALUE (VALUE parsed as YAML) into the nested dict/list `values`."""
    import yaml
    if "=" not in override:
        raise RecipeError(f"--set {override!r}: expected KEY=VALUE, e.g. stages.0.train.epochs=1")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    if not all(keys):
        raise RecipeError(f"--set {override!r}: empty key in {path.strip()!r}; keys are joined "
                          "by single dots, e.g. stages.0.train.epochs=1")
    target = values
    for depth, key in enumerate(keys[:-1]):
        if isinstance(target, list):
            if not key.isdigit() or int(key) >= len(target):
                raise RecipeError(f"--set {path}: no list item {key!r}")
            target = target[int(key)]
        elif isinstance(target, dict):
            target = target.setdefault(key, {})
        else:
            # e.g. seed.x=1: seed is a number, so it has no keys to set.
            raise RecipeError(f"--set {path}: {'.'.join(keys[:depth])} is "
                              f"{target!r}, not a mapping or list, so it has no key {key!r}")
    last = keys[-1]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {override!r}: the value is not valid YAML "
                          f"({' '.join(str(e).split())[:200]}); write a YAML value such "
                          "as 1, 0.5, true, null, [a, b] or a quoted string") from e
    if isinstance(target, list):
        if not last.isdigit() or int(last) >= len(target):
            raise RecipeError(f"--set {path}: no list item {last!r}")
        target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise RecipeError(f"--set {path}: {'.'.join(keys[:-1])} is {target!r}, not a mapping "
                          f"or list, so it has no key {last!r}")


def load_recipe(name_or_path, overrides=()):
    """A built-in recipe by name, or a YAML/JSON file; `overrides` are KEY=VALUE strings."""
    if os.path.isfile(name_or_path):
        path = name_or_path
    elif os.path.sep not in name_or_path and not name_or_path.endswith((".yaml", ".yml", ".json")):
        path = os.path.join(RECIPE_DIR, name_or_path + ".yaml")
        if not os.path.isfile(path):
            raise RecipeError(f"no built-in recipe {name_or_path!r}; built-in: "
                              f"{', '.join(list_recipes())} (or give a YAML/JSON file)")
    elif os.path.isdir(name_or_path):
        raise RecipeError(f"recipe {name_or_path} is a folder; give a YAML or JSON recipe file")
    else:
        raise RecipeError(f"recipe file {name_or_path} does not exist")
    values = _read(path)
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    for override in overrides:
        _apply_override(values, override)
    try:
        return recipe_from_dict(values)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None
