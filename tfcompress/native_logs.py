"""Keeps TensorFlow's and LiteRT's native log lines out of the CLI's output.

TensorFlow 2.21 logs through absl, and absl writes every message to stderr
until `absl::InitializeLog()` is called, whatever TF_CPP_MIN_LOG_LEVEL says
(abseil/abseil-cpp#1718 and #1957, unmerged); TensorFlow never calls it from
Python. So the `I0000 ... port.cc] oneDNN custom operations are on`,
`cuInit` and converter lines ("Ignored output_format", "fully_quantize: 0,
...", "Created TensorFlow Lite XNNPACK delegate") cannot be turned off by a
setting: `quiet()` routes file descriptor 2 through a small filter process
that drops lines of those shapes and passes everything else (our messages,
Python tracebacks) through unchanged. A process, not a thread: a C++ call
holding the GIL while it logs would deadlock a thread reading the pipe.

`TFCOMPRESS_DEBUG=1` leaves stderr alone.

Example:
    from tfcompress import native_logs
    native_logs.quiet()          # first thing in a CLI's main, before TensorFlow logs
"""

import atexit
import os
import subprocess
import sys

# Matched against the start of each line (bytes). absl's prefix: severity letter, MMDD
# (0000 before InitializeLog), time, thread id, file:line].
NOISE = (
    rb"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\]",  # seconds: since 1970
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called",
    rb"fully_quantize: \d",
    rb"INFO: Created TensorFlow Lite XNNPACK delegate",
    rb"INFO: Initialized TensorFlow Lite runtime",
    rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] tensorflow/",  # TF's older prefix
)

_FILTER = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent's last words still pass
noise = re.compile(b"|".join(b"(?:%s)" % p for p in {patterns!r}))
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.match(line):
        out.write(line)
        out.flush()
"""

_state = {}


def quiet():
    """Filters native log lines out of this process's stderr; True when installed.

    Idempotent; a no-op under TFCOMPRESS_DEBUG=1 or when stderr cannot be
    duplicated. Sets TF_CPP_MIN_LOG_LEVEL=3 (when unset) as well, for the
    messages that do honour it.
    """
    if os.environ.get("TFCOMPRESS_DEBUG"):
        return False
    if _state:
        return True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        child = subprocess.Popen(
            [sys.executable, "-S", "-u", "-c", _FILTER.format(patterns=NOISE)],
            stdin=subprocess.PIPE, stdout=saved, stderr=saved, close_fds=True)
    except OSError:
        return False
    os.dup2(child.stdin.fileno(), 2)
    _state.update(saved=saved, child=child)
    atexit.register(restore)
    return True


def restore():
    """Gives stderr back and waits for the filter to pass on what it holds."""
    if not _state:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_state["saved"], 2)
    child = _state["child"]
    child.stdin.close()
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
    os.close(_state["saved"])
    _state.clear()
