"""Device profiles: one registry of what `bench --device NAME` can tell about a device.

Importing this module does not import TensorFlow or LiteRT: recipe validation
(`tfcompress.config`) reads the profiles to check device names up front.

Four kinds, each saying what it measures (`MEASURES`, shown by `--list-devices`):

    host          measured time: this x86 host's CPU (threads, pinning, kernels);
                  `host-1t`, `host-2t`, `host-1t-reference`, and user profiles
    npu           compiler estimate: Arm's Vela compiler for an Ethos-U NPU (cycles at
                  its configured clock and memory system, SRAM, flash, NPU/CPU op split);
                  `ethos-u55-128`, `ethos-u55-256`, `ethos-u65-256`
    arm-emulated  emulated correctness and kernel path: the aarch64 LiteRT under QEMU
                  on a Cortex-A (outputs against the host's, XNNPACK's kernels; its
                  time is emulated, never device time); `arm-cortex-a53`, `arm-cortex-a76`
    static        a static check of documented rules, no run: `edgetpu` (the Coral
                  Edge TPU's op and type rules; not its compiler)

User profiles (a JSON file) are host profiles, mapping names to the same fields:

    {"host-4t": {"threads": 4, "affinity": [0, 1, 2, 3], "delegate": "xnnpack",
                 "description": "4 threads on CPUs 0-3 with XNNPACK"}}

    threads      interpreter threads (>= 1)
    affinity     null (no pinning), N (the first N CPUs this process may use),
                 or a list of CPU ids
    delegate     "xnnpack" (LiteRT's default: builtin kernels + the XNNPACK
                 delegate) or "none" (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES:
                 TFLite's builtin kernels without any delegate)
    description  one honest line: what the profile stands for

A user profile with a built-in's name replaces it. Host profiles time this
host's CPU: `PHONE_NOTE` says so wherever figures are shown.

Example:
    profiles = load_profiles("my_devices.json")
    print(format_profiles(profiles))
    profiles["host-2t"].cpus()      # the CPU ids a run pins to
"""

import dataclasses
import json
import typing
import os
import re

from tfcompress.errors import TfcompressError
from tflite_export.environment import usable_cpus

PHONE_NOTE = ("Timed on this host's CPU only. A phone cannot be emulated for timing on an x86 "
              "host, so no phone latency is shown; measure on the device with the official "
              "benchmark_model tool.")
DELEGATES = ("xnnpack", "none")


class BenchmarkError(TfcompressError, ValueError):
    """Bad benchmark settings or device profiles; the message says how to fix them."""


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """How one model run is set up: threads, CPU pinning and kernels.

    Attributes:
        name: the profile's name (`--device NAME`).
        threads: interpreter threads.
        affinity: None (no pinning), an int N (the first N usable CPUs) or a
            tuple of CPU ids.
        delegate: "xnnpack" or "none" (see the module docstring).
        description: what the profile stands for, in one line.
        source: "built-in" or the file it came from.
    """
    name: str
    threads: int
    affinity: object
    delegate: str
    description: str
    source: str = "built-in"
    kind: typing.ClassVar[str] = "host"
    MEASURES: typing.ClassVar[str] = "measured time on this host's CPU"

    def cpus(self, usable=None):
        """The CPU ids to pin to (None: no pinning).

        Raises:
            BenchmarkError: the profile asks for CPUs this process may not use.
        """
        usable = usable_cpus() if usable is None else sorted(usable)
        if self.affinity is None:
            return None
        if not hasattr(os, "sched_setaffinity"):
            raise BenchmarkError(f"device {self.name} pins CPUs, which needs Linux; use a "
                                 "profile with \"affinity\": null on this system")
        if isinstance(self.affinity, int):
            if self.affinity > len(usable):
                raise BenchmarkError(
                    f"device {self.name} pins {self.affinity} CPUs but this process may use "
                    f"only {len(usable)} ({usable}); pick another device or add one with a "
                    "profile file")
            return usable[:self.affinity]
        missing = sorted(set(self.affinity) - set(usable))
        if missing:
            raise BenchmarkError(f"device {self.name} pins CPUs {list(self.affinity)} but "
                                 f"{missing} are not available here (usable: {usable}); edit "
                                 "its affinity in the profile file")
        return list(self.affinity)

    def to_dict(self):
        affinity = list(self.affinity) if isinstance(self.affinity, tuple) else self.affinity
        return {"kind": self.kind, "threads": self.threads, "affinity": affinity,
                "delegate": self.delegate, "description": self.description,
                "source": self.source}

    def settings(self):
        if self.affinity is None:
            affinity = "no pinning"
        elif isinstance(self.affinity, int):
            affinity = f"pinned to the first {self.affinity} usable CPU(s)"
        else:
            affinity = f"pinned to CPUs {list(self.affinity)}"
        return f"{self.threads} thread(s), {affinity}, delegate {self.delegate}"


