"""The pipeline's report: `report.json` (for scripts), `report.md` (for people), `pareto.png`.

`build_report(out_dir)` reads what the pipeline left in `out_dir` (recipe.json,
each stage's metrics.json and variants.json) so `tfcompress report DIR`
re-renders a report without running anything. The JSON schema is in the README
("report.json").

Example:
    report = build_report("runs/demo")
    write_report("runs/demo", report)       # report.json, report.md, pareto.png
    print(format_markdown(report))
"""

import datetime
import io
import json
import os

from tfcompress.errors import TfcompressError
from tfcompress.recommend import format_recommendation, recommend
from tfcompress.saving import write_bytes_atomic, write_json_atomic

SCHEMA = "tfcompress.report/1"
PHONE_NOTE = ("Latency was measured on this host's CPU under each device profile; it is not a "
              "phone's latency. A phone cannot be emulated for timing on an x86 host: compare "
              "variants with each other here, and measure on the phone itself.")


class ReportError(TfcompressError, ValueError):
    """An output folder holds no pipeline run to report on."""


def _read(path):
    """A JSON object the pipeline wrote; ReportError naming the file if it is damaged."""
    fix = ("rerun `tfcompress run` with the same --out to rewrite it, or delete that stage's "
           "folder")
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ReportError(f"{path}: cannot read it ({' '.join(str(e).split())[:200]}); "
                          f"{fix}") from e
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(value).__name__}; {fix}")
    return value


def _stage_names(out_dir):
    names = [d for d in sorted(os.listdir(out_dir))
             if len(d) > 3 and d[:2].isdigit() and d[2] == "-"
             and os.path.isfile(os.path.join(out_dir, d, "manifest.json"))]
    return names


def environment():
    """Versions, CPU and core count of this machine (what the figures were measured on)."""
    from tflite_export.environment import host
    machine = host(("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert",
                    "numpy"))
    return {"versions": {"python": machine["python"], **machine["versions"]},
            "cpu": machine["cpu"], "cpu_count": machine["logical_cpus"],
            "usable_cores": len(machine["usable_cpus"]), "platform": machine["platform"],
            "note": PHONE_NOTE}


