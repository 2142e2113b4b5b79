"""Running a `.tflite` on an emulated Arm Cortex-A: correctness and XNNPACK's kernel path.

The aarch64 build of LiteRT (the host's ai-edge-litert version) runs under
Debian's user-mode QEMU (`qemu-aarch64-static`) on an aarch64 Debian Python.
`measure` feeds it the same seeded inputs as the host interpreter and reports
whether the outputs match the host's, whether XNNPACK ran, and which XNNPACK
microkernels ran (`..._neondot` int8 GEMMs on a Cortex-A76, `spmm` kernels on
XNNPACK's sparse path, which it never takes on an x86 host with AVX).

Emulated time is not device time (100-550x slower than a device): every figure
says `emulated`.

`set_up` downloads everything once into `cache_dir()` (about 200 MB; no root
needed, the machine's apt configuration is untouched): the aarch64 Python and
its libraries as Debian packages, qemu-user-static, and the aarch64 wheels.

LiteRT reads the CPU's model from /proc/cpuinfo, which QEMU 7.2 passes through
from the x86 host (LiteRT then crashes or silently skips XNNPACK). So each CPU
gets its own root, `cpus/<cpu>-<hash>/`: links to the shared root plus its own
`proc/cpuinfo`, which QEMU's `-L` prefix makes the guest read. The file is
named by its content's hash, so runs never race over it.

Example:
    from tflite_export import arm_emulation
    result = arm_emulation.measure("kws_int8.tflite", "arm-cortex-a76")
    result["outputs_match_host"], result["kernels"], result["emulated_invoke_ms"]
"""

import bisect
import compileall
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from tfcompress.errors import TfcompressError
from tflite_export import child_process

# Profile name -> (QEMU's -cpu name, the MIDR part number, the Features line).
# The part must match QEMU's CPU (a mismatch gives SIGILL on int8 models);
# A53 and A72 are Armv8.0 (no dot product), A76 and N1 Armv8.2 with asimddp.
# QEMU_CPU=max is left out: LiteRT's int8 results are wrong on it.
_V80 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
        "lrcpc dcpop asimddp ssbs")
ARM_CPUS = {
    "arm-cortex-a53": ("cortex-a53", "0xd03", _V80),
    "arm-cortex-a72": ("cortex-a72", "0xd08", _V80),
    "arm-cortex-a76": ("cortex-a76", "0xd0b", _V82),
    "arm-neoverse-n1": ("neoverse-n1", "0xd0c", _V82),
}
# MIDR variant and revision of QEMU's models (r0p4, r0p3, r4p1, r4p1).
_REVISIONS = {"cortex-a53": ("0x0", 4), "cortex-a72": ("0x0", 3),
              "cortex-a76": ("0x4", 1), "neoverse-n1": ("0x4", 1)}

EMULATED_TIME_NOTE = "emulated on x86 with QEMU: not device time (100-550x slower than a device)"
INSTRUCTIONS_NOTE = (
    "no guest instruction count: Debian 12's qemu-user-static (QEMU 7.2) is built without TCG "
    "plugin support (`-plugin` is an unknown option), so the instruction-counting plugin "
    "(libinsn.so) cannot be loaded; counting from `-d exec,nochain` logs would write one line "
    "per executed block (gigabytes per invoke)")
FLOAT_TOLERANCE = 1e-5
GUEST_PYTHON = "3.11"          # Debian 12 bookworm's Python: the wheels are for it
LIBRARY = "libpywrap_litert_common.so"   # the LiteRT library holding XNNPACK
QEMU = "qemu-aarch64-static"
# Packages apt pulls in that the Python never runs (dpkg's and perl's worlds).
_SKIP_DEBS = re.compile(r"^(dpkg|perl.*|libperl.*|tar|install-info|mailcap|media-types|"
                        r"mime-support)$")
_UNAFFECTED = "other devices are unaffected"


class ArmEmulationError(TfcompressError, ValueError):
    """Arm emulation cannot be set up or a run failed; the message says why and the fix."""


