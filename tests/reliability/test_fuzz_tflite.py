"""Fuzzing the `.tflite` readers: corrupt files give one clear error, never a crash.

Seeded mutations (fuzz_driver.MUTATIONS: bit flips, random bytes, truncation,
tail extension, 0xFF runs, and field overwrites aimed at vtables, buffer
sizes, tensor and operator fields, table offsets) of a float32 and an
int8_full file are run in a child process, because a segfault would kill
pytest itself. Per case the library paths (inspect_tflite, edgetpu_report,
evaluate_tflite on 3 samples) must succeed or raise a TfcompressError with a
one-line message, within the case's time bound.

What it found (seeds 1 and 2, 14,000 cases, 2-core shared host; the tiny model
of the fixture), and what was fixed:
    * The bare interpreter (the old evaluate path: schema parse, then
      Interpreter in-process) on the 7,646 files that parse: 7 killed the
      process (5 SIGSEGV, 2 SIGABRT: an op input changed to -1 or to another
      op's tensor, an op code changed to another op) and 3 stalled 22-31 s in
      allocate_tensors (a dimension made huge; one asked for 16 GB);
      get_input_details / Interpreter() raised UnicodeDecodeError on non-UTF-8
      names.
    * inspect/edgetpu_report raised IndexError/TypeError/AttributeError on ops
      with missing inputs, absent vectors or another op's options; evaluate a
      ValueError on a batch axis of 0.
    Fixed by the structure check in tflite_file.parse_tflite (indices, each
    tensor written once, shapes, sizes, names, per-channel quantization: it
    rejects 8,916 of the 14,000, and 5 of the 10 crashers/stalls) and by
    evaluate's probe process (tflite_file.probe_tflite), which turns the other
    5 (an omitted input a kernel needs, an op swapped for another, an input of
    14 million columns) into an EvaluationError. The library paths then:
    0 crashes, 0 hangs, 0 non-TfcompressError exceptions, the slowest case
    5.6 s (the probe's 5 s timeout). The default test's figures are printed
    with pytest -s.
"""

import collections
import importlib.util
import json
import os

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "tfcompress_fuzz_driver", os.path.join(os.path.dirname(__file__), "fuzz_driver.py"))
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

SEED = 0
CASE_TIMEOUT_S = 20.0  # no-progress bound per case; a case past it is a hang
PROBE_TIMEOUT_S = 5.0  # how long the probe may take to load + run a case once
STAGES = ("inspect", "edgetpu", "evaluate")
OUR_ERRORS = {"TfliteFileError", "EvaluationError"}


@pytest.fixture(scope="session")
def tflite_files(tmp_path_factory):
    """A tiny conv/depthwise/pool/dense classifier as float32 and int8_full files."""
    from tfcompress.keras import keras
    from tflite_export.convert import convert
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    calibration = np.random.default_rng(0).uniform(0, 1, (20, 8, 8, 1)).astype(np.float32)
    folder = tmp_path_factory.mktemp("fuzz")
    paths = []
    for mode in ("float32", "int8_full"):
        path = folder / f"tiny_{mode}.tflite"
        path.write_bytes(convert(model, mode, representative_data=calibration))
        paths.append(str(path))
    return paths


def _summary(files, rows, raw=None, seed=SEED):
    """Counts for the report, and the crash/hang rows with their mutations."""
    cache, notes = {}, []
    for row in rows + (raw or []):
        if row["outcome"] != "done":
            _, _, _, what = fuzz.make_case(files, seed, row["case"], cache)
            notes.append(f"case {row['case']} {row['outcome']} {row.get('signal', '')}: {what}")
    done = [r for r in rows if r["outcome"] == "done"]
    summary = {
        "cases": len(rows),
        "rejected_by_check": sum(r["inspect"] == "TfliteFileError" for r in done),
        "evaluated_ok": sum(r["evaluate"] == "ok" for r in done),
        "evaluate_errors": sum(r["evaluate"] == "EvaluationError" for r in done),
        "crashes": sum(r["outcome"] == "crash" for r in rows),
        "hangs": sum(r["outcome"] == "hang" for r in rows),
        "max_case_s": round(max(r["seconds"] for r in rows), 3),
        "by_kind": dict(collections.Counter(r["kind"] for r in done)),
    }
    if raw is not None:
        summary["raw"] = {
            "parsed": sum(bool(r.get("parsed")) for r in raw),
            "crashes": sum(r["outcome"] == "crash" for r in raw),
            "hangs": sum(r["outcome"] == "hang" for r in raw),
            "interpreter_ok": sum(r.get("interpreter") == "ok" for r in raw),
        }
    return summary, notes


