"""Compression training on `tf.distribute`: strategies by name, TF_CONFIG, the chief, support.

A strategy is chosen by name (`--strategy` of `models/train.py`, `strategy:` in
a recipe):

    default           one device (TensorFlow's default strategy)
    mirrored          `MirroredStrategy` over all local GPUs, else all local
                      (logical) CPU devices; `TFCOMPRESS_CPU_DEVICES=N` splits
                      the CPU into N logical devices (for trying it without a
                      GPU: it shows the mechanics, it is not faster)
    multi_worker      `MultiWorkerMirroredStrategy`, the cluster described by
                      the `TF_CONFIG` environment variable (on one machine:
                      `python -m tfcompress.launch --num_workers=2 -- CMD`)
    parameter_server  refused for every stage, with the reason (each stage's
                      REFUSED, built by `parameter_server_refusal`)

Batch sizes in recipes and flags are GLOBAL: the batch of one optimizer step,
split evenly over the replicas (`per_replica_batch_size`), so a run has the
same steps, schedules and pruning steps under every strategy. The global
batch must divide by the number of replicas.

Under `multi_worker` every worker runs the same program; only the chief
(`is_chief`) writes the results. The others write to a throwaway temporary
folder (`write_dir`), as Keras's multi-worker guide recommends, because saving
may run collective ops that every worker must join. `BackupAndRestore` keeps
its own scheme (the chief's checkpoint in `backup/chief`, read by all), so the
output folder must be on a filesystem every worker sees for a killed run to
resume; a fresh run needs only the chief's.

Example:
    from tfcompress import distribute
    distribute.check_supported("prune", "multi_worker")      # raises if not supported
    strategy = distribute.make_strategy("mirrored")
    per_replica = distribute.per_replica_batch_size(128, strategy)
    with strategy.scope():
        model = distribute.in_scope(model, strategy)          # rebuilt in the scope if needed
        ...
"""

import atexit
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading

from tfcompress.errors import TfcompressError

__all__ = ["DistributeError", "STRATEGIES", "parameter_server_refusal", "support_matrix",
           "check_supported", "parse_tf_config", "is_chief", "task_label", "make_strategy",
           "strategy_name", "num_replicas", "per_replica_batch_size", "describe", "in_scope",
           "write_dir", "sync_from_chief", "outside_strategy", "stage_scope"]

STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server")
CPU_DEVICES_ENV = "TFCOMPRESS_CPU_DEVICES"


class DistributeError(TfcompressError, ValueError):
    """A strategy, TF_CONFIG or batch size that cannot work; the message says the fix."""


# ----------------------------------------------------------------------------- support

# Measured here (TF 2.21, tf_keras 2.21, TFMOT 0.8.1; tests/distribute back every cell).
_PS_INPUT = (
    "Keras's fit under ParameterServerStrategy takes only a DatasetCreator, tensors or numpy "
    "arrays with steps_per_epoch, not the keras.utils.Sequence that tfcompress trains from for "
    "its deterministic, resumable epochs (tf_keras raises NotImplementedError: \"Only "
    "`tf.keras.utils.experimental.DatasetCreator`, `tf.Tensor`, numpy arrays and pandas "
    "dataframes are supported types at this time.\"), and its asynchronous updates cannot "
    "reproduce a single-process run")
_PS_ALTERNATIVE = ("use strategy 'multi_worker' (synchronous MultiWorkerMirroredStrategy: the "
                   "same TF_CONFIG with only 'worker' tasks, or a 'chief' and 'worker' tasks) "
                   "across machines, or 'mirrored' on one machine")
PS_PRUNE = (
    "TFMOT 0.8.1's pruning wrapper updates its step counter and masks with unsynchronized "
    "read-modify-write ops: under ParameterServerStrategy (2 workers, 24 steps) updates were "
    "lost, the layers' step counters ended at 15-21, so the schedule lags the optimizer, and "
    "one run ended at 0% sparsity instead of 50%, silently; also, ")
PS_TFMOT = (
    "TFMOT's {what} variables are updated by each worker without coordination (not verified "
    "under asynchronous training); also, ")

def parameter_server_refusal(why=""):
    """(why not, what to use instead) of a stage under parameter_server: `why` (PS_PRUNE,
    PS_TFMOT...) before the reason every stage shares. Stages put it in their REFUSED."""
    return (why + _PS_INPUT, _PS_ALTERNATIVE)