def cache_dir():
    """Where the emulator lives: env TFCOMPRESS_ARM_CACHE, else ~/.cache/tfcompress/arm64."""
    return (os.environ.get("TFCOMPRESS_ARM_CACHE")
            or os.path.join(os.path.expanduser("~"), ".cache", "tfcompress", "arm64"))


def _litert_version():
    return importlib.metadata.version("ai-edge-litert")


def _manifest(cache):
    try:
        with open(os.path.join(cache, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_set_up(cache=None):
    """True when `cache` holds a complete emulator for the host's LiteRT version (no network)."""
    cache = cache or cache_dir()
    manifest = _manifest(cache)
    return bool(manifest and manifest.get("litert") == _litert_version() and all(
        os.path.isfile(os.path.join(cache, p)) for p in
        (QEMU, f"root/usr/bin/python{GUEST_PYTHON}", f"site/ai_edge_litert/{LIBRARY}")))


def _check_host():
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise ArmEmulationError(
            f"Arm emulation needs a Linux x86_64 host, this is {platform.system()} "
            f"{platform.machine()}: use another device; {_UNAFFECTED}")
    missing = [t for t in ("apt-get", "apt-cache", "dpkg") if not shutil.which(t)]
    if missing:
        raise ArmEmulationError(
            f"Arm emulation set-up needs apt-get, apt-cache and dpkg (a Debian host); "
            f"{', '.join(missing)} not found on PATH: run it on Debian 12 or skip the arm-* "
            f"devices; {_UNAFFECTED}")


def _step(what, cmd, cwd=None):
    """Runs one set-up command; its CompletedProcess, or an ArmEmulationError naming `what`."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ArmEmulationError(child_process.one_line(
            f"Arm emulation set-up failed to {what}: {e}; {_UNAFFECTED}")) from e
    if proc.returncode != 0:
        last = child_process.last_line(proc.stderr) or child_process.last_line(proc.stdout)
        raise ArmEmulationError(child_process.one_line(
            f"Arm emulation set-up failed to {what} ({last}): check the network and the apt "
            f"sources, then retry; {_UNAFFECTED}"))
    return proc


def set_up(cache=None, log=print):
    """Downloads and unpacks the emulator into `cache` once; returns its path.

    Builds in a temporary folder beside `cache` and renames it at the end, so
    an interrupted set-up leaves nothing half-written. Idempotent: a complete
    cache is returned as it is; one for another LiteRT version is replaced.

    Raises:
        ArmEmulationError: not Linux x86_64, no apt-get/apt-cache/dpkg, a
            download failed (offline), or `cache` is a folder that is not ours.
    """
    cache = os.path.abspath(cache or cache_dir())
    _check_host()
    if is_set_up(cache):
        return cache
    if os.path.isdir(cache) and os.listdir(cache) and _manifest(cache) is None:
        raise ArmEmulationError(f"{cache} exists but is not a tfcompress Arm emulator: remove "
                                f"it or set TFCOMPRESS_ARM_CACHE to another folder")
    parent, name = os.path.split(cache)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)                    # mkdtemp makes it private; the cache is not
    try:
        manifest = _build(tmp, cache, log)
        old = None
        if os.path.isdir(cache):            # another LiteRT version's, or an empty folder
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(cache, os.path.join(old, name))
        try:
            os.rename(tmp, cache)
        except OSError:
            if not is_set_up(cache):        # a concurrent set-up did not win either
                raise
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"Arm emulator ready in {cache}: QEMU {manifest['qemu']}, LiteRT {manifest['litert']}")
    return cache


def _build(tmp, cache, log):
    """Fills `tmp` with root/, site/, qemu-aarch64-static and manifest.json."""
    litert = _litert_version()
    apt = os.path.join(tmp, "apt")
    for d in ("lists/partial", "cache/archives/partial", "debs", "qemu"):
        os.makedirs(os.path.join(apt, d))
    open(os.path.join(apt, "status"), "w").close()
    host_arch = _step("ask dpkg the host architecture",
                      ["dpkg", "--print-architecture"]).stdout.strip()
    # Private lists, cache and dpkg status (only the machine's apt sources are read):
    # its package state is untouched and no root is needed to write it.
    private = ["-o", f"Dir::State::Lists={apt}/lists", "-o", f"Dir::Cache={apt}/cache",
               "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
               "-o", f"Dir::State::status={apt}/status", "-o", "Debug::NoLocking=1"]
    arm64 = private + ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64"]
    native = private + ["-o", f"APT::Architecture={host_arch}",
                        "-o", f"APT::Architectures::={host_arch}"]
    log("Arm emulator: apt-get update (private package lists, arm64 and host)")
    update = _step("update the package lists (apt-get update)", ["apt-get", "-q", *arm64,
                   "-o", f"APT::Architectures::={host_arch}", "update"])
    # apt-get update exits 0 when a source cannot be reached (offline): look at what came.
    if not any("arm64_Packages" in f for f in os.listdir(f"{apt}/lists")):
        why = next((line for line in update.stderr.splitlines()
                    if line.startswith(("E:", "W:"))), "no apt source serves arm64")
        raise ArmEmulationError(child_process.one_line(
            f"Arm emulation set-up could not download the arm64 package lists ({why}): check "
            f"the network and the apt sources, then retry; {_UNAFFECTED}", limit=500))
    deps = _step(f"resolve python{GUEST_PYTHON}'s arm64 packages (is this Debian 12?)",
                 ["apt-cache", *arm64, "depends", "--recurse", "--no-recommends",
                  "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
                  "--no-enhances", f"python{GUEST_PYTHON}", "libstdc++6"]).stdout
    debs = sorted({line.strip() for line in deps.splitlines() if line.strip()
                   and not line.startswith(" ") and "<" not in line
                   and not _SKIP_DEBS.match(line.strip())})
    log(f"Arm emulator: downloading {len(debs)} arm64 Debian packages")
    _step("download the arm64 packages", ["apt-get", "-q", *arm64, "download", *debs],
          cwd=f"{apt}/debs")
    root = os.path.join(tmp, "root")
    for deb in sorted(os.listdir(f"{apt}/debs")):
        _step(f"unpack {deb}", ["dpkg", "-x", os.path.join(apt, "debs", deb), root])
    log("Arm emulator: downloading qemu-user-static")
    _step("download qemu-user-static", ["apt-get", "-q", *native, "download",
                                        f"qemu-user-static:{host_arch}"], cwd=f"{apt}/qemu")
    qemu_deb = next(f for f in os.listdir(f"{apt}/qemu") if f.endswith(".deb"))
    _step("unpack qemu-user-static", ["dpkg", "-x", qemu_deb, "x"], cwd=f"{apt}/qemu")
    # Keep only the one emulator: the package holds ~30 of them (430 MB).
    shutil.copy2(os.path.join(apt, "qemu", "x", "usr", "bin", QEMU), os.path.join(tmp, QEMU))
    qemu_version = _step("run qemu", [os.path.join(tmp, QEMU), "--version"]).stdout
    qemu_version = qemu_version.splitlines()[0]
    log(f"Arm emulator: downloading the aarch64 wheels of ai-edge-litert=={litert}")
    # pip does not expand manylinux_2_N tags: name each one glibc 2.36 (bookworm) runs.
    tags = [f"--platform=manylinux_2_{n}_aarch64" for n in range(17, 37)]
    wheels = os.path.join(apt, "wheels")
    _step("download the aarch64 wheels (pip download)",
          [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *tags,
           "--platform=manylinux2014_aarch64", f"--python-version={GUEST_PYTHON}",
           "--implementation=cp", "-d", wheels, f"ai-edge-litert=={litert}"])
    site = os.path.join(tmp, "site")
    for wheel in sorted(os.listdir(wheels)):
        with zipfile.ZipFile(os.path.join(wheels, wheel)) as z:
            z.extractall(site)
    if sys.version_info[:2] == tuple(map(int, GUEST_PYTHON.split("."))):
        # Bytecode is the same on every CPU: compiled here it saves the guest ~2 s a run.
        log("Arm emulator: compiling the guest's Python files")
        stdlib = f"usr/lib/python{GUEST_PYTHON}"
        compileall.compile_dir(os.path.join(root, stdlib), quiet=2,
                               ddir=os.path.join(cache, "root", stdlib))
        compileall.compile_dir(site, quiet=2, ddir=os.path.join(cache, "site"))
    manifest = {"qemu": qemu_version.split(" version ", 1)[-1], "litert": litert,
                "python": GUEST_PYTHON, "debs": debs, "wheels": sorted(os.listdir(wheels))}
    shutil.rmtree(apt)
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def cpuinfo(device):
    """The /proc/cpuinfo text the guest reads for `device` (an ARM_CPUS name)."""
    cpu, part, features = _cpu(device)
    variant, revision = _REVISIONS[cpu]
    return (f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {features}\n"
            f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {variant}\n"
            f"CPU part\t: {part}\nCPU revision\t: {revision}\n\n")


def _cpu(device):
    if device not in ARM_CPUS:
        raise ArmEmulationError(f"unknown Arm CPU {device!r}; choose one of "
                                f"{', '.join(ARM_CPUS)}")
    return ARM_CPUS[device]


def _cpu_root(cache, device):
    """`cache`/cpus/<cpu>-<hash>: links to root/'s folders plus its own proc/cpuinfo."""
    text = cpuinfo(device)
    name = f"{ARM_CPUS[device][0]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    path = os.path.join(cache, "cpus", name)
    if os.path.isdir(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=os.path.dirname(path))
    try:
        os.chmod(tmp, 0o755)
        for entry in os.listdir(os.path.join(cache, "root")):
            os.symlink(os.path.join("..", "..", "root", entry), os.path.join(tmp, entry))
        os.makedirs(os.path.join(tmp, "proc"), exist_ok=True)
        with open(os.path.join(tmp, "proc", "cpuinfo"), "w") as f:
            f.write(text)
        os.rename(tmp, path)
    except OSError:
        if not os.path.isdir(path):         # else a concurrent run made the same one
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# Runs in the guest: argv = site, model, inputs.npz, outputs.npz, runs. Prints one JSON line.
GUEST_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from importlib.metadata import version
from ai_edge_litert.interpreter import Interpreter
site, model, inputs, outputs, runs = sys.argv[1:6]
it = Interpreter(model_path=model, num_threads=1)
it.allocate_tensors()
with np.load(inputs) as f:
    for i, d in enumerate(it.get_input_details()):
        it.set_tensor(d["index"], f[f"i{i}"])
it.invoke()
np.savez(outputs, **{f"o{i}": it.get_tensor(d["index"])
                     for i, d in enumerate(it.get_output_details())})
times = []
for _ in range(int(runs)):
    start = time.perf_counter()
    it.invoke()
    times.append((time.perf_counter() - start) * 1e3)
print(json.dumps({"times_ms": times, "litert": version("ai-edge-litert"),
                  "delegated": any(op["op_name"] == "DELEGATE" for op in it._get_ops_details()),
                  "maps": [l.rstrip("\n") for l in open("/proc/self/maps") if "LIBRARY" in l]}))
""".replace("LIBRARY", LIBRARY)


def library_base(maps_lines, library=LIBRARY):
    """The load address of `library` in /proc/self/maps lines (its mapping at offset 0)."""
    for line in maps_lines:
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith("/" + library) and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16)
    return None


def text_symbols(nm_listing):
    """Sorted (address, size or None, name) of the code symbols in `nm -S --defined-only` text."""
    symbols = []
    for line in nm_listing.splitlines():
        fields = line.split()
        if len(fields) in (3, 4) and fields[-2] in "tTwW" and not fields[-1].startswith("$"):
            size = int(fields[1], 16) if len(fields) == 4 else None
            symbols.append((int(fields[0], 16), size, fields[-1]))
    return sorted(symbols)


def block_starts(in_asm_lines):
    """Guest addresses of the translated blocks in a QEMU `-d in_asm` log (the line after IN:)."""
    after_in = False
    for line in in_asm_lines:
        if line.startswith("IN:"):
            after_in = True
        elif after_in and line.startswith("0x"):
            after_in = False
            yield int(line.split(":", 1)[0], 16)


def executed_kernels(nm_listing, maps_lines, in_asm_lines, library=LIBRARY):
    """Sorted names of the XNNPACK microkernels (xnn_*ukernel*) whose code QEMU translated.

    QEMU logs a block when it first translates it, so this is every kernel that
    ran at least once, while the model was loaded and invoked (weight-packing
    kernels included); it is empty when `library` is not mapped.

    Example:
        executed_kernels("0000000000001000 0000000000000100 t xnn_f32_gemm_ukernel_4x8\\n",
                         ["5500000000-5500100000 r-xp 00000000 fe:00 1 /x/" + LIBRARY],
                         ["IN: ", "0x5500001010:  d503201f  nop"])   # ['xnn_f32_gemm_ukernel_4x8']
    """
    base = library_base(maps_lines, library)
    symbols = text_symbols(nm_listing)
    if base is None or not symbols:
        return []
    addresses = [s[0] for s in symbols]
    names = set()
    for start in block_starts(in_asm_lines):
        i = bisect.bisect_right(addresses, start - base) - 1
        if i >= 0:
            address, size, name = symbols[i]
            if (size is None or start - base < address + size) and \
                    name.startswith("xnn_") and "ukernel" in name:
                names.add(name)
    return sorted(names)


def _host_run(path, seed):
    """(inputs, outputs) of the host interpreter on `random_inputs(..., seed)`."""
    from ai_edge_litert.interpreter import Interpreter
    from tflite_export.benchmark import random_inputs
    try:
        it = Interpreter(model_path=path, num_threads=1)
        it.allocate_tensors()
        inputs = random_inputs(it.get_input_details(), seed)
        for d, x in zip(it.get_input_details(), inputs):
            it.set_tensor(d["index"], x)
        it.invoke()
        return inputs, [it.get_tensor(d["index"]) for d in it.get_output_details()]
    except TfcompressError:
        raise
    except Exception as e:  # LiteRT raises ValueError/RuntimeError with its reason
        raise ArmEmulationError(child_process.one_line(
            f"the host interpreter cannot run {path}: {e}")) from e


def compare_outputs(host, guest):
    """(match, max_abs_diff, compare): integer outputs bit-exact, float within FLOAT_TOLERANCE."""
    match, worst, kinds = len(host) == len(guest), 0.0, set()
    for a, b in zip(host, guest):
        if a.shape != b.shape:
            return False, float("inf"), "shapes differ"
        exact = a.dtype.kind in "iub"
        kinds.add(exact)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = np.abs(a64 - b64)
        diff[np.isnan(a64) & np.isnan(b64)] = 0.0   # NaN where the host has NaN is a match
        diff = float(np.max(diff)) if diff.size else 0.0
        worst = max(worst, diff)
        match = match and (diff == 0.0 if exact else diff <= FLOAT_TOLERANCE)
    compare = {True: "bit-exact (integer outputs)",
               False: f"float within {FLOAT_TOLERANCE:g}"}
    return match, worst, ", ".join(compare[k] for k in sorted(kinds, reverse=True))


def measure(path, device, runs=3, seed=0, timeout_s=600, trace_kernels=True, cache=None):
    """Runs `path` on the emulated `device`; outputs against the host, XNNPACK's kernels.

    Sets the emulator up first when needed (a download, once). The guest runs
    one untimed invoke, then `runs` timed ones, on `random_inputs(details, seed)`,
    the same inputs the host interpreter gets (both 1 thread, default XNNPACK).

    Returns:
        {"emulated": True, "cpu", "qemu", "litert", "outputs_match_host",
         "max_abs_diff", "compare", "xnnpack_used", "sparse_path_used",
         "kernels", "emulated_invoke_ms", "emulated_time_note", "instructions",
         "instructions_note"}. `kernels` (sorted XNNPACK microkernel names that
        ran, loading included) and `sparse_path_used` (an spmm kernel ran) are
        None with trace_kernels=False. `xnnpack_used`: the XNNPACK delegate took
        ops (and, traced, one of its kernels ran).

    Raises:
        ArmEmulationError: an unknown device, a missing file, a set-up failure,
            or a guest crash (SIGILL, SIGSEGV) or timeout, in one line.

    Example:
        measure("kws_int8.tflite", "arm-cortex-a53")["outputs_match_host"]   # True
    """
    qemu_cpu = _cpu(device)[0]
    if not os.path.isfile(path):
        raise ArmEmulationError(f"{path} is not a file: give a .tflite model")
    if not isinstance(runs, int) or runs < 1:
        raise ArmEmulationError(f"runs must be an integer >= 1, got {runs!r}")
    cache = os.path.abspath(cache or cache_dir())
    if not is_set_up(cache):
        set_up(cache)
    nm = None
    if trace_kernels:
        nm = shutil.which("nm")
        if not nm:
            raise ArmEmulationError("tracing XNNPACK's kernels needs nm (binutils): install "
                                    "binutils, or pass trace_kernels=False")
    manifest, root = _manifest(cache), _cpu_root(cache, device)
    inputs, host_outputs = _host_run(path, seed)
    with tempfile.TemporaryDirectory(prefix="tfcompress-arm-") as tmp:
        np.savez(os.path.join(tmp, "inputs.npz"), **{f"i{i}": x for i, x in enumerate(inputs)})
        script = os.path.join(tmp, "guest.py")
        with open(script, "w") as f:
            f.write(GUEST_SCRIPT)
        log = os.path.join(tmp, "in_asm.log")
        qemu = [os.path.join(cache, QEMU), "-cpu", qemu_cpu, "-L", root,
                # The host's loader settings would point the guest at x86 libraries.
                "-U", "LD_PRELOAD", "-U", "LD_LIBRARY_PATH"]
        if trace_kernels:
            qemu += ["-d", "in_asm", "-D", log]
        # -I: no PYTHON* variables of the host; -S: no site-packages (the host's
        # x86 dist-packages would show through the -L prefix); -B: the cache stays as set up.
        guest = [os.path.join(cache, "root", "usr", "bin", f"python{GUEST_PYTHON}"),
                 "-I", "-S", "-B", script, os.path.join(cache, "site"), os.path.abspath(path),
                 os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "outputs.npz"), str(runs)]
        # ulimit -c 0: a guest crash must not drop a QEMU core file in the caller's folder.
        out, error = child_process.run(["/bin/sh", "-c", 'ulimit -c 0; exec "$@"', "sh",
                                        *qemu, *guest], timeout_s)
        if error:
            raise ArmEmulationError(child_process.one_line(
                f"the emulated {qemu_cpu} run of {os.path.basename(path)} failed: {error}"))
        report = json.loads(out.strip().splitlines()[-1])
        with np.load(os.path.join(tmp, "outputs.npz")) as f:
            guest_outputs = [f[f"o{i}"] for i in range(len(f.files))]
        kernels = None
        if trace_kernels:
            listing = subprocess.run([nm, "-S", "--defined-only",
                                      os.path.join(cache, "site", "ai_edge_litert", LIBRARY)],
                                     capture_output=True, text=True, check=True).stdout
            with open(log, errors="replace") as f:
                kernels = executed_kernels(listing, report["maps"], f)
    match, max_diff, compare = compare_outputs(host_outputs, guest_outputs)
    return {
        "emulated": True, "cpu": qemu_cpu, "qemu": manifest["qemu"], "litert": report["litert"],
        "outputs_match_host": match, "max_abs_diff": max_diff, "compare": compare,
        "xnnpack_used": report["delegated"] and (kernels is None or bool(kernels)),
        "sparse_path_used": None if kernels is None else any("spmm" in k for k in kernels),
        "kernels": kernels,
        "emulated_invoke_ms": statistics.median(report["times_ms"]),
        "emulated_time_note": EMULATED_TIME_NOTE,
        "instructions": None, "instructions_note": INSTRUCTIONS_NOTE,
    }
