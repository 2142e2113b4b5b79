"""Benchmark results for people: Markdown tables and a latency-against-size plot.

Both read the result dict `benchmark.benchmark_models` returns (its schema is in
`tflite_export.benchmark`), so a saved result JSON renders again without timing
anything.

Example:
    print(format_markdown(result))
    plot(result, "latency_vs_size.png")
"""

import os

from tflite_export.profiles import PHONE_NOTE


def _labels(result):
    """Short model names: basenames unless two models share one."""
    models = list(dict.fromkeys(r["model"] for r in result["results"]))
    names = [os.path.basename(m) for m in models]
    unique = len(set(names)) == len(names)
    return {m: (n if unique else m) for m, n in zip(models, names)}


def format_markdown(result):
    """Markdown tables: results, ratios against the baseline, cross-check, failures."""
    env, label = result["environment"], _labels(result)
    lines = [f"Host: {env['cpu']}, {len(env['usable_cpus'])} usable of {env['logical_cpus']} "
             f"logical CPUs, {env['system']}; LiteRT {env['ai_edge_litert']}, Python "
             f"{env['python']}; load average {env['load_average'][0]} at the start, "
             f"{env.get('load_average_end', ['-'])[0]} at the end.",
             "", PHONE_NOTE, ""]
    busiest = max(env["load_average"][0], env.get("load_average_end", [0])[0])
    if busiest >= len(env["usable_cpus"]):
        # Other processes shared these CPUs: medians shift by tens of percent (seen here).
        lines += [f"Warning: the machine was busy (load average up to {busiest} on "
                  f"{len(env['usable_cpus'])} CPUs); timings are noisy: repeat the run and "
                  "compare medians.", ""]
    lines += ["| model | device | bytes | gzip bytes | load ms | first ms | median ms | p90 ms "
              "| p99 ms | min ms | std ms | runs | peak RSS MB | load +MB |",
              "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in result["results"]:
        if r["error"]:
            continue
        growth = r["load_rss_growth_mb"]
        lines.append(
            f"| {label[r['model']]} | {r['device']} | {r['file_bytes']:,} | {r['gzip_bytes']:,} | "
            f"{r['load_ms']:.1f} | {r['first_inference_ms']:.2f} | {r['median_ms']:.3f} | "
            f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['min_ms']:.3f} | {r['std_ms']:.3f} | "
            f"{r['runs']} | {r['peak_rss_mb']:.1f} | "
            f"{'-' if growth is None else format(growth, '.1f')} |")
    if result["ratios"]:
        lines += ["", f"Against {label[result['settings']['baseline']]} (speedup: baseline "
                      "median / model median; other columns: model / baseline):", "",
                  "| model | device | speedup | size | gzip size | peak RSS |",
                  "|---|---|--:|--:|--:|--:|"]
        lines += [f"| {label[q['model']]} | {q['device']} | {q['speedup']:.2f}x | "
                  f"{q['size_ratio']:.2f}x | {q['gzip_size_ratio']:.2f}x | "
                  f"{q['peak_rss_ratio']:.2f}x |" for q in result["ratios"]]
    checked = [r for r in result["results"] if r.get("crosscheck")]
    if checked:
        lines += ["", "Cross-check with litert-benchmark (same file, CPUs, threads, warm-up and "
                      "runs; it reports 0.01 ms steps):", "",
                  "| model | device | our median ms | litert-benchmark median ms | ours/theirs |",
                  "|---|---|--:|--:|--:|"]
        for r in checked:
            c = r["crosscheck"]
            if "median_ms" in c:
                ratio = f"{c['median_ratio']:.3f}" if c["median_ratio"] else "-"
                lines.append(f"| {label[r['model']]} | {r['device']} | {r['median_ms']:.3f} | "
                             f"{c['median_ms']:.2f} | {ratio} |")
            else:
                lines.append(f"| {label[r['model']]} | {r['device']} | {r['median_ms']:.3f} | "
                             f"{c.get('error') or c.get('skipped')} | - |")
    failed = {}  # (model, error) -> devices: a bad file fails the same way on every device
    for r in result["results"]:
        if r["error"]:
            failed.setdefault((r["model"], r["error"]), []).append(r["device"])
    if failed:
        lines += ["", "Failed:", ""]
        lines += [f"- {label[model]} on {', '.join(devices)}: {error}"
                  for (model, error), devices in failed.items()]
    return "\n".join(lines)


def plot(result, path):
    """Median latency against file size, one series per device, as a PNG.

    Returns:
        `path`, or None when matplotlib is not installed or nothing ran.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import io
    from tfcompress.saving import write_bytes_atomic
    rows = [r for r in result["results"] if not r["error"]]
    if not rows:
        return None
    label = _labels(result)
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)  # no pyplot: no global backend state, no display needed
    axes = figure.add_subplot()
    for device in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == device]
        axes.scatter([r["file_bytes"] / 1024 for r in mine], [r["median_ms"] for r in mine],
                     label=device)
        for r in mine:
            axes.annotate(label[r["model"]], (r["file_bytes"] / 1024, r["median_ms"]),
                          fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel("file size (KiB)")
    axes.set_ylabel("median latency (ms)")
    axes.set_title(f"TFLite on {result['environment']['cpu']} (host CPU, not a phone)",
                   fontsize=9)
    # Room on the right and top for the labels of the largest and slowest models.
    axes.set_xlim(0, 1.3 * max(r["file_bytes"] for r in rows) / 1024)
    axes.set_ylim(0, 1.15 * max(r["median_ms"] for r in rows))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_bytes_atomic(path, buffer.getvalue())
    return path