def _refusal(stage, strategy):
    """None where stage `stage` runs under `strategy`, else (why not, instead): the
    stage's registered REFUSED (tfcompress.stages)."""
    from tfcompress import stages
    try:
        return stages.get(stage).REFUSED.get(strategy)
    except stages.RecipeError:
        raise DistributeError(f"unknown stage {stage!r}; valid: "
                              f"{', '.join(stages.kinds())}") from None


def support_matrix():
    """{stage: {strategy: "works" | "fails with message"}}, as in the README's table."""
    from tfcompress import stages
    return {stage: {strategy: "works" if _refusal(stage, strategy) is None
                    else "fails with message" for strategy in STRATEGIES}
            for stage in stages.kinds()}


def _check_name(strategy):
    if strategy not in STRATEGIES:
        raise DistributeError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def check_supported(stage, strategy):
    """Raises DistributeError, naming the stage and the alternative, if `stage` cannot run
    under `strategy` (a name from STRATEGIES).

    Example:
        check_supported("qat", "multi_worker")   # fine
        check_supported("prune", "parameter_server")
        # DistributeError: stage 'prune' cannot run under strategy 'parameter_server': ...
    """
    _check_name(strategy)
    problem = _refusal(stage, strategy)
    if problem is not None:
        why, alternative = problem
        raise DistributeError(f"stage {stage!r} cannot run under strategy {strategy!r}: {why}. "
                              f"For stage {stage!r}, {alternative}")


# ----------------------------------------------------------------------------- TF_CONFIG