@dataclasses.dataclass(frozen=True)
class NpuProfile:
    """An Arm Ethos-U NPU as Vela models it (`tflite_export.vela`).

    Attributes:
        accelerator: Vela's `--accelerator-config` (e.g. "ethos-u55-128": a U55
            with 128 MACs per cycle).
    """
    name: str
    accelerator: str
    description: str
    source: str = "built-in"
    kind: typing.ClassVar[str] = "npu"
    MEASURES: typing.ClassVar[str] = ("compiler estimate (Vela): cycles at its configured "
                                      "clock and memory system, not a measurement")

    def to_dict(self):
        return {"kind": self.kind, "accelerator": self.accelerator,
                "description": self.description, "source": self.source}

    def settings(self):
        return f"Vela --accelerator-config {self.accelerator}, its default system config"


@dataclasses.dataclass(frozen=True)
class ArmEmulatedProfile:
    """A Cortex-A core emulated by QEMU running the aarch64 LiteRT
    (`tflite_export.arm_emulation`; `cpu` is QEMU's CPU model)."""
    name: str
    cpu: str
    description: str
    source: str = "built-in"
    kind: typing.ClassVar[str] = "arm-emulated"
    MEASURES: typing.ClassVar[str] = ("emulated correctness and kernel path (outputs against "
                                      "the host, XNNPACK's kernels); emulated time is not "
                                      "device time")

    def to_dict(self):
        return {"kind": self.kind, "cpu": self.cpu, "description": self.description,
                "source": self.source}

    def settings(self):
        return f"QEMU_CPU={self.cpu}, aarch64 LiteRT, 1 thread"


@dataclasses.dataclass(frozen=True)
class StaticCheckProfile:
    """A device judged by reading the file against its documented rules (no run)."""
    name: str
    description: str
    source: str = "built-in"
    kind: typing.ClassVar[str] = "static"
    MEASURES: typing.ClassVar[str] = "static check of documented rules; nothing runs or is timed"

    def to_dict(self):
        return {"kind": self.kind, "description": self.description, "source": self.source}

    def settings(self):
        return "reads the flatbuffer (tflite_export.edgetpu)"


PROFILES = {p.name: p for p in (
    DeviceProfile("host-1t", 1, 1, "xnnpack",
                  "this host, 1 thread pinned to 1 CPU, XNNPACK delegate (LiteRT's default "
                  "CPU path); a stand-in for ranking variants, not a phone's latency"),
    DeviceProfile("host-2t", 2, 2, "xnnpack",
                  "this host, 2 threads pinned to 2 CPUs, XNNPACK delegate; shows how a model "
                  "scales with threads on this CPU, not on a phone's big.LITTLE cores"),
    DeviceProfile("host-1t-reference", 1, 1, "none",
                  "this host, 1 thread pinned to 1 CPU, TFLite builtin kernels without the "
                  "XNNPACK delegate (BUILTIN_WITHOUT_DEFAULT_DELEGATES): a runtime that has "
                  "no XNNPACK, or models XNNPACK cannot take (sparse int8)"),
    NpuProfile("ethos-u55-128", "ethos-u55-128",
               "Arm Ethos-U55, 128 MACs/cycle, 500 MHz, weights in off-chip flash, feature "
               "maps in shared SRAM (Vela's Ethos_U55_High_End_Embedded / Shared_Sram); "
               "int8/int16 files only"),
    NpuProfile("ethos-u55-256", "ethos-u55-256",
               "Arm Ethos-U55, 256 MACs/cycle, otherwise as ethos-u55-128"),
    NpuProfile("ethos-u65-256", "ethos-u65-256",
               "Arm Ethos-U65, 256 MACs/cycle, 1 GHz, DRAM and SRAM (Vela's "
               "Ethos_U65_Client_Server / Dedicated_Sram_384KB)"),
    ArmEmulatedProfile("arm-cortex-a53", "cortex-a53",
                       "an Armv8.0 in-order core (older and low-end phones), no int8 dot "
                       "product: XNNPACK's plain NEON kernels"),
    ArmEmulatedProfile("arm-cortex-a76", "cortex-a76",
                       "an Armv8.2 big core (2019+ phones) with the int8 dot product "
                       "(XNNPACK's neondot kernels)"),
    StaticCheckProfile("edgetpu",
                       "Coral Edge TPU: int8 everywhere, static shapes, its op table and "
                       "limits, where the compiler would cut the graph; not the compiler"),
)}
_PROFILE_KEYS = {"threads", "affinity", "delegate", "description"}


