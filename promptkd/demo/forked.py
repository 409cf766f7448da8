"""Run a function in a forked child of this process, its output on pipes (POSIX only).

A child forked from a process that has already imported torch, Dassl and the trainers starts
in milliseconds, where a new `python train.py` spends seconds importing them: the demo runs its
trainer runs this way, and tests run command lines this way. The child is a real process: its
own globals (Dassl's logger replaces `sys.stdout`), exit code, signals and file descriptors,
so a run cannot leak into the next one.

    result = forked.run(lambda: train.cli(argv))       # .returncode, .stdout, .stderr
    forked.run_lanes([[step, step], [step]], on_line)  # lanes side by side, steps in turn

The child gets fresh `sys.stdout` / `sys.stderr` on the pipes and no logging handlers; it
leaves through `os._exit` with `fn`'s `SystemExit` code (0 if `fn` returns, 1 and a traceback
on stderr if it raises), so no exit handler of the parent (pytest's, say) runs in it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import signal
import sys
import time
import traceback
from typing import Callable, Sequence


@dataclasses.dataclass
class Completed:
    returncode: int  # as subprocess: -N if killed by signal N
    stdout: str
    stderr: str


@dataclasses.dataclass
class Step:
    """One child of a lane: `fn` runs in it; its output lines go to `on_line(name, stream, line)`."""
    name: str
    fn: Callable[[], object]


def _exit_code(err: SystemExit) -> int:
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    sys.stderr.write(f"{err.code}\n")  # sys.exit("message"), as Python prints it
    return 1


def fresh_stdio(stdin_fd: int | None = None) -> None:
    """In a forked child: new `sys.stdin` / `sys.stdout` / `sys.stderr` on file descriptors 0
    (or /dev/null), 1 and 2, and no logging handlers (the parent's hold its old streams)."""
    sys.stdin = open(os.devnull if stdin_fd is None else stdin_fd, encoding="utf-8", closefd=stdin_fd is None)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def exit_with(fn: Callable[[], object]) -> None:
    """In a forked child: run `fn` and leave through `os._exit` with the code Python would give
    (0 if it returns, its SystemExit code, 1 and the traceback on stderr if it raises), after
    flushing stdout / stderr; no exit handler of the parent runs."""
    code = 1
    try:
        fn()
        code = 0
    except SystemExit as err:
        code = _exit_code(err)
    except BaseException:  # noqa: BLE001  (reported as Python would, then exit 1)
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _child(fn: Callable[[], object], out_w: int, err_w: int) -> None:
    """In the child: stdout / stderr on the pipes, run `fn`, leave with its exit code."""
    def setup_and_run():
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        fresh_stdio()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        fn()
    exit_with(setup_and_run)


class Child:
    """A forked child running `fn`: its output on the pipes in `fds`, reaped by `wait()`."""

    def __init__(self, fn: Callable[[], object]):
        if not hasattr(os, "fork"):
            raise RuntimeError("promptkd.demo.forked needs os.fork (Linux or macOS)")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            os.close(err_r)
            _child(fn, out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        self.pid = pid
        self.fds = {"stdout": out_r, "stderr": err_r}
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class _Reader:
    """One selector over the pipes of several children: hands each chunk to on_data(child,
    stream, bytes) and tells when a child has closed both pipes (it is exiting)."""

    def __init__(self, on_data: Callable):
        self.sel = selectors.DefaultSelector()
        self.on_data = on_data
        self.open: dict[Child, int] = {}

    def add(self, child: Child) -> None:
        for stream, fd in child.fds.items():
            self.sel.register(fd, selectors.EVENT_READ, (child, stream))
        self.open[child] = len(child.fds)

    def step(self, timeout: float | None) -> list[Child]:
        """Read what is there (waiting at most `timeout`); the children that closed their pipes."""
        done = []
        for key, _ in self.sel.select(timeout):
            child, stream = key.data
            data = os.read(key.fd, 65536)
            if data:
                self.on_data(child, stream, data)
                continue
            self.sel.unregister(key.fd)
            os.close(key.fd)
            self.open[child] -= 1
            if not self.open[child]:
                del self.open[child]
                done.append(child)
        return done

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fd)
            os.close(key.fd)
        self.sel.close()


def run(fn: Callable[[], object], timeout: float | None = None,
        until: Callable[[str], bool] | None = None) -> Completed:
    """Run `fn` in a forked child and wait: its exit code and output, as `subprocess.run` gives.
    `timeout`: kill it (SIGKILL) after this many seconds and raise TimeoutError. `until(stdout
    so far)`: kill it (SIGKILL) as soon as this holds (a test of a run killed mid-way)."""
    out = {"stdout": bytearray(), "stderr": bytearray()}
    reader = _Reader(lambda _, stream, data: out[stream].extend(data))
    child = Child(fn)
    reader.add(child)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while child in reader.open:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the forked child ran past {timeout} s")
            reader.step(0.01 if until is not None else 0.2)
            if until is not None and until(out["stdout"].decode("utf-8", "replace")):
                child.kill()
                break
    except BaseException:
        child.kill()
        raise
    finally:
        reader.close()
        child.wait()
    return Completed(child.returncode, out["stdout"].decode("utf-8", "replace"),
                     out["stderr"].decode("utf-8", "replace"))


class ChildFailed(RuntimeError):
    def __init__(self, name: str, code: int):
        super().__init__(f"{name} failed (exit code {code})")
        self.name, self.code = name, code


def run_lanes(lanes: Sequence[Sequence[Step]], on_line: Callable[[str, str, str], None]) -> None:
    """Run the lanes side by side, the steps of each one after another, each step in its own
    forked child; every output line goes to on_line(step name, "stdout" | "stderr", line).
    A failed step stops the others (SIGTERM) and raises ChildFailed; so does Ctrl-C (after
    stopping them, KeyboardInterrupt propagates)."""
    queues = [list(lane) for lane in lanes]
    running: dict[Child, tuple[int, str]] = {}
    partial: dict[tuple[Child, str], bytes] = {}

    def on_data(child, stream, data):
        *lines, partial[(child, stream)] = (partial.get((child, stream), b"") + data).split(b"\n")
        for line in lines:
            on_line(running[child][1], stream, line.decode("utf-8", "replace"))

    reader = _Reader(on_data)

    def start_next(lane: int) -> None:
        if queues[lane]:
            step = queues[lane].pop(0)
            child = Child(step.fn)
            running[child] = (lane, step.name)
            reader.add(child)

    try:
        for lane in range(len(queues)):
            start_next(lane)
        while running:
            for child in reader.step(None):
                lane, name = running[child]
                for stream in child.fds:
                    rest = partial.pop((child, stream), b"")
                    if rest:
                        on_line(name, stream, rest.decode("utf-8", "replace"))
                code = child.wait()
                del running[child]
                if code != 0:
                    raise ChildFailed(name, code)
                start_next(lane)
    except BaseException:
        for child in running:
            child.kill(signal.SIGTERM)
        for child in running:
            child.wait()
        raise
    finally:
        reader.close()