_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
_ADDRESS = re.compile(r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")


def parse_tf_config(value=None):
    """TF_CONFIG (the environment variable, or `value`) as a validated dict; None when unset.

    Raises:
        DistributeError: not JSON, no cluster, a task type or index not in the
            cluster, an address that is not host:port; the message names the key.
    """
    raw = os.environ.get("TF_CONFIG", "") if value is None else value
    if isinstance(raw, dict):
        config = raw
    else:
        if not raw.strip():
            return None
        try:
            config = json.loads(raw)
        except ValueError as e:
            raise DistributeError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. "
                                  '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                                  '"task": {"type": "worker", "index": 0}}') from None
    if not isinstance(config, dict):
        raise DistributeError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}")
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError("TF_CONFIG.cluster must map task types (chief, worker, ps) to "
                              "lists of host:port addresses")
    for kind, addresses in cluster.items():
        if kind not in _TASK_TYPES:
            raise DistributeError(f"TF_CONFIG.cluster: unknown task type {kind!r}; valid: "
                                  f"{', '.join(_TASK_TYPES)}")
        if not isinstance(addresses, list) or not addresses:
            raise DistributeError(f"TF_CONFIG.cluster.{kind} must be a non-empty list of "
                                  f"host:port addresses, got {addresses!r}")
        for address in addresses:
            if not isinstance(address, str) or not _ADDRESS.match(address):
                raise DistributeError(f"TF_CONFIG.cluster.{kind}: {address!r} is not a "
                                      "host:port address")
    every = [a for addresses in cluster.values() for a in addresses]
    if len(set(every)) != len(every):
        raise DistributeError("TF_CONFIG.cluster lists the same host:port twice")
    if len(cluster.get("chief", [])) > 1:
        raise DistributeError("TF_CONFIG.cluster.chief must hold one address")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError('TF_CONFIG.task must be {"type": ..., "index": ...}: which '
                              "cluster member this process is")
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise DistributeError(f"TF_CONFIG.task.type {kind!r} is not in the cluster "
                              f"({', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or \
            not 0 <= index < len(cluster[kind]):
        raise DistributeError(f"TF_CONFIG.task.index must be an integer in "
                              f"[0, {len(cluster[kind]) - 1}] for the {len(cluster[kind])} "
                              f"{kind} task(s), got {index!r}")
    return config


def _check_tf_config_for(strategy, config):
    tasks = sum(len(a) for a in config["cluster"].values()) if config else 0
    if strategy == "multi_worker":
        if config is None:
            raise DistributeError(
                "strategy 'multi_worker' needs TF_CONFIG, the cluster description; on one "
                "machine start the workers with `python -m tfcompress.launch "
                "--num_workers=2 -- COMMAND`, which sets it for each worker")
        extra = sorted(set(config["cluster"]) - {"chief", "worker"})
        if extra:
            raise DistributeError(
                f"TF_CONFIG.cluster has {', '.join(extra)} tasks, which "
                "MultiWorkerMirroredStrategy does not use (a 'ps' cluster is for ParameterServerStrategy, which tfcompress "
                "refuses); list only 'chief' and 'worker' tasks")
        if config["task"]["type"] not in ("chief", "worker"):
            raise DistributeError(f"TF_CONFIG.task.type must be 'chief' or 'worker' under "
                                  f"strategy 'multi_worker', got {config['task']['type']!r}")
    elif tasks > 1:
        raise DistributeError(
            f"TF_CONFIG describes a cluster of {tasks} tasks but the strategy is {strategy!r}: "
            "each process would train alone and overwrite the others' files; use strategy "
            "'multi_worker', or unset TF_CONFIG")


def is_chief(config=None):
    """True for the process that writes results: no cluster, the 'chief' task, or
    worker 0 of a cluster without a chief (Keras's rule)."""
    config = parse_tf_config() if config is None else parse_tf_config(config)
    if config is None:
        return True
    kind, index = config["task"]["type"], config["task"]["index"]
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in config["cluster"]


def task_label(config=None):
    """"worker 1 of 2" for a cluster member, "" without TF_CONFIG."""
    config = parse_tf_config() if config is None else parse_tf_config(config)
    if config is None:
        return ""
    kind, index = config["task"]["type"], config["task"]["index"]
    workers = len(config["cluster"].get("worker", [])) + len(config["cluster"].get("chief", []))
    return f"{kind} {index} of {workers}" + (" (chief)" if is_chief(config) else "")


# ----------------------------------------------------------------------------- strategies

def _split_cpu(count):
    from tfcompress.keras import tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as e:
        raise DistributeError(
            f"{CPU_DEVICES_ENV}={count}: TensorFlow has already started and its devices cannot "
            f"change ({e}); set it in the environment before the program starts") from None


def make_strategy(name):
    """The `tf.distribute.Strategy` called `name` (see the module docstring).

    Raises:
        DistributeError: an unknown name, 'parameter_server', or TF_CONFIG that
            does not fit the strategy (missing for 'multi_worker', a cluster
            for 'default' or 'mirrored').
    """
    _check_name(name)
    if name == "parameter_server":
        check_supported("train", name)  # raises, with the reason
    _check_tf_config_for(name, parse_tf_config())
    from tfcompress.keras import tf
    if name == "default":
        return tf.distribute.get_strategy()
    # One strategy object per name and process: a second MirroredStrategy in the
    # same process reused the first one's collective instance keys ("Shape
    # mismatch in the collective instance 100"), and MultiWorkerMirroredStrategy
    # may be created only once.
    if name not in _STRATEGIES:
        _STRATEGIES[name] = _new_strategy(name)
    return _STRATEGIES[name]


_STRATEGIES = {}


def _new_strategy(name):
    from tfcompress.keras import tf
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    cpus = os.environ.get(CPU_DEVICES_ENV)
    if cpus:
        if not cpus.isdigit() or int(cpus) < 1:
            raise DistributeError(f"{CPU_DEVICES_ENV} must be a whole number >= 1, got {cpus!r}")
        _split_cpu(int(cpus))
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def strategy_name(strategy):
    """The STRATEGIES name of a strategy object ("default" for None or TF's default)."""
    if strategy is None:
        return "default"
    from tfcompress.keras import tf
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, (tf.distribute.ParameterServerStrategy,
                             tf.distribute.experimental.ParameterServerStrategy)):
        return "parameter_server"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    # TensorFlow's default strategy (one device, no scope) has no public class.
    name = type(strategy).__name__
    return "default" if name == "_DefaultDistributionStrategy" else name


def _is_distributed(strategy):
    return strategy_name(strategy) != "default"


def num_replicas(strategy):
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def per_replica_batch_size(global_batch_size, strategy):
    """The batch each replica computes; `global_batch_size` must divide evenly.

    Raises:
        DistributeError: the global batch does not split evenly over the replicas.
    """
    replicas = num_replicas(strategy)
    if global_batch_size % replicas:
        raise DistributeError(
            f"batch_size {global_batch_size} is the global batch (all replicas together) and "
            f"must divide by the {replicas} replicas of strategy {strategy_name(strategy)!r}; "
            f"use e.g. {max(replicas, global_batch_size // replicas * replicas)}")
    return global_batch_size // replicas


def describe(strategy, global_batch_size=None):
    """One log line: the strategy, its replicas, the worker, the global and per-replica batch."""
    name = strategy_name(strategy)
    replicas = num_replicas(strategy)
    line = f"strategy {name}: {replicas} replica{'s' if replicas != 1 else ''}"
    if name == "mirrored":
        line += " on " + ", ".join(d.split("device:")[-1] for d in strategy.extended.worker_devices)
    label = task_label() if name == "multi_worker" else ""
    if label:
        line += f"; this process is {label}"
    if global_batch_size is not None:
        line += (f"; batch_size {global_batch_size} is the global batch = "
                 f"{per_replica_batch_size(global_batch_size, strategy)} per replica x {replicas}")
    return line


