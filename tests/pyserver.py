"""A `PYTHON` for the scripts tests that forks the test process instead of starting Python anew.

The scripts run `$PYTHON -m promptkd VERB ...`. A new interpreter spends seconds
importing torch, Dassl and the trainers before the run starts; the scripts tests make about a
dozen runs. `python_server(tmp)` starts a thread in the test process (which has imported them)
that listens on a Unix socket, and returns the path of a tiny client script to use as PYTHON.
The client hands its stdin / stdout / stderr, argv, working directory and environment to the
server, which forks a child that runs that module of this project (`-m promptkd...`, or a
`.py` script) as `__main__` on those file descriptors, and sends back its pid and exit code; the client forwards
SIGINT / SIGTERM to it and exits with its code. Anything else (`-c`, `-m torch.distributed.run`)
execs the real interpreter. The scripts themselves, bash, their variables and their output are
untouched; only the interpreter's start-up is shared. tests/test_scripts.py keeps one test on
the real interpreter.
"""
from __future__ import annotations

import json
import os
import runpy
import signal
import socket
import struct
import sys
import threading

from promptkd.demo import forked

CLIENT = """#!{python} -IS
import json, os, signal, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect({path!r})
body = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [struct.pack("!Q", len(body)) + body], [0, 1, 2])
f = s.makefile("r")
pid = int(f.readline())
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda n, _: os.kill(pid, n))
code = int(f.readline())
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""

OWN_MODULES = ("promptkd",)


def _recv_request(conn: socket.socket):
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    (size,) = struct.unpack("!Q", data[:8])
    body = bytearray(data[8:])
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("client went away")
        body.extend(chunk)
    return json.loads(body), fds


def _child(request: dict, fds, listener: socket.socket, conn: socket.socket) -> None:
    def run():
        listener.close()
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        own_module = len(argv) >= 2 and argv[0] == "-m" and argv[1].startswith(OWN_MODULES)
        own_script = bool(argv) and argv[0].endswith(".py") and not argv[0].startswith("-")
        if not (own_module or own_script):
            os.execv(sys.executable, [sys.executable, *argv])
        forked.fresh_stdio(stdin_fd=0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if own_module:
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    forked.exit_with(run)


def _serve_one(listener: socket.socket, conn: socket.socket) -> None:
    with conn:
        request, fds = _recv_request(conn)
        pid = os.fork()
        if pid == 0:
            _child(request, fds, listener, conn)
        for fd in fds:
            os.close(fd)
        conn.sendall(f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


def python_server(folder: str) -> str:
    """Start the server (a daemon thread of this process) and return the client's path."""
    from promptkd.trainers import train  # noqa: F401  (what the children share: torch, Dassl, the trainers)

    path = os.path.join(folder, "python.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_serve_one, args=(listener, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    client = os.path.join(folder, "python")
    with open(client, "w", encoding="utf-8") as f:
        f.write(CLIENT.format(python=sys.executable, path=path))
    os.chmod(client, 0o755)
    return client
