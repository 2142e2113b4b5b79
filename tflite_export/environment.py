"""The machine and software versions a measurement belongs to.

`host` is the one place that reads the CPU's name, the CPUs this process may
use and the installed versions; the benchmark's result and the pipeline's
report each keep their own keys (`benchmark.environment`,
`tfcompress.report.environment`) and fill them from it.

Example:
    host(("tensorflow", "ai-edge-litert"))
    # {"cpu": "AMD EPYC ...", "usable_cpus": [0, 1], "versions": {"tensorflow": "2.21.0", ...}, ...}
"""

import os
import platform
from importlib import metadata


def usable_cpus():
    """The CPU ids this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def package_version(name):
    """The installed version of distribution `name` ("ai-edge-litert"), or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name():
    """The CPU's model name from /proc/cpuinfo, else what `platform` says."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def host(packages=()):
    """This machine, and the versions of `packages` (distribution names).

    Returns:
        {"cpu", "machine", "system" ("Linux 6.8.0"), "platform" (platform.platform()),
        "logical_cpus", "usable_cpus" (ids), "python", "versions": {package: version
        or None}}.
    """
    return {
        "cpu": cpu_name(), "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}", "platform": platform.platform(),
        "logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
    }
