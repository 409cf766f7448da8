"""Command lines run as a forked child of the test process (promptkd.demo.forked), not a new Python.

`promptkd train ...` (or `python train.py ...`) spends seconds importing torch, Dassl and the trainers before it does
anything; the test process has imported them already, so a forked child runs the same command
line in milliseconds, still as a process of its own (exit code, stdout / stderr, Dassl's global
logger, a kill). What a fork cannot show, the `if __name__ == "__main__"` line of each entry
point, keeps one real `subprocess` test per entry point (tests/test_trainers.py and the scripts
tests).
"""
from __future__ import annotations

import os

from promptkd.demo import forked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _in(cwd, env, fn):
    def child():
        os.chdir(cwd)
        os.environ.update(env or {})
        fn()
    return child


def train_py(argv, cwd=ROOT, env=None, timeout=600, until=None) -> forked.Completed:
    """`python train.py ARGV` (= `promptkd train ARGV`) in `cwd`: returncode, stdout, stderr
    (as subprocess.run gives)."""
    return promptkd("train", argv, cwd, env, timeout, until)


def promptkd(verb: str, argv, cwd=ROOT, env=None, timeout=600, until=None) -> forked.Completed:
    """`promptkd VERB ARGV` in `cwd`, as the console script runs it (promptkd.cli.console)."""
    from promptkd.cli import console

    argv = [verb, *(str(a) for a in argv)]
    return forked.run(_in(cwd, env, lambda: console(argv)), timeout, until)
