"""The report's recommendation on a hand-built report: smallest and fastest within the budget."""

from tfcompress.recommend import format_recommendation, recommend
from tfcompress.report import pareto_front

STAGES = [{"name": "01-train", "kind": "train"}, {"name": "02-prune", "kind": "prune"},
          {"name": "03-qat", "kind": "qat"}]


def _variant(stage, mode, top1, gzip, ms=None, cycles=None):
    latency = {}
    if ms is not None:
        latency["host-1t"] = {"kind": "host", "median_ms": ms}
    if cycles is not None:
        latency["ethos-u55-128"] = {"kind": "npu", "cycles": cycles}
    latency["edgetpu"] = {"kind": "static", "compatible": True}
    return {"stage": stage, "mode": mode, "top1": top1, "gzip_bytes": gzip,
            "file_bytes": gzip + 100, "delta_points": round(100 * (top1 - 0.92), 2),
            "compression": round(200_000 / gzip, 2), "latency": latency}


VARIANTS = [
    _variant("01-train", "float32", 0.920, 200_000, ms=0.050),
    _variant("01-train", "int8_full", 0.921, 50_000, ms=0.020, cycles=80_000),
    _variant("02-prune", "float32", 0.913, 40_000, ms=0.049),               # -0.7: in
    _variant("02-prune", "int8_full", 0.911, 9_000, ms=0.021, cycles=60_000),   # -0.9: in
    _variant("02-prune", "int4_w4a8", 0.905, 6_000, ms=0.019, cycles=70_000),   # -1.5: out
    _variant("03-qat", "int8_full", 0.909, 9_500, ms=0.022, cycles=61_000),     # dominated
]


def _pareto(variants):
    def front(device, key):
        have = [i for i, v in enumerate(variants) if key in v["latency"].get(device, {})]
        return sorted(have[i] for i in pareto_front(
            [(variants[j]["latency"][device][key], variants[j]["top1"]) for j in have]))
    return {"gzip_bytes": sorted(pareto_front([(v["gzip_bytes"], v["top1"]) for v in variants])),
            "latency": front("host-1t", "median_ms"), "latency_device": "host-1t",
            "npu_cycles": front("ethos-u55-128", "cycles"), "npu_device": "ethos-u55-128"}


def test_smallest_and_fastest_within_the_budget():
    rec = recommend(VARIANTS, STAGES, 1.0, _pareto(VARIANTS))
    smallest = rec["smallest"]
    # The int4 file is smaller but 1.5 points down: outside the budget.
    assert (smallest["stage"], smallest["mode"]) == ("02-prune", "int8_full")
    assert smallest["made_by"] == "train -> prune"
    assert rec["within_budget"] == 4
    host = rec["fastest"]["host-1t"]
    assert (host["stage"], host["mode"]) == ("01-train", "int8_full")   # 0.020 ms
    npu = rec["fastest"]["ethos-u55-128"]
    assert (npu["stage"], npu["mode"], npu["value"]) == ("02-prune", "int8_full", 60_000)
    assert "edgetpu" not in rec["fastest"]          # a static check measures no speed
    assert rec["dominated_stages"] == ["03-qat"]
    lines = format_recommendation(rec)
    assert lines[0].startswith("Recommended, the smallest file at most 1 point below the float "
                               "baseline: **02-prune int8_full** (91.10%, -0.90 pts, 9,000 gzip")
    assert "It is also the fastest within the budget on ethos-u55-128 (60,000 Vela cycles)" \
        in lines[0]
    assert lines[1].startswith("Fastest on host-1t within the budget: **01-train int8_full**")
    assert lines[2].startswith("Stage 03-qat: every variant it produced is dominated")


def test_a_wider_budget_takes_the_smaller_file():
    rec = recommend(VARIANTS, STAGES, 2.0, _pareto(VARIANTS))
    assert (rec["smallest"]["stage"], rec["smallest"]["mode"]) == ("02-prune", "int4_w4a8")


def test_nothing_within_the_budget_is_said_plainly():
    rec = recommend(VARIANTS[2:], STAGES, 0.1, _pareto(VARIANTS[2:]))
    assert rec["smallest"] is None and rec["fastest"] == {}
    text = "\n".join(format_recommendation(rec))
    assert "No variant is at most 0.1 points below" in text


def test_without_a_budget_only_dominated_stages_are_named():
    rec = recommend(VARIANTS, STAGES, None, _pareto(VARIANTS))
    assert rec["smallest"] is None
    lines = format_recommendation(rec)
    assert len(lines) == 1 and lines[0].startswith("Stage 03-qat: every variant")


def test_pareto_axes_label_their_ticks():
    from tfcompress.report import pareto_figure
    import matplotlib.pyplot as plt
    report = {"recipe": {"name": "hand"}, "variants": VARIANTS,
              "pareto": _pareto(VARIANTS)}
    fig = pareto_figure(report)
    try:
        size, host, npu = fig.axes
        fig.canvas.draw()
        # gzip bytes span 6k..200k: log axis with 1-2-5 ticks, each labelled ("10k", "20k", ...).
        assert size.get_xscale() == "log"
        labels = [t.get_text() for t in size.get_xticklabels() if t.get_text()]
        assert {"10k", "20k", "50k", "100k"} <= set(labels), labels
        # Latency spans under a decade: linear, with numbers on its ticks.
        assert host.get_xscale() == "linear"
        assert len([t for t in host.get_xticklabels() if t.get_text()]) >= 3
        names = {t.get_text() for t in size.texts}
        assert {"02-prune int8_full", "03-qat int8_full"} <= names   # whole stage names
    finally:
        plt.close(fig)
