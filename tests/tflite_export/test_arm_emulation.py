"""Arm emulation: set-up errors, cpuinfo, kernel mapping; and real runs under QEMU.

The emulator tests skip when the cache is not set up (tests never download):
run `python -c "from tflite_export import arm_emulation; arm_emulation.set_up()"` once.
They work in a temporary cache that links to the real one, so the per-CPU
roots they make (a deliberately wrong one included) never land in it.
"""

import os

import numpy as np
import pytest

from tflite_export import arm_emulation
from tflite_export.arm_emulation import ArmEmulationError

LIB = arm_emulation.LIBRARY


def test_unknown_device_lists_the_cpus():
    with pytest.raises(ArmEmulationError) as e:
        arm_emulation.measure("missing.tflite", "arm-cortex-m4")
    message = str(e.value)
    assert "'arm-cortex-m4'" in message and "\n" not in message
    assert all(name in message for name in arm_emulation.ARM_CPUS)


def test_set_up_without_apt_get_says_so_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(arm_emulation.sys, "platform", "linux")
    monkeypatch.setattr(arm_emulation.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(arm_emulation.shutil, "which",
                        lambda tool: None if tool == "apt-get" else f"/usr/bin/{tool}")
    cache = tmp_path / "arm64"
    with pytest.raises(ArmEmulationError) as e:
        arm_emulation.set_up(str(cache), log=lambda line: None)
    message = str(e.value)
    assert "apt-get not found" in message and "other devices are unaffected" in message
    assert "\n" not in message
    assert os.listdir(tmp_path) == []


def test_set_up_refuses_a_non_x86_host(tmp_path, monkeypatch):
    monkeypatch.setattr(arm_emulation.platform, "machine", lambda: "aarch64")
    with pytest.raises(ArmEmulationError, match="Linux x86_64 host.*other devices are unaffected"):
        arm_emulation.set_up(str(tmp_path / "arm64"), log=lambda line: None)
    assert os.listdir(tmp_path) == []


def test_set_up_refuses_a_folder_that_is_not_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(arm_emulation, "_check_host", lambda: None)
    (tmp_path / "notes.txt").write_text("mine")
    assert not arm_emulation.is_set_up(str(tmp_path))
    with pytest.raises(ArmEmulationError, match="not a tfcompress Arm emulator"):
        arm_emulation.set_up(str(tmp_path), log=lambda line: None)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFCOMPRESS_ARM_CACHE", str(tmp_path))
    assert arm_emulation.cache_dir() == str(tmp_path)
    monkeypatch.delenv("TFCOMPRESS_ARM_CACHE")
    assert arm_emulation.cache_dir().endswith(os.path.join(".cache", "tfcompress", "arm64"))


@pytest.mark.parametrize("device, part, dotprod", [
    ("arm-cortex-a53", "0xd03", False), ("arm-cortex-a72", "0xd08", False),
    ("arm-cortex-a76", "0xd0b", True), ("arm-neoverse-n1", "0xd0c", True)])
def test_cpuinfo_names_the_cpu_part_and_its_features(device, part, dotprod):
    fields = dict(line.split(":", 1) for line in arm_emulation.cpuinfo(device).splitlines()
                  if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["CPU part"] == part and fields["CPU implementer"] == "0x41"
    assert ("asimddp" in fields["Features"].split()) == dotprod
    assert {"fp", "asimd"} <= set(fields["Features"].split())


def test_executed_kernels_maps_blocks_to_xnnpack_symbols():
    nm = "\n".join([
        "0000000000001000 0000000000000100 t xnn_f32_spmm_minmax_ukernel_32x1__neonfma",
        "0000000000001000 t $x",                                   # mapping symbol: ignored
        "0000000000001100 0000000000000040 T xnn_create_convolution2d_nhwc_f32",  # no ukernel
        "0000000000002000 t xnn_qs8_gemm_ukernel_4x16c4__asm_aarch64_neondot",   # asm: no size
        "0000000000003000 0000000000000010 t xnn_f32_vadd_ukernel__neon_u8",
        "0000000000004000 0000000000000020 r xnn_table_ukernel_data",           # data: ignored
        "                 U memcpy",
    ])
    maps = [f"5500000000-5500001000 r--p 00000000 fe:00 7 /cache/site/ai_edge_litert/{LIB}",
            f"5500001000-5500005000 r-xp 00001000 fe:00 7 /cache/site/ai_edge_litert/{LIB}"]
    log = ["----------------", "IN: ",
           "0x5500001010:  d503201f  nop",                 # in spmm
           "0x5500001014:  d503201f  nop",                 # same block: not a block start
           "", "IN: ", "0x5500001110:  d503201f  nop",     # xnn_create_...: not a ukernel
           "IN: ", "0x5500002400:  d503201f  nop",         # the unsized asm kernel
           "IN: ", "0x5500003020:  d503201f  nop",         # past vadd's end (size 0x10)
           "IN: ", "0x5500004000:  d503201f  nop",         # data symbol's address
           "IN: _start", "0x0000400000:  d503201f  nop"]   # outside the library
    assert arm_emulation.executed_kernels(nm, maps, log) == [
        "xnn_f32_spmm_minmax_ukernel_32x1__neonfma",
        "xnn_qs8_gemm_ukernel_4x16c4__asm_aarch64_neondot"]
    assert arm_emulation.executed_kernels(nm, maps[:0], log) == []   # library not mapped


def test_compare_outputs_integer_exact_float_within_tolerance():
    q = np.array([[1, -5, 7]], np.int8)
    assert arm_emulation.compare_outputs([q], [q.copy()]) == (
        True, 0.0, "bit-exact (integer outputs)")
    match, diff, _ = arm_emulation.compare_outputs([q], [q + np.int8(1)])
    assert not match and diff == 1.0
    f = np.array([0.5, 1.0], np.float32)
    match, diff, compare = arm_emulation.compare_outputs([f], [f + np.float32(4e-6)])
    assert match and 0 < diff < 1e-5 and compare == "float within 1e-05"
    assert not arm_emulation.compare_outputs([f], [f + np.float32(1e-4)])[0]
    assert arm_emulation.compare_outputs([q, f], [q, f])[2] == \
        "bit-exact (integer outputs), float within 1e-05"


# ---- with the emulator --------------------------------------------------------------------

@pytest.fixture
def arm_cache(tmp_path):
    """A cache linking to the real one's files; its per-CPU roots are made in tmp_path."""
    real = arm_emulation.cache_dir()
    if not arm_emulation.is_set_up(real):
        pytest.skip(f"the Arm emulator is not set up in {real} (arm_emulation.set_up())")
    for entry in ("manifest.json", arm_emulation.QEMU, "root", "site"):
        os.symlink(os.path.join(real, entry), tmp_path / entry)
    return str(tmp_path)


@pytest.fixture
def kws_int8(shared_dir):
    return os.path.join(shared_dir, "data", "mlperf_tiny_kws", "ds_cnn_reference_int8.tflite")


@pytest.mark.slow
@pytest.mark.parametrize("device, gemm", [("arm-cortex-a76", "neondot"),
                                          ("arm-cortex-a53", "mlal")])
def test_kws_int8_matches_the_host_bit_for_bit(arm_cache, kws_int8, device, gemm):
    import importlib.metadata
    result = arm_emulation.measure(kws_int8, device, runs=2, cache=arm_cache)
    assert result["emulated"] is True and result["cpu"] == arm_emulation.ARM_CPUS[device][0]
    assert result["outputs_match_host"] and result["max_abs_diff"] == 0.0
    assert result["compare"] == "bit-exact (integer outputs)"
    assert result["xnnpack_used"] and result["sparse_path_used"] is False
    assert result["litert"] == importlib.metadata.version("ai-edge-litert")
    assert result["qemu"].startswith("7.2")
    gemms = [k for k in result["kernels"] if k.startswith("xnn_qs8_qc8w_gemm")]
    assert gemms and all(gemm in k for k in gemms)
    if device == "arm-cortex-a53":      # Armv8.0: no dot-product kernel may run
        assert not any("neondot" in k for k in result["kernels"])
    assert result["emulated_invoke_ms"] > 0 and "not device time" in result["emulated_time_note"]
    assert result["instructions"] is None and "plugin" in result["instructions_note"]


@pytest.mark.slow
def test_untraced_run_reports_no_kernels(arm_cache, kws_int8):
    result = arm_emulation.measure(kws_int8, "arm-cortex-a76", runs=1, trace_kernels=False,
                                   cache=arm_cache)
    assert result["outputs_match_host"] and result["xnnpack_used"]
    assert result["kernels"] is None and result["sparse_path_used"] is None


def _sparse_1x1_model():
    """The shape XNNPACK's sparse (NCHW) path needs: a 3x3 stride-2 conv on 3 channels with
    padding 1 first, then 1x1 convs with > 2/3 zero weights, ending in a global pooling."""
    from tfcompress.keras import keras
    layers = keras.layers
    inputs = keras.Input((32, 32, 3), batch_size=1)
    x = layers.ZeroPadding2D(1)(inputs)     # XNNPACK folds this PAD into the conv's padding
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.Conv2D(32, 1, activation="relu")(x)
    x = layers.Conv2D(32, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(10)(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.kernel_size == (1, 1):
            kernel, bias = layer.get_weights()
            kernel[rng.random(kernel.shape) < 0.8] = 0.0
            layer.set_weights([kernel, bias])
    return model


@pytest.mark.slow
def test_sparse_weights_take_xnnpack_spmm_path_on_arm(arm_cache, tmp_path):
    from tflite_export.convert import convert
    model = _sparse_1x1_model()
    results = {}
    for sparse in (False, True):
        path = tmp_path / f"sparse_{sparse}.tflite"
        path.write_bytes(convert(model, "float32", sparse=sparse))
        results[sparse] = arm_emulation.measure(str(path), "arm-cortex-a76", runs=1,
                                                cache=arm_cache)
    for result in results.values():
        assert result["outputs_match_host"] and result["compare"] == "float within 1e-05"
        assert result["xnnpack_used"]
    # Stored sparse (DENSIFY ops) the delegate hints sparse inference: spmm runs,
    # and the first conv writes NCHW. Stored dense, the same zeros stay on the GEMM path.
    assert results[True]["sparse_path_used"]
    assert any("conv_hwc2chw" in k for k in results[True]["kernels"])
    assert results[False]["sparse_path_used"] is False


@pytest.mark.slow
def test_guest_crash_is_one_line_error(arm_cache, kws_int8, monkeypatch):
    # A Cortex-A53 that /proc/cpuinfo calls an A76: XNNPACK picks dot-product kernels
    # the emulated CPU lacks.
    monkeypatch.setitem(arm_emulation.ARM_CPUS, "arm-liar",
                        ("cortex-a53", "0xd0b", arm_emulation.ARM_CPUS["arm-cortex-a76"][2]))
    with pytest.raises(ArmEmulationError) as e:
        arm_emulation.measure(kws_int8, "arm-liar", runs=1, trace_kernels=False,
                              cache=arm_cache)
    assert "SIGILL" in str(e.value) and "uncaught target signal 4" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_guest_timeout_is_one_line_error(arm_cache, kws_int8):
    with pytest.raises(ArmEmulationError, match="timed out after 0.5 s"):
        arm_emulation.measure(kws_int8, "arm-cortex-a76", timeout_s=0.5, cache=arm_cache)


def test_bench_where_the_arm_setup_cannot_be_made_is_one_line_and_others_run(
        tmp_path, monkeypatch, kws_int8):
    from tflite_export import benchmark
    monkeypatch.setenv("TFCOMPRESS_ARM_CACHE", str(tmp_path / "arm64"))
    monkeypatch.setattr(arm_emulation.shutil, "which",
                        lambda tool: None if tool == "apt-get" else f"/usr/bin/{tool}")
    lines = []
    result = benchmark.benchmark_models([kws_int8], devices=["arm-cortex-a76", "ethos-u55-128"],
                                        log=lines.append)
    arm, npu = result["results"]
    assert arm["kind"] == "arm-emulated" and "apt-get not found" in arm["error"]
    assert npu["error"] is None and npu["cycles"] > 0
    assert result["failures"] == 1
    assert sum("apt-get not found" in line for line in lines) == 1
    assert not (tmp_path / "arm64").exists()


@pytest.mark.slow
def test_bench_arm_profiles_report_match_and_kernels(arm_cache, kws_int8, monkeypatch):
    from tflite_export import benchmark
    monkeypatch.setenv("TFCOMPRESS_ARM_CACHE", arm_cache)
    result = benchmark.benchmark_models([kws_int8], devices=["arm-cortex-a76", "arm-cortex-a53"],
                                        log=None)
    a76, a53 = result["results"]
    for row in (a76, a53):
        assert row["error"] is None and row["emulated"] and row["outputs_match_host"]
        assert row["xnnpack_used"] and row["sparse_path_used"] is False
    table = benchmark.format_markdown(result)
    assert "| ds_cnn_reference_int8.tflite | arm-cortex-a76 | yes: bit-exact" in table
    row_of = {d: next(line for line in table.splitlines() if f"| {d} |" in line)
              for d in ("arm-cortex-a76", "arm-cortex-a53")}
    assert "neondot" in row_of["arm-cortex-a76"]
    assert "neondot" not in row_of["arm-cortex-a53"]
