"""The report's opening answer: which variant to ship within an accuracy budget.

`recommend(variants, stages, max_drop)` picks, among the variants at most
`max_drop` points below the float baseline (their `delta_points`), the
smallest file (gzip bytes; then the more accurate) and, per device profile
that measures speed, the fastest (host median ms; NPU cycles); it names the
stages that produced each. Whatever the budget, it lists the stages none of
whose variants is on any Pareto front (every one is matched or beaten on
accuracy and on size and on every measured speed by another variant).

Example:
    rec = recommend(report["variants"], report["stages"], 1.0, report["pareto"])
    print(format_recommendation(rec))
"""

# The speed each profile kind measures, lower is better (tfcompress.report's columns).
SPEED_KEYS = {"host": ("median_ms", "median ms"), "npu": ("cycles", "Vela cycles")}


def _pick(variants, index):
    v = variants[index]
    return {"index": index, "stage": v["stage"], "mode": v["mode"], "top1": v["top1"],
            "delta_points": v["delta_points"], "gzip_bytes": v["gzip_bytes"],
            "file_bytes": v["file_bytes"], "compression": v.get("compression")}


def _made_by(stages, stage_name):
    """The stage kinds that led to `stage_name`, in order ("train -> prune")."""
    names = [s["name"] for s in stages]
    upto = names.index(stage_name) + 1 if stage_name in names else len(names)
    return " -> ".join(s["kind"] for s in stages[:upto])


def dominated_stages(variants, stages, fronts):
    """Names of the stages with variants, none of them on any front in `fronts` (lists of
    variant indices: size, and each device's speed)."""
    on_front = {i for front in fronts for i in front}
    out = []
    for stage in stages:
        mine = [i for i, v in enumerate(variants) if v["stage"] == stage["name"]]
        if mine and not on_front.intersection(mine):
            out.append(stage["name"])
    return out


def recommend(variants, stages, max_drop, pareto=None):
    """The recommendation dict (see the module docstring); `max_drop` None: no budget, only
    the dominated stages. Variants need `delta_points` (tfcompress.report sets it)."""
    pareto = pareto or {}
    fronts = [pareto.get("gzip_bytes", [])]
    fronts += [front for key, front in pareto.items()
               if key not in ("gzip_bytes",) and isinstance(front, list)]
    rec = {"max_drop": max_drop, "smallest": None, "fastest": {},
           "dominated_stages": dominated_stages(variants, stages, fronts)}
    if max_drop is None:
        return rec
    within = [i for i, v in enumerate(variants)
              if v.get("delta_points") is not None and v["delta_points"] >= -max_drop - 1e-9]
    rec["within_budget"] = len(within)
    if not within:
        return rec
    best = min(within, key=lambda i: (variants[i]["gzip_bytes"], -variants[i]["top1"], i))
    rec["smallest"] = {**_pick(variants, best),
                       "made_by": _made_by(stages, variants[best]["stage"])}
    devices = {}
    for v in variants:
        for device, lat in v["latency"].items():
            devices.setdefault(device, lat.get("kind", "host"))
    for device, kind in devices.items():
        if kind not in SPEED_KEYS:
            continue  # emulated and static profiles measure no speed
        key, label = SPEED_KEYS[kind]
        timed = [i for i in within if key in variants[i]["latency"].get(device, {})]
        if timed:
            fastest = min(timed, key=lambda i: (variants[i]["latency"][device][key],
                                                variants[i]["gzip_bytes"], i))
            rec["fastest"][device] = {**_pick(variants, fastest), "measure": label,
                                      "value": variants[fastest]["latency"][device][key],
                                      "made_by": _made_by(stages, variants[fastest]["stage"])}
    return rec


def _name(pick):
    return (f"**{pick['stage']} {pick['mode']}** ({100 * pick['top1']:.2f}%, "
            f"{pick['delta_points']:+.2f} pts, {pick['gzip_bytes']:,} gzip bytes"
            + (f", {pick['compression']:g}x" if pick.get("compression") else "")
            + f"; made by {pick['made_by']})")


def format_recommendation(rec):
    """Markdown lines for the top of report.md (empty when there is nothing to say)."""
    lines = []
    if rec["max_drop"] is not None:
        points = "point" if rec["max_drop"] == 1 else "points"
        budget = f"at most {rec['max_drop']:g} {points} below the float baseline"
        if rec["smallest"] is None:
            lines.append(f"**No variant is {budget}** (budget.max_drop): train longer, "
                         "compress less, or raise the budget.")
        else:
            lines.append(f"Recommended, the smallest file {budget}: {_name(rec['smallest'])}.")
            same = []
            for device, pick in rec["fastest"].items():
                value = (f"{pick['value']:,}" if isinstance(pick["value"], int)
                         else f"{pick['value']:.3f}")
                if pick["index"] == rec["smallest"]["index"]:
                    same.append(f"{device} ({value} {pick['measure']})")
                else:
                    lines.append(f"Fastest on {device} within the budget: {_name(pick)}, "
                                 f"{value} {pick['measure']}.")
            if same:
                lines[0] += (
                    f" It is also the fastest within the budget on {' and '.join(same)}.")
    for name in rec["dominated_stages"]:
        lines.append(f"Stage {name}: every variant it produced is dominated (on size and on "
                     "each device's speed another variant is as accurate and cheaper, so none "
                     "is on a Pareto front); the recipe can drop it.")
    return lines
