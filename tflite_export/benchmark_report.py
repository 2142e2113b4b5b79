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


def _kind(row):
    return row.get("kind", "host")  # results saved before device kinds existed are host rows


def format_markdown(result):
    """Markdown tables: host results, ratios against the baseline, cross-check, then the
    NPU estimates, the emulated Arm runs and the static checks, and failures."""
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
    timed = [r for r in result["results"] if not r["error"] and _kind(r) == "host"]
    if timed:
        lines += ["| model | device | bytes | gzip bytes | load ms | first ms | median ms "
                  "| p90 ms | p99 ms | min ms | std ms | runs | peak RSS MB | load +MB |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in timed:
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
    lines += _npu_table(result, label) + _arm_table(result, label) + _static_table(result, label)
    failed = {}  # (model, error) -> devices: a bad file fails the same way on every device
    for r in result["results"]:
        if r["error"]:
            failed.setdefault((r["model"], r["error"]), []).append(r["device"])
    unknown = result.get("unknown_devices", {})
    if failed or unknown:
        lines += ["", "Failed:", ""]
        lines += [f"- {label[model]} on {', '.join(devices)}: {error}"
                  for (model, error), devices in failed.items()]
        lines += [f"- {message}" for message in unknown.values()]
    return "\n".join(lines)


def _npu_table(result, label):
    rows = [r for r in result["results"] if _kind(r) == "npu" and not r["error"]]
    if not rows:
        return []
    base = {r["device"]: r for r in rows if r["model"] == result["settings"]["baseline"]
            and r.get("cycles")}
    lines = ["", "Ethos-U NPU, Vela's estimate (cycles of one inference at its configured "
                 "clock and memory system; ops Vela leaves to the CPU are not in the cycles):",
             "", "| model | device | cycles | vs baseline | ms at clock | SRAM KiB | flash KiB "
                 "| DRAM KiB | ops on NPU | ops on CPU |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        if r.get("not_applicable"):
            lines.append(f"| {label[r['model']]} | {r['device']} | {r['not_applicable']} "
                         "| | | | | | | |")
            continue
        b = base.get(r["device"])
        ratio = f"{r['cycles'] / b['cycles']:.2f}x" if b else "-"
        cpu = f"{r['cpu_ops']}" + (f" ({', '.join(r['cpu_op_types'])})"
                                   if r["cpu_op_types"] else "")
        lines.append(f"| {label[r['model']]} | {r['device']} | {r['cycles']:,} | {ratio} | "
                     f"{r['inference_ms']:.3f} | {r['sram_kib']:.1f} | {r['flash_kib']:.1f} | "
                     f"{r.get('dram_kib', 0):.1f} | "
                     f"{r['npu_ops']} | {cpu} |")
    return lines


def _arm_table(result, label):
    rows = [r for r in result["results"] if _kind(r) == "arm-emulated" and not r["error"]]
    if not rows:
        return []
    lines = ["", "Emulated Arm CPU (QEMU, aarch64 LiteRT): outputs against this host's, and "
                 "the kernels XNNPACK ran. Emulated time is NOT device time (100-550x slower "
                 "than a device); compare it only between files on one profile.", "",
             "| model | device | outputs match host | max abs diff | XNNPACK | sparse path "
             "| GEMM kernels | emulated ms |", "|---|---|---|--:|---|---|---|--:|"]
    for r in rows:
        sparse = r.get("sparse_path_used")
        # The ISA part of XNNPACK's GEMM kernel names: neondot, neon_mlal_lane...
        gemm = sorted({k.split("__", 1)[1] for k in r.get("kernels") or ()
                       if "gemm" in k and "packw" not in k and "__" in k})
        lines.append(
            f"| {label[r['model']]} | {r['device']} | "
            f"{'yes' if r['outputs_match_host'] else 'NO'}: {r['compare']} | "
            f"{r['max_abs_diff']:.3g} | {'used' if r['xnnpack_used'] else 'not used'} | "
            f"{'-' if sparse is None else ('used' if sparse else 'not used')} | "
            f"{', '.join(gemm) or '-'} | {r['emulated_invoke_ms']:.1f} |")
    return lines


def _static_table(result, label):
    rows = [r for r in result["results"] if _kind(r) == "static" and not r["error"]]
    if not rows:
        return []
    lines = ["", "Static check (the device's documented rules read from the file; not its "
                 "compiler):", "", "| model | device | compatible | ops on device | ops on CPU "
                 "| first unsupported op |", "|---|---|---|--:|--:|---|"]
    for r in rows:
        first = r["first_unsupported_op"]
        lines.append(f"| {label[r['model']]} | {r['device']} | "
                     f"{'yes' if r['compatible'] else 'no'} | {r['ops_on_device']} | "
                     f"{r['ops_on_cpu']} | "
                     f"{first['op'] + ': ' + first['reason'] if first else '-'} |")
    return lines


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
    rows = [r for r in result["results"] if not r["error"] and _kind(r) == "host"]
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
