"""Arm Ethos-U NPU cost of a `.tflite`: Arm's Vela compiler's estimate, not a measurement.

Vela (PyPI `ethos-u-vela`, pinned in setup.py) compiles an int8/int16 file for an
Ethos-U55/U65/U85 and estimates, from its model of the NPU and memory system, the
cycles of one inference, the time at the configured clock, the SRAM and flash it
needs, which ops run on the NPU and which fall back to the Cortex-M CPU (those have
no cycle estimate: the total is NPU work only), and cycles per layer. We run it in a
child process on its default system and memory configuration for the accelerator
(`Ethos_U55_High_End_Embedded` / `Shared_Sram` for U55: 500 MHz) and read its
summary and per-layer CSV files.

A float model is "not for this NPU" (its feature maps must be int8/int16): that is
a result (`not_applicable`), not an error.

Example:
    cost = vela_estimate("model_int8.tflite", "ethos-u55-128")
    cost["cycles"], cost["inference_ms"], cost["sram_kib"], cost["cpu_ops"]
"""

import csv
import glob
import os
import re
import sys
import tempfile

from tflite_export import child_process
from tflite_export.tensors import load_parsed
from tflite_export.tflite_file import tensor_type_name

# The NPU's feature-map types (Vela: 'Feature-map dataTypes must be one of INT8, INT16...').
NPU_ACTIVATION_TYPES = ("INT8", "UINT8", "INT16")
NOT_FOR_NPU = "not for this NPU (needs int8/int16 activations: export int8_full or int16x8)"
_VELA_BOOTSTRAP = ("import sys\n"
                   "from ethosu.vela.vela import main\n"
                   "sys.argv = ['vela'] + sys.argv[2:]\n"
                   "sys.exit(main())\n")


def vela_version():
    """The installed Vela's version, or None."""
    try:
        from importlib.metadata import version
        return version("ethos-u-vela")
    except Exception:  # not installed
        return None


def npu_applicable(path):
    """True when some op computes on int8/int16 feature maps (what the NPU runs)."""
    _, _, model = load_parsed(path)
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            for index in op.outputs:
                if index >= 0 and tensor_type_name(subgraph.tensors[index]) in \
                        NPU_ACTIVATION_TYPES:
                    return True
    return False


def _read_summary(out_dir):
    found = glob.glob(os.path.join(out_dir, "*_summary_*.csv"))
    if not found:
        return None
    with open(found[0], newline="") as f:
        return next(csv.DictReader(f))


def _read_layers(out_dir):
    found = glob.glob(os.path.join(out_dir, "*_per-layer.csv"))
    if not found:
        return []
    with open(found[0], newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"op": r["Original Operator"], "npu_op": r["NNG Operator"], "target": r["Target"],
             "cycles": int(float(r["Op Cycles"])), "macs": int(float(r["MAC Count"])),
             "name": r["Name"]} for r in rows]


def vela_estimate(path, accelerator, timeout_s=300):
    """Vela's estimate for `path` on `accelerator` (e.g. "ethos-u55-128").

    Returns:
        {"vela", "accelerator", "system_config", "memory_mode", "clock_mhz", "cycles",
         "npu_cycles", "inference_ms", "sram_kib", "flash_kib", "dram_kib", "macs",
         "npu_ops", "cpu_ops", "cpu_op_types",
         "layers": [{op, npu_op, target, cycles, macs, name}]},
        or {"vela", "accelerator", "not_applicable": NOT_FOR_NPU} for a float model.

    Raises:
        RuntimeError: Vela failed; the message is one line with its reason.
    """
    base = {"vela": vela_version(), "accelerator": accelerator}
    if not npu_applicable(path):
        return dict(base, not_applicable=NOT_FOR_NPU)
    with tempfile.TemporaryDirectory(prefix="tfcompress-vela-") as out_dir:
        cmd = [sys.executable, "-c", _VELA_BOOTSTRAP, "-", os.path.abspath(path),
               "--accelerator-config", accelerator, "--output-dir", out_dir,
               "--verbose-performance"]
        stdout, error = child_process.run(cmd, timeout_s)
        if error:
            raise RuntimeError(f"vela failed: {error}")
        summary, layers = _read_summary(out_dir), _read_layers(out_dir)
    if summary is None:
        raise RuntimeError("vela wrote no summary: " + child_process.last_line(stdout))
    counts = {kind: int(m.group(1)) for kind in ("CPU", "NPU")
              for m in [re.search(rf"^{kind} operators = (\d+)", stdout, re.M)] if m}
    # Ops Vela leaves to the CPU are named in its warnings, once per op.
    cpu_types = sorted(set(re.findall(r"^Warning \(supported operators\) operator: (\w+)",
                                      stdout, re.M)))
    return dict(
        base, system_config=summary["system_config"], memory_mode=summary["memory_mode"],
        clock_mhz=float(summary["core_clock"]) / 1e6, cycles=int(float(summary["cycles_total"])),
        npu_cycles=int(float(summary["cycles_npu"])),
        inference_ms=float(summary["inference_time"]) * 1e3,
        sram_kib=float(summary["sram_memory_used"]),
        flash_kib=float(summary["off_chip_flash_memory_used"]) +
        float(summary["on_chip_flash_memory_used"]),
        dram_kib=float(summary["dram_memory_used"]),
        macs=int(float(summary["nn_macs"])), npu_ops=counts.get("NPU"),
        cpu_ops=counts.get("CPU"), cpu_op_types=cpu_types, layers=layers)
