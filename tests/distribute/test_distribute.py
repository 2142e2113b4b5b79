"""tfcompress.distribute without training: support matrix, TF_CONFIG, chief, batch split,
the recipe key and flag, the README's table, and the local launcher."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tfcompress import config as recipe_config
from tfcompress import distribute, launch, stages
from tfcompress.distribute import DistributeError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]},
               "task": {"type": "worker", "index": 0}}


def _config(**task):
    return dict(TWO_WORKERS, task={"type": "worker", "index": 0, **task})


# ----------------------------------------------------------------------------- support matrix

def test_support_matrix_has_a_verdict_for_every_stage_and_strategy():
    matrix = distribute.support_matrix()
    assert set(matrix) == set(stages.kinds()) == {
        "train", "distill", "prune", "channel_prune", "lowrank", "cluster", "qat"}
    for stage, row in matrix.items():
        assert set(row) == set(distribute.STRATEGIES)
        assert row["default"] == row["mirrored"] == row["multi_worker"] == "works", stage
        assert row["parameter_server"] == "fails with message", stage


@pytest.mark.parametrize("stage", stages.kinds())
def test_parameter_server_fails_early_naming_the_stage_and_the_alternative(stage):
    with pytest.raises(DistributeError) as info:
        distribute.check_supported(stage, "parameter_server")
    message = str(info.value)
    assert f"stage {stage!r} cannot run under strategy 'parameter_server'" in message
    assert "use strategy 'multi_worker'" in message and "'mirrored' on one machine" in message
    assert "NotImplementedError" in message  # the Keras input-path evidence
    if stage == "prune":  # the measured TFMOT failure
        assert "0% sparsity instead of 50%" in message


@pytest.mark.parametrize("strategy", ["default", "mirrored", "multi_worker"])
@pytest.mark.parametrize("stage", stages.kinds())
def test_supported_cells_pass_the_check(stage, strategy):
    distribute.check_supported(stage, strategy)  # no exception


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(DistributeError, match="unknown strategy 'horovod'; valid: default, "
                                              "mirrored, multi_worker, parameter_server"):
        distribute.check_supported("train", "horovod")
    with pytest.raises(DistributeError, match="unknown stage 'finetune'; valid: train, distill"):
        distribute.check_supported("finetune", "default")


def test_readme_support_matrix_is_the_code_s_matrix():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Distributed training"):]
    header = next(line for line in section.splitlines() if line.startswith("| stage |"))
    columns = [c.strip().strip("`") for c in header.strip("|").split("|")][1:]
    assert columns == list(distribute.STRATEGIES)
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == len(columns) + 1:
            rows[cells[0].strip("`")] = [re.sub(r"\s*\(.*\)$", "", c) for c in cells[1:]]
    expected = distribute.support_matrix()
    assert set(rows) == set(expected)
    for stage, verdicts in rows.items():
        assert verdicts == [expected[stage][s] for s in columns], stage


# ----------------------------------------------------------------------------- TF_CONFIG

def test_tf_config_parses_and_names_the_chief():
    assert distribute.parse_tf_config("") is None
    config = distribute.parse_tf_config(json.dumps(TWO_WORKERS))
    assert config["task"] == {"type": "worker", "index": 0}
    assert distribute.is_chief(_config(index=0)) and not distribute.is_chief(_config(index=1))
    with_chief = {"cluster": {"chief": ["h:1"], "worker": ["h:2"]},
                  "task": {"type": "worker", "index": 0}}
    assert not distribute.is_chief(with_chief)  # worker 0 is not the chief when one is named
    assert distribute.is_chief(dict(with_chief, task={"type": "chief", "index": 0}))
    assert distribute.task_label(_config(index=1)) == "worker 1 of 2"
    assert distribute.task_label(_config(index=0)) == "worker 0 of 2 (chief)"


def test_no_tf_config_means_one_process_that_is_the_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief() and distribute.task_label() == ""
    assert distribute.write_dir("runs/x") == "runs/x"


@pytest.mark.parametrize("value, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[1, 2]", "TF_CONFIG must be a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG.cluster must map task types"),
    ('{"cluster": {"trainer": ["h:1"]}, "task": {"type": "trainer", "index": 0}}',
     "unknown task type 'trainer'"),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG.cluster.worker must be a non-empty list"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     "'localhost' is not a host:port address"),
    ('{"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}}',
     "lists the same host:port twice"),
    ('{"cluster": {"worker": ["h:1"]}}', "TF_CONFIG.task must be"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
     "TF_CONFIG.task.type 'chief' is not in the cluster"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
     r"TF_CONFIG.task.index must be an integer in \[0, 1\]"),
])
def test_bad_tf_config_is_one_clear_error(value, message):
    with pytest.raises(DistributeError, match=message):
        distribute.parse_tf_config(value)


def test_strategy_and_tf_config_must_agree_before_tensorflow_starts(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributeError, match="'multi_worker' needs TF_CONFIG.*tfcompress.launch"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps(TWO_WORKERS))
    with pytest.raises(DistributeError, match="cluster of 2 tasks but the strategy is 'mirrored'"):
        distribute.make_strategy("mirrored")
    ps = {"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(ps))
    with pytest.raises(DistributeError, match="has ps tasks, which MultiWorkerMirroredStrategy"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(DistributeError, match="stage 'train' cannot run under strategy "
                                              "'parameter_server'"):
        distribute.make_strategy("parameter_server")


def test_other_workers_write_to_a_throwaway_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", json.dumps(_config(index=1)))
    out = distribute.write_dir(str(tmp_path / "run"))
    assert out != str(tmp_path / "run") and os.path.isdir(out)
    assert os.path.basename(out).startswith("tfcompress-worker-1-")
    assert distribute.write_dir(str(tmp_path / "run")) == out  # one folder per path
    assert distribute.write_dir(str(tmp_path / "other")) != out
    monkeypatch.setenv("TF_CONFIG", json.dumps(_config(index=0)))
    assert distribute.write_dir(str(tmp_path / "run")) == str(tmp_path / "run")


# ----------------------------------------------------------------------------- batch sizes

class _FakeStrategy:
    def __init__(self, replicas):
        self.num_replicas_in_sync = replicas


def test_batch_size_is_global_and_must_split_evenly_over_the_replicas():
    assert distribute.per_replica_batch_size(128, None) == 128
    assert distribute.per_replica_batch_size(128, _FakeStrategy(2)) == 64
    assert distribute.per_replica_batch_size(96, _FakeStrategy(3)) == 32
    with pytest.raises(DistributeError, match=r"batch_size 100 is the global batch .* must "
                                              r"divide by the 3 replicas .* use e.g. 99"):
        distribute.per_replica_batch_size(100, _FakeStrategy(3))


# ----------------------------------------------------------------------------- recipe and flags

def _recipe(**values):
    base = {"teacher": {"model": "small_cnn"}, "student": {"model": "small_cnn"},
            "stages": [{"train": {"epochs": 1}}, {"distill": {"epochs": 1}},
                       {"prune": {"epochs": 1}}, {"qat": {"epochs": 1}}],
            "benchmark": {"devices": []}}
    return recipe_config.recipe_from_dict(dict(base, **values))


def test_recipe_strategy_key_is_validated_up_front():
    assert _recipe().strategy == "default"
    assert _recipe(strategy="multi_worker").to_dict()["strategy"] == "multi_worker"
    with pytest.raises(recipe_config.RecipeError, match="recipe.strategy: unknown 'tpu'; valid"):
        _recipe(strategy="tpu")
    with pytest.raises(recipe_config.RecipeError,
                       match="stages\\[0\\]: stage 'train' cannot run under strategy "
                             "'parameter_server'.*use strategy 'multi_worker'"):
        _recipe(strategy="parameter_server")


def test_strategy_is_not_part_of_the_stage_hash():
    # A run may resume, or reuse finished stages, under another strategy: the global
    # batch and the steps are the same (results within the README's tolerances).
    assert _recipe().stage_hash(2) == _recipe(strategy="mirrored").stage_hash(2)


def test_training_config_refuses_an_unsupported_phase_before_training():
    from models.train_lib import TrainConfig
    TrainConfig(strategy="multi_worker", prune_sparsity=0.5, qat=True).validate()
    with pytest.raises(DistributeError, match="stage 'train' cannot run under strategy "
                                              "'parameter_server'"):
        TrainConfig(strategy="parameter_server").validate()
    with pytest.raises(ValueError, match="unknown strategy 'ring'"):
        TrainConfig(strategy="ring").validate()


def test_training_binary_refuses_parameter_server_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "models.train", "--strategy=parameter_server",
                           f"--model_dir={tmp_path}/run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "stage 'train' cannot run under strategy 'parameter_server'" in errors[0]
    assert "use strategy 'multi_worker'" in errors[0]
    assert not os.path.exists(tmp_path / "run")  # refused before anything was written


# ----------------------------------------------------------------------------- launcher

_ECHO = ("import json, os; c = json.loads(os.environ['TF_CONFIG']); "
         "print(c['task']['index'], ','.join(c['cluster']['worker']))")


def test_launcher_gives_each_worker_its_tf_config_on_loopback_ports(capfd):
    code, message = launch.launch([sys.executable, "-c", _ECHO], num_workers=3)
    assert code == 0 and message == "all 3 workers finished"
    out = capfd.readouterr().out
    lines = sorted(line for line in out.splitlines() if line.startswith("[worker "))
    assert [line.split("] ")[0] for line in lines] == ["[worker 0", "[worker 1", "[worker 2"]
    clusters = {line.split()[-1] for line in lines}
    assert len(clusters) == 1  # every worker sees the same cluster
    addresses = clusters.pop().split(",")
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [line.split()[2] for line in lines] == ["0", "1", "2"]  # each its own index


def test_launcher_stops_the_others_when_a_worker_fails(capfd):
    script = ("import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']"
              "['index']; sys.exit(3) if i == 1 else time.sleep(120)")
    start = time.time()
    code, message = launch.launch([sys.executable, "-c", script], num_workers=3, grace=5)
    assert code == 1
    assert message.startswith("worker 1 exited with status 3 and the others were stopped")
    assert time.time() - start < 60  # the sleeping workers were stopped, not waited for


def test_launcher_binary_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "tfcompress.launch", "--num_workers=2", "--",
                         sys.executable, "-c", "print('hello')"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "[worker 0] hello" in ok.stdout and "[worker 1] hello" in ok.stdout
    assert ok.stdout.strip().splitlines()[-1] == "all 2 workers finished"
    bad = subprocess.run([sys.executable, "-m", "tfcompress.launch", "--num_workers=2", "--",
                          sys.executable, "-c", "import sys; sys.exit(4)"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: worker ")
    empty = subprocess.run([sys.executable, "-m", "tfcompress.launch"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "give the command to run after --" in empty.stderr


def test_outside_strategy_returns_the_result_and_raises_the_error():
    assert distribute.outside_strategy(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError, match="boom"):
        distribute.outside_strategy(lambda: {}["boom"])
