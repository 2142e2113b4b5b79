"""Seeded `.tflite` mutations, and a child-process driver that runs them.

A corrupt flatbuffer can crash the LiteRT interpreter (a segfault kills the
whole process), so the tests never run cases in pytest itself: `run_cases`
starts this file as a script, reads one JSON line per case, and when the
driver dies or stalls it records that case as "crash" or "hang" and starts a
fresh driver at the next case.

    python fuzz_driver.py SPEC_JSON      # what run_cases starts

SPEC_JSON: {"files": [paths], "seed": int, "cases": [case ids], "mode": ...}.
Case i mutates files[i % len(files)] with MUTATIONS[i // len(files) %
len(MUTATIONS)], drawing everything else from default_rng([seed, i]), so a
case id names one exact file. Modes:

    raw   what an unprotected in-process reader does: the schema parse alone,
          then Interpreter(model_content) + allocate_tensors + invoke on zeros.
          Also records whether the full check (tflite_file.read_tflite) rejects it.
    safe  the library's paths: inspect_tflite, edgetpu_report, evaluate_tflite
          on 3 samples; each must succeed or raise a TfcompressError.
    check the full check only (read_tflite), no interpreter.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MUTATIONS = ("bitflip", "bytes", "truncate", "extend", "ff_run", "vtable", "buffer_size",
             "tensor_field", "op_field", "table_offset")


# ----------------------------------------------------------------------------- mutations

def _vtable_and_fields(tab, slots):
    """Byte ranges of a table's vtable and the positions of its present fields."""
    vt = tab.Pos - int(np.frombuffer(tab.Bytes, "<i4", 1, tab.Pos)[0])
    size = int(np.frombuffer(tab.Bytes, "<u2", 1, vt)[0])
    fields = {s: tab.Pos + tab.Offset(s) for s in slots if tab.Offset(s)}
    return list(range(vt, vt + min(size, 64))), fields


def _vector(tab, slot):
    """(length field position, data start, length) of a vector field, or None."""
    o = tab.Offset(slot)
    if not o:
        return None
    start = tab.Vector(o)
    return start - 4, start, tab.VectorLen(o)


def interesting_offsets(data):
    """Offsets of the fields a reader trusts, by kind (from a valid file).

    Returns:
        {"vtable": [...], "buffer_size": [...], "tensor_field": [...],
         "op_field": [...], "table_offset": [...]}, each a list of
        (offset, width) pairs.
    """
    from ai_edge_litert import schema_py_generated as schema
    out = {k: [] for k in ("vtable", "buffer_size", "tensor_field", "op_field", "table_offset")}
    model = schema.Model.GetRootAs(data, 0)
    out["table_offset"].append((0, 4))
    tables = [model._tab]
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        tables.append(b._tab)
        vec = _vector(b._tab, 4)
        if vec:
            out["buffer_size"].append((vec[0], 4))
        _, fields = _vtable_and_fields(b._tab, (6, 8))  # offset, size (large files)
        out["buffer_size"] += [(p, 8) for p in fields.values()]
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        tables.append(code._tab)
        _, fields = _vtable_and_fields(code._tab, (4, 8, 10))  # deprecated code, version, code
        out["op_field"] += [(p, 1 if s == 4 else 4) for s, p in fields.items()]
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        tables.append(sg._tab)
        for slot in (6, 8):  # subgraph inputs, outputs
            vec = _vector(sg._tab, slot)
            if vec:
                out["op_field"] += [(vec[1] + 4 * k, 4) for k in range(vec[2])]
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            tables.append(tensor._tab)
            _, fields = _vtable_and_fields(tensor._tab, (6, 8))  # type, buffer
            out["tensor_field"] += [(p, 1 if s == 6 else 4) for s, p in fields.items()]
            vec = _vector(tensor._tab, 4)  # shape
            if vec:
                out["tensor_field"] += [(vec[0], 4)] + [(vec[1] + 4 * k, 4) for k in range(vec[2])]
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            tables.append(op._tab)
            _, fields = _vtable_and_fields(op._tab, (4,))  # opcode_index
            out["op_field"] += [(p, 4) for p in fields.values()]
            for slot in (6, 8):  # inputs, outputs
                vec = _vector(op._tab, slot)
                if vec:
                    out["op_field"] += [(vec[0], 4)] + [(vec[1] + 4 * k, 4)
                                                         for k in range(vec[2])]
    for tab in tables:
        vt, _ = _vtable_and_fields(tab, ())
        out["vtable"] += [(p, 2) for p in vt[::2]]
        out["table_offset"].append((tab.Pos, 4))  # the table's soffset to its vtable
    return out