# ----------------------------------------------------------------------------- models

def _created_in_scope(model, strategy):
    return all(strategy.extended.variable_created_in_scope(v) for v in model.variables)


def in_scope(model, strategy):
    """`model` with its variables created in `strategy`'s scope: itself if they already
    are, else a copy (clone_model + set_weights) made inside the scope.

    Keras refuses to compile or fit a model whose variables were made outside
    the strategy's scope, and a stage's input model usually was (loaded from
    the previous stage's file, or built before the strategy existed).

    Raises:
        DistributeError: a model that cannot be cloned (a custom layer without
            get_config); build or load it inside `strategy.scope()` instead.
    """
    if strategy is None or not _is_distributed(strategy) or _created_in_scope(model, strategy):
        return model
    from tfcompress.keras import keras
    with strategy.scope():
        try:
            copy = keras.models.clone_model(model)
        except (NotImplementedError, ValueError, TypeError) as e:
            raise DistributeError(
                f"cannot rebuild model {model.name!r} inside the {strategy_name(strategy)} "
                f"strategy's scope ({e}); build or load it inside strategy.scope()") from None
        copy.set_weights(model.get_weights())
    return copy


def outside_strategy(fn, *args, **kwargs):
    """Runs `fn(*args, **kwargs)` with no strategy in scope and returns its result.

    For work that must see plain variables, such as gradients with a
    `GradientTape` outside `fit` (channel pruning's Taylor importance: under
    MirroredStrategy `tape.watch` raises "DistributedVariable.handle is not
    available outside the replica context"). TensorFlow keeps the strategy
    scope per thread, so a helper thread starts with none; `fn` runs there and
    the caller waits (nothing runs concurrently).
    """
    result = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    thread = threading.Thread(target=run, name="tfcompress-outside-strategy")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


@contextlib.contextmanager
def stage_scope(stage, strategy, global_batch_size=None, log=None):
    """Checks that `stage` runs under `strategy`, logs the batch split, enters the scope.

    A no-op context for `strategy=None` or the default strategy (single-process
    code paths unchanged).
    """
    if strategy is None or not _is_distributed(strategy):
        yield
        return
    check_supported(stage, strategy_name(strategy))
    if global_batch_size is not None:
        line = describe(strategy, global_batch_size)
        if log is not None:
            log(f"  {line}")
    with strategy.scope():
        yield


# ----------------------------------------------------------------------------- chief only

_TEMP_DIRS = {}
_TEMP_LOCK = threading.Lock()


def _remove_temp_dirs():
    for path in list(_TEMP_DIRS.values()):
        shutil.rmtree(path, ignore_errors=True)
    _TEMP_DIRS.clear()


def write_dir(path, config=None):
    """Where this process writes what would go to `path`: `path` itself on the chief,
    else a throwaway temporary folder (one per path, removed when the process exits).

    Example:
        out = write_dir(model_dir)             # the chief: model_dir; others: /tmp/...
        save_model(model, os.path.join(out, "model.keras"))
    """
    if is_chief(config):
        return path
    with _TEMP_LOCK:
        key = os.path.abspath(path)
        if key not in _TEMP_DIRS:
            if not _TEMP_DIRS:
                atexit.register(_remove_temp_dirs)
            label = re.sub(r"\W+", "-", task_label(config).split(" of ")[0])
            _TEMP_DIRS[key] = tempfile.mkdtemp(prefix=f"tfcompress-{label}-")
        return _TEMP_DIRS[key]


_SYNC_FUNCTIONS = {}


def sync_from_chief(strategy, value=0):
    """The chief's `value` (an integer) on every worker; also a barrier.

    Under 'multi_worker' every worker must call it at the same point: it is a
    collective all-reduce in which only the first replica (on the chief)
    contributes. Elsewhere it returns `value` at once.
    """
    if strategy is None or strategy_name(strategy) != "multi_worker":
        return int(value)
    from tfcompress.keras import tf
    sync = _SYNC_FUNCTIONS.get(id(strategy))
    if sync is None:
        def contribute(v):
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
            return tf.where(first, v, tf.zeros_like(v))

        # One traced function per strategy: strategy.run called eagerly would trace anew
        # on every call.
        @tf.function
        def sync(v):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute, (v,)),
                                   axis=None)

        _SYNC_FUNCTIONS[id(strategy)] = sync
    return int(sync(tf.constant(int(value), tf.int64)).numpy())