def pareto_front(points):
    """Indices of the points (cost, accuracy) no other point beats on both (lower cost, higher acc)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _first_device(variants, key="median_ms"):
    """The first device whose results hold `key` (median_ms: a host; cycles: an NPU)."""
    for row in variants:
        for device, lat in row["latency"].items():
            if key in lat:
                return device
    return None


def _front(variants, device, key):
    """Indices of the Pareto front of accuracy against `latency[device][key]`."""
    have = [i for i, v in enumerate(variants) if key in v["latency"].get(device, {})]
    return sorted(have[i] for i in pareto_front(
        [(variants[j]["latency"][device][key], variants[j]["top1"]) for j in have]))


def build_report(out_dir):
    """Collects a pipeline run in `out_dir` into the report dict (see the README)."""
    recipe_path = os.path.join(out_dir, "recipe.json")
    if not os.path.isfile(recipe_path):
        raise ReportError(f"{out_dir} holds no pipeline run (no recipe.json); run "
                          f"`tfcompress run --recipe NAME --out {out_dir}` first")
    recipe = _read(recipe_path)
    stages, variants = [], []
    for name in _stage_names(out_dir):
        stage_dir = os.path.join(out_dir, name)
        manifest = _read(os.path.join(stage_dir, "manifest.json"))
        metrics = _read(os.path.join(stage_dir, "metrics.json"))
        stages.append({"name": name, "kind": manifest["stage"],
                       **{k: v for k, v in metrics.items() if k != "history"}})
        variants_path = os.path.join(stage_dir, "variants.json")
        if os.path.isfile(variants_path):
            for row in _read(variants_path)["variants"]:
                variants.append({"stage": name, "kind": manifest["stage"], **row})
    if not stages:
        raise ReportError(f"{out_dir} has no finished stage yet")
    baseline = next((v for v in variants if v["mode"] == "float32"), variants[0] if variants
                    else None)
    for row in variants:
        row["delta_points"] = (None if baseline is None or row.get("top1") is None else
                               round(100 * (row["top1"] - baseline["top1"]), 2))
        row["compression"] = (round(baseline["gzip_bytes"] / row["gzip_bytes"], 2)
                              if baseline else None)
    device, npu = _first_device(variants), _first_device(variants, "cycles")
    size_front = pareto_front([(v["gzip_bytes"], v["top1"]) for v in variants])
    pareto = {"gzip_bytes": sorted(size_front),
              "latency": _front(variants, device, "median_ms"), "latency_device": device,
              "npu_cycles": _front(variants, npu, "cycles"), "npu_device": npu}
    max_drop = (recipe.get("budget") or {}).get("max_drop")
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "out_dir": os.path.abspath(out_dir),
        "recipe": recipe,
        "environment": environment(),
        "baseline": None if baseline is None else {
            "stage": baseline["stage"], "mode": baseline["mode"], "top1": baseline["top1"],
            "gzip_bytes": baseline["gzip_bytes"], "file_bytes": baseline["file_bytes"]},
        "stages": stages,
        "variants": variants,
        "pareto": pareto,
        "recommendation": recommend(variants, stages, max_drop, pareto),
    }


def _ms(lat, key):
    if "error" in lat:
        return "error"
    return f"{lat[key]:.3f}" if key in lat else "-"


def _device_columns(kind, device):
    """(column names, cells of one result) for a device of this profile kind."""
    if kind == "npu":
        return ([f"{device} cycles (Vela)", f"{device} SRAM KiB"], lambda lat: (
            ["error", "error"] if "error" in lat else
            ["not for NPU", "-"] if lat.get("not_applicable") else
            [f"{lat['cycles']:,}" + (f" (+{lat['cpu_ops']} CPU ops)" if lat["cpu_ops"] else ""),
             f"{lat['sram_kib']:.1f}"]))
    if kind == "arm-emulated":
        return ([f"{device} outputs (emulated)"], lambda lat: (
            ["error"] if "error" in lat else
            [("match host" if lat["outputs_match_host"] else "DIFFER") +
             (", XNNPACK" if lat["xnnpack_used"] else ", no XNNPACK") +
             (", sparse" if lat.get("sparse_path_used") else "")]))
    if kind == "static":
        return ([device], lambda lat: (["error"] if "error" in lat else [
            f"{'yes' if lat['compatible'] else 'no'} ({lat['ops_on_device']}/"
            f"{lat['ops_on_device'] + lat['ops_on_cpu']} ops)"]))
    return ([f"{device} median ms", f"{device} p90 ms"],
            lambda lat: [_ms(lat, "median_ms"), _ms(lat, "p90_ms")])


def format_table(report):
    """The variants table in Markdown."""
    variants = report["variants"]
    kinds = {}  # device -> profile kind; results saved before kinds existed are host ones
    for v in variants:
        for d, lat in v["latency"].items():
            kinds.setdefault(d, lat.get("kind", "host"))
    columns = {d: _device_columns(kinds[d], d) for d in sorted(kinds)}
    header = ["stage", "format", "top-1", "Δ pts", "file bytes", "gzip bytes", "compression",
              "non-zero weights"]
    for names, _ in columns.values():
        header += names
    header.append("Edge TPU")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in variants:
        delta = "" if v["delta_points"] is None else f"{v['delta_points']:+.2f}"
        cells = [v["stage"], v["mode"], f"{100 * v['top1']:.2f}%", delta,
                 f"{v['file_bytes']:,}", f"{v['gzip_bytes']:,}", f"{v['compression']:.1f}x",
                 f"{v['nonzero_parameters']:,} / {v['parameters']:,}"]
        for d, (names, cells_of) in columns.items():
            lat = v["latency"].get(d)
            cells += ["-"] * len(names) if lat is None else cells_of(lat)
        tpu = v["edgetpu"]
        ops = f"{tpu['ops_on_edgetpu']}/{tpu['ops_on_edgetpu'] + tpu['ops_on_cpu']} ops"
        cells.append(f"yes ({ops})" if tpu["compatible"] else f"no ({ops})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_markdown(report):
    """The whole report.md."""
    recipe = report["recipe"]
    base = report["baseline"]
    env = report["environment"]
    lines = [f"# tfcompress report: {recipe['name']}", "", recipe.get("description") or "", ""]
    for line in format_recommendation(report.get("recommendation")
                                      or {"max_drop": None, "dominated_stages": []}):
        lines += [line, ""]
    lines += [f"Created {report['created']}. Accuracy is top-1 through the TFLite interpreter on "
              f"the test split; Δ pts is against the float baseline "
              + (f"({base['stage']} {base['mode']}, {100 * base['top1']:.2f}%); compression is "
                 f"its gzip bytes over the variant's." if base else "."), ""]
    lines += [format_table(report), "",
              "## Stages", "",
              "| stage | seconds | training seconds | Keras test accuracy | parameters |",
              "|---|---|---|---|---|"]
    for s in report["stages"]:
        lines.append(f"| {s['name']} | {s.get('seconds', '-')} | {s.get('train_seconds', '-')} "
                     f"| {100 * s['keras_test_accuracy']:.2f}% | {s.get('parameters', 0):,} |")
    front = report["pareto"]
    names = [f"{report['variants'][i]['stage']} {report['variants'][i]['mode']}"
             for i in front["gzip_bytes"]]
    lines += ["", f"Pareto front, accuracy against gzip size: {', '.join(names)}."]
    if front["latency_device"]:
        names = [f"{report['variants'][i]['stage']} {report['variants'][i]['mode']}"
                 for i in front["latency"]]
        lines.append(f"Pareto front, accuracy against {front['latency_device']} median latency: "
                     f"{', '.join(names)}.")
    if front.get("npu_device"):
        names = [f"{report['variants'][i]['stage']} {report['variants'][i]['mode']}"
                 for i in front["npu_cycles"]]
        lines.append(f"Pareto front, accuracy against {front['npu_device']} cycles (Vela's "
                     f"estimate; float variants cannot run on the NPU): {', '.join(names)}.")
    lines += ["", "![pareto](pareto.png)", "",
              "## Environment", "",
              f"{env['cpu']}; {env['usable_cores']} usable of {env['cpu_count']} cores; "
              f"{env['platform']}.", "",
              ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "",
              env["note"], "",
              "## Recipe", "", "```json", json.dumps(recipe, indent=2), "```", ""]
    return "\n".join(lines)


def _short_number(value, _position=None):
    """20000 -> "20k", 1500000 -> "1.5M", 0.05 -> "0.05": tick labels that fit."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def plot_pareto(report, path):
    """pareto.png: accuracy against gzip bytes and against latency, front marked.

    Returns the path, or None when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = pareto_figure(report)
    # Rendered in memory, then written atomically: a kill leaves no partial PNG.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def pareto_figure(report):
    """The matplotlib figure `plot_pareto` writes: one panel per cost, front in red."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    variants = report["variants"]
    device = report["pareto"]["latency_device"]
    panels = [("gzip bytes", lambda v: v["gzip_bytes"], report["pareto"]["gzip_bytes"])]
    if device:
        panels.append((f"{device} median latency (ms)",
                       lambda v: v["latency"].get(device, {}).get("median_ms"),
                       report["pareto"]["latency"]))
    npu = report["pareto"].get("npu_device")
    if npu:
        panels.append((f"{npu} cycles (Vela estimate)",
                       lambda v: v["latency"].get(npu, {}).get("cycles"),
                       report["pareto"]["npu_cycles"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (label, cost, front) in zip(axes[0], panels):
        for i, v in enumerate(variants):
            x = cost(v)
            if x is None:
                continue
            ax.scatter(x, 100 * v["top1"], color="tab:red" if i in front else "tab:blue", zorder=3)
            ax.annotate(f"{v['stage']} {v['mode']}", (x, 100 * v["top1"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        pts = sorted((cost(variants[i]), 100 * variants[i]["top1"]) for i in front)
        if pts:
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="tab:red",
                    alpha=0.6, label="Pareto front")
        xs = [x for x in map(cost, variants) if x]
        if xs and max(xs) >= 10 * min(xs):
            ax.set_xscale("log")
            # 1-2-5 ticks, labelled: over one or two decades a plain log axis labels one tick.
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_short_number))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            label += " (log)"
        # Under a decade a log axis has no major tick, so no label at all: stay linear.
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"{report['recipe']['name']}: accuracy against size and cost")
    fig.tight_layout()
    return fig


def write_report(out_dir, report):
    """Writes report.json, report.md and pareto.png atomically; returns their paths."""
    paths = {"json": write_json_atomic(os.path.join(out_dir, "report.json"), report),
             "markdown": write_bytes_atomic(os.path.join(out_dir, "report.md"),
                                            format_markdown(report).encode())}
    png = plot_pareto(report, os.path.join(out_dir, "pareto.png"))
    if png:
        paths["plot"] = png
    return paths