_EDGE_VALUES = (0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000,
                0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE)


def mutate(data, kind, rng, offsets):
    """One seeded mutation of `data`; returns (new bytes, a short description)."""
    buf = bytearray(data)
    n = len(buf)
    if kind == "bitflip":
        flips = int(rng.integers(1, 5))
        where = rng.integers(0, n, flips)
        for pos in where:
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(buf), f"flip {flips} bits at {sorted(int(p) for p in where)}"
    if kind == "bytes":
        width, pos = int(rng.integers(1, 9)), int(rng.integers(0, n))
        buf[pos:pos + width] = rng.integers(0, 256, width, dtype=np.uint8).tobytes()
        return bytes(buf[:n]), f"{width} random bytes at {pos}"
    if kind == "truncate":
        keep = int(rng.integers(0, n))
        return bytes(buf[:keep]), f"truncated to {keep} of {n} bytes"
    if kind == "extend":
        extra = int(rng.choice([1, 4, 16, 1024, 65536]))
        tail = rng.integers(0, 256, extra, dtype=np.uint8).tobytes()
        return bytes(buf) + tail, f"{extra} random bytes appended"
    if kind == "ff_run":
        width, pos = int(rng.integers(4, 65)), int(rng.integers(0, n))
        buf[pos:pos + width] = b"\xff" * width
        return bytes(buf[:n]), f"0xFF x {width} at {pos}"
    candidates = offsets[kind]
    pos, width = candidates[int(rng.integers(0, len(candidates)))]
    old = int.from_bytes(buf[pos:pos + width], "little")
    choices = list(_EDGE_VALUES) + [old + 1, old - 1, old * 2, old + 4, old - 4,
                                    int(rng.integers(0, 2 ** 32)), n, n - pos]
    value = int(choices[int(rng.integers(0, len(choices)))]) % (1 << (8 * width))
    buf[pos:pos + width] = value.to_bytes(width, "little")
    return bytes(buf), f"{kind}: {width}-byte field at {pos}: {old} -> {value}"


def make_case(files, seed, case, cache=None):
    """The bytes and description of case `case` (deterministic)."""
    cache = {} if cache is None else cache
    path = files[case % len(files)]
    if path not in cache:
        with open(path, "rb") as f:
            data = f.read()
        cache[path] = (data, interesting_offsets(data))
    data, offsets = cache[path]
    kind = MUTATIONS[case // len(files) % len(MUTATIONS)]
    rng = np.random.default_rng([seed, case])
    mutated, description = mutate(data, kind, rng, offsets)
    return path, kind, mutated, description


# ----------------------------------------------------------------------------- the child

def _basic_parse(data):
    """The check TfliteRunner had before: identifier + a full schema parse."""
    from ai_edge_litert import schema_py_generated as schema
    if len(data) < 16 or data[4:8] != b"TFL3":
        return False
    try:
        return bool(schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0)).subgraphs)
    except Exception:
        return False


def _raw(data):
    from ai_edge_litert.interpreter import Interpreter
    from tflite_export.tflite_file import TfliteFileError, read_tflite
    row = {"parsed": _basic_parse(data)}
    try:
        read_tflite(data)
        row["rejected"] = False
    except TfliteFileError:
        row["rejected"] = True
    if not row["parsed"]:
        return row
    # Flushed first: if the interpreter kills the process, the parent knows how far it got.
    print(json.dumps({"progress": row}), flush=True)
    try:
        interpreter = Interpreter(model_content=data)
        interpreter.allocate_tensors()
        for d in interpreter.get_input_details():
            interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interpreter.invoke()
        row["interpreter"] = "ok"
    except Exception as e:  # the interpreter raises RuntimeError/ValueError with a reason
        row["interpreter"] = f"{type(e).__name__}"
    return row


