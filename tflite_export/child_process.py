"""Running work in a child process: one line that says how it failed.

Code that might crash, stall or bloat (the LiteRT interpreter on a corrupt file,
a benchmark run) runs in a child so the caller survives it. Two shapes:

    run(cmd, timeout_s)           one command to its end (the benchmark, litert-benchmark):
                                  (stdout, None) or (None, one-line error)
    PythonChild(bootstrap)        a long-lived Python child spoken to over pipes
                                  (the crash probe of `tflite_file`)

Both turn a death into words the same way: `exit_name` (SIGSEGV, or
"exit status 3") and the last line the child wrote to stderr.

A Python child runs `python -c BOOTSTRAP ROOT ARGS...`, where ROOT is the folder
holding `tflite_export`: the bootstrap puts it first on sys.path, so the child
runs this very code whatever its working directory holds.

Example:
    out, error = run(python_command("print('hi')"), timeout_s=30)
"""

import os
import select
import signal
import subprocess
import sys
import tempfile
import time

# The folder holding the tflite_export package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_command(bootstrap, *args):
    """`[python, -c, bootstrap, ROOT, *args]`: a child running this interpreter and code."""
    return [sys.executable, "-c", bootstrap, ROOT, *args]


def one_line(text, limit=400):
    """`text` with its whitespace collapsed, cut to `limit` characters ("..." marks a cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def exit_name(returncode):
    """"SIGSEGV" (or "signal 40") for a child a signal killed, else "exit status N"."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def last_line(text):
    """The last non-blank line of `text` (a child's stderr), or ""."""
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def run(cmd, timeout_s, cpus=None):
    """Runs `cmd`; returns (stdout, None) or (None, a one-line error).

    A timeout kills the process; a signal (segfault, abort, OOM kill) and a
    non-zero exit become errors naming it and the last line of stderr.
    `cpus` pins the process to those CPU ids (Linux).
    """
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:g} s and was killed (raise the timeout)"
    except OSError as e:
        return None, one_line(f"cannot start {cmd[0]}: {e.strerror or e}")
    last = last_line(proc.stderr)
    if proc.returncode < 0:
        return None, one_line(f"the process crashed ({exit_name(proc.returncode)})"
                              + (f": {last}" if last else ""))
    if proc.returncode != 0:
        return None, one_line(f"the process exited with status {proc.returncode}"
                              + (f": {last}" if last else ""))
    return proc.stdout, None


class PythonChild:
    """A long-lived `python_command(bootstrap, *args)` child spoken to over pipes.

    Its stderr goes to a temporary file (a pipe nobody reads would fill up and
    block it); `death()` reads its last line.

    Attributes:
        proc: the `subprocess.Popen`.
    """

    def __init__(self, bootstrap, *args):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(python_command(bootstrap, *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr)

    def send(self, data):
        """Writes `data` to the child's stdin; False when the child is gone."""
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def read_line(self, timeout_s):
        """The child's next stdout line (bytes, with its newline).

        Returns:
            The line; None when the child closed stdout (it died); "timeout" when
            no full line came within `timeout_s` (the child is left running).
        """
        fd, line, deadline = self.proc.stdout.fileno(), b"", time.monotonic() + timeout_s
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return "timeout"
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            line += chunk
        return line

    def death(self):
        """Waits for the child to end, closes it; returns (exit_name, last stderr line)."""
        code = self.proc.wait()
        self.stderr.seek(0)
        last = last_line(self.stderr.read().decode(errors="replace"))
        self.close()
        return exit_name(code), last

    def close(self):
        """Kills the child if it still runs and closes its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass
