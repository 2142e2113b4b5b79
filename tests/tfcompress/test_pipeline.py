"""The pipeline on tiny recipes: stages, variants, report, reruns, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfcompress import config, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = {
    "name": "tiny",
    "data": {"dataset": "fashion_mnist", "max_train_samples": 2048, "eval_samples": 300,
             "calibration_samples": 20},
    "teacher": {"model": "small_cnn", "options": {"width": 4}},
    "stages": [{"train": {"epochs": 1}}, {"prune": {"sparsity": 0.5, "epochs": 3}}],
    "export": {"modes": ["float32", "int8_full"]},
    "benchmark": {"devices": ["host-1t", "ethos-u55-128"], "runs": 5, "min_seconds": 0.05,
                  "warmup": 1},
    "budget": {"max_drop": 100.0},
}


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fashion_mnist):
    out = str(tmp_path_factory.mktemp("tiny"))
    lines = []
    report = pipeline.run(config.recipe_from_dict(TINY), out, log=lines.append, verbose=0)
    return out, report, lines


def _rows(report):
    return [(v["stage"], v["mode"], v["file_bytes"], v["nonzero_parameters"], v["parameters"])
            for v in report["variants"]]


def test_every_stage_writes_model_metrics_manifest_and_variants(tiny_run):
    out, report, lines = tiny_run
    for name in ("01-train", "02-prune"):
        for file in ("model.keras", "metrics.json", "manifest.json", "variants.json"):
            assert os.path.isfile(os.path.join(out, name, file)), (name, file)
        assert not os.path.exists(os.path.join(out, name, "pending.json"))
        assert not os.path.exists(os.path.join(out, name, "backup"))
    assert [(v["stage"], v["mode"]) for v in report["variants"]] == [
        ("01-train", "float32"), ("01-train", "int8_full"),
        ("02-prune", "float32"), ("02-prune", "int8_full")]
    assert any("[2/2] 02-prune: finished" in line for line in lines)


def test_report_rows_are_measured(tiny_run):
    out, report, _ = tiny_run
    rows = {(v["stage"], v["mode"]): v for v in report["variants"]}
    base = rows[("01-train", "float32")]
    assert report["baseline"]["stage"] == "01-train" and base["delta_points"] == 0
    for v in rows.values():
        assert v["eval_samples"] == 300 and 0.1 < v["top1"] <= 1.0  # above chance
        assert v["file_bytes"] == os.path.getsize(v["file"])
        assert v["compression"] == pytest.approx(base["gzip_bytes"] / v["gzip_bytes"], rel=0.01)
        assert v["delta_points"] == pytest.approx(100 * (v["top1"] - base["top1"]), abs=0.01)
    for v in rows.values():  # timed in a child process on the recipe's device profile
        lat = v["latency"]["host-1t"]
        assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] and lat["peak_rss_mb"] > 0
    for (stage, mode), v in rows.items():  # Vela's estimate for the NPU profile
        npu = v["latency"]["ethos-u55-128"]
        assert npu["kind"] == "npu"
        if mode == "float32":
            assert npu["not_applicable"].startswith("not for this NPU") and "cycles" not in npu
        else:
            assert npu["cycles"] > 0 and npu["sram_kib"] > 0 and npu["cpu_ops"] == 0
    assert report["pareto"]["npu_device"] == "ethos-u55-128"
    assert {report["variants"][i]["mode"] for i in report["pareto"]["npu_cycles"]} == \
        {"int8_full"}
    # int8 weights take a quarter of the bytes; pruning halves the non-zero weights.
    assert rows[("01-train", "int8_full")]["file_bytes"] < 0.5 * base["file_bytes"]
    assert rows[("01-train", "int8_full")]["edgetpu"]["compatible"]
    assert not base["edgetpu"]["compatible"]
    pruned = rows[("02-prune", "float32")]
    assert 0.45 < 1 - pruned["nonzero_parameters"] / pruned["parameters"] < 0.6
    assert pruned["gzip_bytes"] < base["gzip_bytes"]
    # The Pareto front is non-dominated.
    front = report["pareto"]["gzip_bytes"]
    for i in front:
        vi = report["variants"][i]
        assert not any(v["gzip_bytes"] < vi["gzip_bytes"] and v["top1"] > vi["top1"]
                       for v in report["variants"])


def test_report_files_are_written(tiny_run):
    out, report, _ = tiny_run
    on_disk = json.load(open(os.path.join(out, "report.json")))
    assert on_disk["schema"] == "tfcompress.report/1"
    assert _rows(on_disk) == _rows(report)
    assert on_disk["environment"]["versions"]["tensorflow"].startswith("2.21")
    assert on_disk["recipe"]["stages"][1]["prune"]["sparsity"] == 0.5
    markdown = open(os.path.join(out, "report.md")).read()
    assert "| 02-prune | int8_full |" in markdown and "## Environment" in markdown
    assert "| ethos-u55-128 cycles (Vela) | ethos-u55-128 SRAM KiB |" in markdown
    assert "| not for NPU | - |" in markdown
    assert "Pareto front, accuracy against ethos-u55-128 cycles" in markdown
    with open(os.path.join(out, "pareto.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Every variant is within a 100-point budget: the smallest file is recommended first.
    smallest = min(report["variants"], key=lambda v: (v["gzip_bytes"], -v["top1"]))
    picked = on_disk["recommendation"]["smallest"]
    assert (picked["stage"], picked["mode"]) == (smallest["stage"], smallest["mode"])
    assert set(on_disk["recommendation"]["fastest"]) == {"host-1t", "ethos-u55-128"}
    assert markdown.index("Recommended, the smallest file") < markdown.index("| stage |")


def test_rerun_skips_finished_stages_and_a_change_reruns_only_downstream(tiny_run):
    out, report, _ = tiny_run
    lines = []
    again = pipeline.run(config.recipe_from_dict(TINY), out, log=lines.append, verbose=0)
    assert sum("done in an earlier run" in line for line in lines) == 2
    assert _rows(again) == _rows(report)
    assert [v["top1"] for v in again["variants"]] == [v["top1"] for v in report["variants"]]
    changed = json.loads(json.dumps(TINY))
    changed["stages"][1]["prune"]["sparsity"] = 0.7
    lines = []
    third = pipeline.run(config.recipe_from_dict(changed), out, log=lines.append, verbose=0)
    assert any("01-train: done in an earlier run" in line for line in lines)
    assert any("02-prune: running" in line for line in lines)
    pruned = [v for v in third["variants"] if v["stage"] == "02-prune"][0]
    assert 0.65 < 1 - pruned["nonzero_parameters"] / pruned["parameters"] < 0.8


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "tfcompress.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kwargs)


def test_sigkill_during_a_training_stage_resumes_it(tmp_path, tiny_run):
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tfcompress.cli", "run", "--recipe",
                             str(recipe), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "02-prune" / "backup" / "chief" / "checkpoint"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "the prune stage never wrote a backup"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "02-prune" / "manifest.json").exists()
    assert not (out / "report.json").exists()
    result = _cli("run", "--recipe", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "01-train: done in an earlier run" in result.stdout
    assert "resuming from the backup" in result.stdout
    resumed = json.load(open(out / "report.json"))
    _, uninterrupted, _ = tiny_run
    # Same rows: stages, formats, file sizes, non-zero weights. Accuracies are close but
    # not bit-equal: the resumed epochs shuffle and drop out with fresh random state.
    assert _rows(resumed) == _rows(uninterrupted)
    for a, b in zip(resumed["variants"], uninterrupted["variants"]):
        assert abs(a["top1"] - b["top1"]) < 0.1


@pytest.mark.parametrize("args, message", [
    (["--set", "stages.0.train.epoch=1"], "stages[0].train: unknown key 'epoch'; valid keys:"),
    (["--set", "stages.1.prune.sparsity=1.5"], "stages[1].prune.sparsity must be in (0, 1)"),
    (["--set", "teacher.model=null", "--set", "teacher.path=/no/model.keras"],
     "teacher.path /no/model.keras: no such file or directory"),
    (["--set", "data.dataset=npz:/no/data.npz"], "/no/data.npz: no such npz file"),
])
def test_cli_bad_recipes_give_one_line(tmp_path, capsys, args, message):
    from tfcompress import cli
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps(TINY))
    code = cli.main(["run", "--recipe", str(recipe), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], err[-1500:]
    assert "Traceback" not in err


def test_report_command_rerenders(tiny_run, tmp_path):
    out, report, _ = tiny_run
    os.remove(os.path.join(out, "report.md"))
    result = _cli("report", out)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "| 01-train | float32 |" in result.stdout
    assert os.path.isfile(os.path.join(out, "report.md"))
    result = _cli("report", str(tmp_path))
    assert result.returncode == 1 and "holds no pipeline run" in result.stderr


def test_pretrained_recipe_on_the_mlperf_ds_cnn(shared_dir, tmp_path):
    root = os.path.join(shared_dir, "data", "mlperf_tiny_kws")
    recipe = config.load_recipe("pretrained", overrides=[
        f"teacher.path={os.path.join(root, 'ds_cnn_savedmodel')}",
        f"data.dataset=npz:{os.path.join(root, 'kws01_test.npz')}",
        # 200 clips calibrate, the other 800 are the test split.
        "data.test_fraction=0.8", "export.modes=[float32, int8_full]", "benchmark.devices=[]"])
    report = pipeline.run(recipe, str(tmp_path), log=_quiet, verbose=0)
    rows = {v["mode"]: v for v in report["variants"]}
    assert set(rows) == {"float32", "int8_full"}
    assert all(v["stage"] == "00-input" and v["eval_samples"] == 800 for v in rows.values())
    # The MLPerf reference reaches 90.2% on all 1,000 clips (README of the data folder).
    assert rows["float32"]["top1"] > 0.88 and rows["int8_full"]["top1"] > 0.88
    assert rows["int8_full"]["edgetpu"]["compatible"]
    assert rows["int8_full"]["file_bytes"] < 0.55 * rows["float32"]["file_bytes"]
    print(f"\nDS-CNN via the pretrained recipe: float32 {rows['float32']['top1']:.1%}, "
          f"int8_full {rows['int8_full']['top1']:.1%} on 800 clips")


def test_every_stage_kind_in_one_recipe(tmp_path, fashion_mnist):
    """train, distill, channel_prune, lowrank, prune, cluster, qat: every row is filled."""
    recipe = config.recipe_from_dict({
        "name": "all-stages",
        "data": {"dataset": "fashion_mnist", "max_train_samples": 512, "eval_samples": 200,
                 "calibration_samples": 16},
        "teacher": {"model": "small_cnn", "options": {"width": 8}},
        "student": {"model": "small_cnn", "options": {"width": 8}},
        "stages": [{"train": {"epochs": 1}},
                   {"distill": {"epochs": 1}},
                   {"channel_prune": {"ratio": 0.25, "epochs": 1,
                                      "allocation": "sensitivity", "sensitivity_samples": 200}},
                   {"lowrank": {"energy": 0.9, "epochs": 0, "min_params_saving": 0.0}},
                   {"prune": {"sparsity": 0.5, "epochs": 1, "distill": True,
                              "allocation": "sensitivity", "sensitivity_samples": 200}},
                   {"cluster": {"clusters": 8, "epochs": 1}},
                   {"qat": {"epochs": 1, "distill": True}}],
        "export": {"modes": ["int8_full"]},
        "benchmark": {"devices": []},
    })
    lines = []
    report = pipeline.run(recipe, str(tmp_path), log=lines.append, verbose=0)
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["01-train", "02-distill", "03-channel_prune", "04-lowrank",
                            "05-prune", "06-cluster", "07-qat"]
    assert stages["03-channel_prune"]["macs_after"] < stages["03-channel_prune"]["macs_before"]
    assert stages["04-lowrank"]["factored_layers"] == ["classifier"]
    assert 0.45 < stages["05-prune"]["sparsity"] < 0.6
    for name in ("03-channel_prune", "05-prune"):  # sensitivity allocation, recorded
        allocation = stages[name]["allocation"]
        assert abs(allocation["total_ratio"] - allocation["target"]) < 1e-6
        assert allocation["samples"] == 200 and allocation["curves"]
    assert stages["06-cluster"]["max_unique_values"] <= 8
    assert stages["07-qat"]["scheme"] == "prune_cluster_preserving"
    assert len(report["variants"]) == 7
    for v in report["variants"]:
        assert v["mode"] == "int8_full" and v["is_full_integer"] and v["edgetpu"]["compatible"]
        assert v["top1"] is not None and v["gzip_bytes"] > 0
    # Pruning zeros survive clustering and QAT into the int8 file.
    qat_row = report["variants"][-1]
    assert qat_row["nonzero_parameters"] <= report["variants"][4]["nonzero_parameters"] * 1.02
    # A rerun loads nothing it does not need, including the cluster-preserving QAT model.
    lines = []
    pipeline.run(recipe, str(tmp_path), log=lines.append, verbose=0)
    assert sum("done in an earlier run" in line for line in lines) == 7