def _safe(data, samples):
    from tfcompress.errors import TfcompressError
    from tflite_export.evaluate import evaluate_tflite
    from tflite_export.inspect import edgetpu_report, inspect_tflite
    row = {}
    x, y = samples
    for stage, fn in (("inspect", lambda: inspect_tflite(data)),
                      ("edgetpu", lambda: edgetpu_report(data)),
                      ("evaluate", lambda: evaluate_tflite(data, x, y, progress=False))):
        print(json.dumps({"progress": {"stage": stage}}), flush=True)
        try:
            fn()
            row[stage] = "ok"
        except TfcompressError as e:
            message = str(e)
            row[stage] = type(e).__name__
            if "\n" in message or not message.strip():
                row.setdefault("bad_messages", []).append(f"{stage}: {message!r}")
        except Exception as e:  # a bug: not one of our errors
            row[stage] = "BUG " + type(e).__name__
            row.setdefault("bugs", []).append(
                f"{stage}: {type(e).__name__}: {e} | {traceback.format_exc(limit=-3)!r}")
    return row


def _samples(files):
    """3 float samples shaped for the first file's input, and labels."""
    from tflite_export.evaluate import TfliteRunner
    runner = TfliteRunner(files[0])
    shape = tuple(int(d) for d in runner.input_details[0]["shape"][1:])
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (3,) + shape).astype(np.float32), np.array([0, 1, 2])


def child_main(spec):
    sys.path.insert(0, ROOT)
    cache = {}
    samples = _samples(spec["files"]) if spec["mode"] == "safe" else None
    if "probe_timeout" in spec:
        # A file can be valid yet need many seconds and gigabytes to allocate (an
        # input dimension of 14 million): the probe's timeout is what bounds it.
        from tflite_export import tflite_file
        tflite_file.PROBE_TIMEOUT_S = spec["probe_timeout"]
    for case in spec["cases"]:
        path, kind, data, description = make_case(spec["files"], spec["seed"], case, cache)
        print(json.dumps({"start": case}), flush=True)
        start = time.perf_counter()
        if spec["mode"] == "raw":
            row = _raw(data)
        elif spec["mode"] == "safe":
            row = _safe(data, samples)
        else:
            from tflite_export.tflite_file import TfliteFileError, read_tflite
            try:
                read_tflite(data)
                row = {"rejected": False}
            except TfliteFileError:
                row = {"rejected": True}
        row.update(case=case, kind=kind, base=os.path.basename(path), what=description,
                   bytes=len(data), seconds=time.perf_counter() - start, outcome="done")
        print(json.dumps(row), flush=True)
    return 0


# ----------------------------------------------------------------------------- the parent

def run_cases(files, cases, mode, seed=0, case_timeout=20.0, probe_timeout=None, env=None):
    """Runs `cases` in driver processes; returns one row per case.

    A case that kills the driver gets outcome "crash" (with the signal), one
    that makes no progress for `case_timeout` seconds "hang"; in both cases
    the driver is replaced and the remaining cases go on.
    """
    remaining, rows = list(cases), []
    while remaining:
        spec = {"files": [os.path.abspath(f) for f in files], "seed": seed,
                "cases": remaining, "mode": mode}
        if probe_timeout is not None:
            spec["probe_timeout"] = probe_timeout
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                cwd=ROOT, env=env)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        current, started, progress = None, None, {}
        while True:
            try:
                # The first line waits for the imports too (TF-free: ~1 s, more when busy).
                line = lines.get(timeout=case_timeout if current is not None else 120)
            except queue.Empty:
                proc.kill()
                proc.wait()
                if current is None:
                    raise RuntimeError("the fuzz driver printed nothing for 120 s")
                rows.append({"case": current, "outcome": "hang", **progress,
                             "seconds": time.perf_counter() - started})
                remaining = remaining[remaining.index(current) + 1:]
                break
            if line is None:  # the driver exited
                code = proc.wait()
                if current is None:
                    remaining = [] if code == 0 else remaining
                    if code != 0:
                        raise RuntimeError(f"the fuzz driver failed before any case ({code})")
                    break
                name = signal.Signals(-code).name if code < 0 else f"exit {code}"
                rows.append({"case": current, "outcome": "crash", "signal": name, **progress,
                             "seconds": time.perf_counter() - started})
                remaining = remaining[remaining.index(current) + 1:]
                break
            message = json.loads(line)
            if "start" in message:
                current, started, progress = message["start"], time.perf_counter(), {}
            elif "progress" in message:
                progress.update(message["progress"])
            else:
                rows.append(message)
                current = None
                if message["case"] == remaining[-1]:
                    proc.wait()
                    remaining = []
                    break
    return rows


if __name__ == "__main__":
    sys.exit(child_main(json.loads(sys.argv[1])))