def _profile_from_dict(name, fields, source):
    where = f"{source}: device {name!r}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)):
        raise BenchmarkError(f"{source}: device name {name!r} must be letters, digits, '.', '_' "
                             "or '-'")
    if not isinstance(fields, dict):
        raise BenchmarkError(f"{where} must be an object with {sorted(_PROFILE_KEYS)}")
    unknown, missing = set(fields) - _PROFILE_KEYS, _PROFILE_KEYS - set(fields) - {"affinity"}
    if unknown or missing:
        raise BenchmarkError(f"{where}: unknown keys {sorted(unknown)}, missing keys "
                             f"{sorted(missing)}; a profile has {sorted(_PROFILE_KEYS)}")
    threads = fields["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BenchmarkError(f"{where}: threads must be an integer >= 1, got {threads!r}")
    affinity = fields.get("affinity")
    if isinstance(affinity, list):
        if not affinity or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                   for c in affinity):
            raise BenchmarkError(f"{where}: affinity must be null, a CPU count or a non-empty "
                                 f"list of CPU ids >= 0, got {affinity!r}")
        affinity = tuple(sorted(set(affinity)))
    elif affinity is not None and (isinstance(affinity, bool) or not isinstance(affinity, int)
                                   or affinity < 1):
        raise BenchmarkError(f"{where}: affinity must be null, a CPU count >= 1 or a list of "
                             f"CPU ids, got {affinity!r}")
    if fields["delegate"] not in DELEGATES:
        raise BenchmarkError(f"{where}: delegate must be one of {', '.join(DELEGATES)}, got "
                             f"{fields['delegate']!r} (GPU/NPU delegates are not available on "
                             "this host)")
    description = fields["description"]
    if not isinstance(description, str) or not description.strip():
        raise BenchmarkError(f"{where}: description must be a non-empty line saying what the "
                             "profile stands for")
    return DeviceProfile(str(name), threads, affinity, fields["delegate"],
                         " ".join(description.split()), source)


def load_profiles(extra_file=None):
    """The built-in device profiles, plus (replacing same names) those in `extra_file`.

    Args:
        extra_file: a JSON file {name: {threads, affinity, delegate,
            description}} (see the module docstring), or None.

    Returns:
        {name: DeviceProfile}, built-ins first.

    Raises:
        BenchmarkError: an unreadable file or an invalid profile.
    """
    profiles = dict(PROFILES)
    if extra_file is None:
        return profiles
    path = os.fspath(extra_file)
    try:
        with open(path) as f:
            table = json.load(f)
    except OSError as e:
        raise BenchmarkError(f"{path}: cannot read the device profile file: "
                             f"{e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                             f"{e.colno})") from e
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not a JSON text file (byte {e.start} is not UTF-8); "
                             "give the device profile JSON file") from e
    if not isinstance(table, dict) or not table:
        raise BenchmarkError(f"{path}: expected a JSON object {{name: profile}} with at least "
                             "one profile")
    for name, fields in table.items():
        profiles[name] = _profile_from_dict(name, fields, path)
    return profiles


def format_profiles(profiles):
    """One block per kind (what it measures), one entry per profile: name, settings,
    description (for `--list-devices`)."""
    lines = []
    for kind in dict.fromkeys(p.kind for p in profiles.values()):
        mine = [p for p in profiles.values() if p.kind == kind]
        lines.append(f"{kind}: {mine[0].MEASURES}")
        lines += [f"  {p.name}: {p.settings()} ({p.source})\n      {p.description}"
                  for p in mine]
    lines.append(PHONE_NOTE)
    return "\n".join(lines)