def _assert_safe(rows, summary, notes):
    context = json.dumps(summary) + "\n" + "\n".join(notes)
    assert summary["crashes"] == 0 and summary["hangs"] == 0, context
    for row in rows:
        for stage in STAGES:
            assert row[stage] == "ok" or row[stage] in OUR_ERRORS, (row, context)
        assert not row.get("bad_messages"), row  # every message is one line
    assert summary["max_case_s"] < CASE_TIMEOUT_S


def test_fuzzed_files_give_clear_errors_never_crashes(tflite_files):
    # 600 cases, 60 per mutation kind, over both files: ~20 s here.
    cases = range(600)
    raw = fuzz.run_cases(tflite_files, cases, "raw", seed=SEED, case_timeout=CASE_TIMEOUT_S)
    rows = fuzz.run_cases(tflite_files, cases, "safe", seed=SEED,
                          case_timeout=CASE_TIMEOUT_S, probe_timeout=PROBE_TIMEOUT_S)
    summary, notes = _summary(tflite_files, rows, raw)
    print("fuzz summary:", json.dumps(summary), *notes, sep="\n")
    _assert_safe(rows, summary, notes)
    assert len(rows) == len(raw) == 600
    assert set(summary["by_kind"]) == set(fuzz.MUTATIONS)
    # The mix is real: the check rejects some, the interpreter refuses some, some run.
    assert summary["rejected_by_check"] > 100
    assert summary["evaluate_errors"] > 10
    assert summary["evaluated_ok"] > 50
    # The check the raw driver ran (read_tflite) is the one the safe paths ran.
    raw_by_case = {r["case"]: r for r in raw}
    for row in rows:
        if raw_by_case[row["case"]]["outcome"] == "done":
            assert raw_by_case[row["case"]]["rejected"] == (row["inspect"] == "TfliteFileError")


# Cases (seed 2) that killed or stalled the bare interpreter when found: an op code
# 22 -> 49 and an op input 3 -> -1 (SIGSEGV), an op input 11 -> 7 (SIGABRT), a tensor
# dimension 4 -> 2**31-1 (31 s in allocate_tensors). A newer LiteRT may survive them.
KNOWN_CRASHERS = (136, 336, 576, 4735)


def test_known_interpreter_crashers_are_caught(tflite_files):
    # 5 s is enough to tell: the stalling one would take ~30 s.
    raw = fuzz.run_cases(tflite_files, KNOWN_CRASHERS, "raw", seed=2, case_timeout=5)
    rows = fuzz.run_cases(tflite_files, KNOWN_CRASHERS, "safe", seed=2,
                          case_timeout=CASE_TIMEOUT_S, probe_timeout=PROBE_TIMEOUT_S)
    assert [r["outcome"] for r in rows] == ["done"] * len(KNOWN_CRASHERS), rows
    for r, row in zip(raw, rows):
        # Whatever the bare interpreter did, the library answered with one of its errors.
        assert row["evaluate"] in OUR_ERRORS, (r, row)
    if not any(r["outcome"] in ("crash", "hang") for r in raw):
        pytest.skip("this LiteRT survives the recorded crashers; the safe paths still held")


def test_probe_reports_a_crash_without_dying(tflite_files):
    from tflite_export.tflite_file import probe_tflite
    _, _, data, what = fuzz.make_case(tflite_files, 2, 136)
    raw = fuzz.run_cases(tflite_files, [136], "raw", seed=2, case_timeout=CASE_TIMEOUT_S)
    if raw[0]["outcome"] != "crash":
        pytest.skip(f"this LiteRT no longer crashes on {what}")
    reason = probe_tflite(data)
    assert reason is not None and "crashed" in reason and "SIG" in reason, reason
    # The probe process is replaced: a valid file still probes fine afterwards.
    with open(tflite_files[0], "rb") as f:
        assert probe_tflite(f.read()) is None


@pytest.mark.slow
def test_fuzz_many_cases(tflite_files):
    # 4,000 cases per seed over three seeds: ~3 min here.
    for seed in (1, 2, 3):
        rows = fuzz.run_cases(tflite_files, range(4000), "safe", seed=seed,
                              case_timeout=CASE_TIMEOUT_S, probe_timeout=PROBE_TIMEOUT_S)
        summary, notes = _summary(tflite_files, rows, seed=seed)
        print(f"seed {seed}:", json.dumps(summary))
        _assert_safe(rows, summary, notes)
