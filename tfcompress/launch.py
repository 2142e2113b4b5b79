r"""Starts N local workers of a command, each with its TF_CONFIG: multi-worker runs on one machine.

Each worker is the same command with its own `TF_CONFIG` (a cluster of N
`worker` tasks on free loopback ports, task index 0..N-1; worker 0 is the
chief). Their output is streamed with a `[worker i]` prefix. When every worker
exits 0 the launcher exits 0; when one fails, the others are stopped and the
launcher exits 1 with one `error:` line naming it.

The command must use `strategy multi_worker` (MultiWorkerMirroredStrategy).
Across machines run the same command on each machine with a real TF_CONFIG
instead (the cluster's host:port addresses, each machine its own task index).

Example:
    python -m tfcompress.launch --num_workers=2 -- \
        python -m models.train --strategy=multi_worker --epochs=5 --model_dir=runs/mw
    python -m tfcompress.launch --num_workers=2 -- \
        tfcompress run --recipe my_recipe.yaml --set strategy=multi_worker --out runs/mw
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

from tfcompress.errors import parse_absl_flags

FLAGS = flags.FLAGS

flags.DEFINE_integer("num_workers", 2, "Workers to start.", lower_bound=1)
flags.DEFINE_string("host", "127.0.0.1", "Address the workers listen on.")
flags.DEFINE_list("ports", [], "One port per worker; default: free ports picked now.")
flags.DEFINE_float("stop_grace_seconds", 10.0, "After a failure, how long the other workers get "
                   "to exit on SIGTERM before SIGKILL.", lower_bound=0.0)


def free_ports(count, host="127.0.0.1"):
    """`count` distinct ports free on `host` now (held together while picked, so distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(addresses):
    """The TF_CONFIG string of each worker of a cluster of `addresses` (host:port)."""
    return [json.dumps({"cluster": {"worker": list(addresses)},
                        "task": {"type": "worker", "index": i}})
            for i in range(len(addresses))]


def _stream(proc, prefix, lock):
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"{prefix}{line}" if line.endswith("\n") else f"{prefix}{line}\n")
            sys.stdout.flush()


def _stop(procs, grace):
    """SIGTERM each running worker's process group, then SIGKILL after `grace` seconds."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def launch(command, num_workers=2, host="127.0.0.1", ports=None, grace=10.0, env=None):
    """Runs `command` (a list) as `num_workers` workers; returns (exit code, message).

    The exit code is 0 when all workers exit 0; else 1, with a message naming
    the first worker that failed (the others are stopped).
    """
    if not command:
        raise ValueError("give the command to run after --, e.g. `python -m "
                         "tfcompress.launch --num_workers=2 -- python -m models.train "
                         "--strategy=multi_worker`")
    ports = [int(p) for p in ports] if ports else free_ports(num_workers, host)
    if len(ports) != num_workers:
        raise ValueError(f"--ports lists {len(ports)} ports for {num_workers} workers")
    addresses = [f"{host}:{port}" for port in ports]
    lock = threading.Lock()
    procs, threads = [], []
    print(f"starting {num_workers} workers on {', '.join(addresses)}: {' '.join(command)}",
          flush=True)
    try:
        for index, config in enumerate(tf_configs(addresses)):
            worker_env = dict(os.environ if env is None else env, TF_CONFIG=config,
                              PYTHONUNBUFFERED="1")
            # Own session: stopping a worker stops its children too, and nothing else.
            proc = subprocess.Popen(command, env=worker_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)
            procs.append(proc)
            thread = threading.Thread(target=_stream, args=(proc, f"[worker {index}] ", lock),
                                      daemon=True)
            thread.start()
            threads.append(thread)
        failed = None
        while True:
            codes = [p.poll() for p in procs]  # every worker polled, each time
            failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs, grace)
        return 130, "interrupted; stopped the workers"
    except OSError as e:
        _stop(procs, grace)
        return 1, f"cannot start the workers: {e}"
    if failed is not None:
        _stop(procs, grace)
    for thread in threads:
        thread.join(timeout=5)
    if failed is not None:
        index, code = failed
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        stopped = " and the others were stopped" if num_workers > 1 else ""
        return 1, f"worker {index} {how}{stopped} (its output above, prefixed [worker {index}])"
    return 0, f"all {num_workers} workers finished"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv):
    # SIGTERM (e.g. from a job scheduler) stops the workers as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code, message = launch(argv[1:], FLAGS.num_workers, FLAGS.host, FLAGS.ports,
                               FLAGS.stop_grace_seconds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(message if code == 0 else f"error: {message}", file=sys.stdout if code == 0
          else sys.stderr, flush=True)
    return code


def run(argv=None):
    app.run(main, argv=argv, flags_parser=parse_absl_flags)


if __name__ == "__main__":
    run()
