"""Where our trainers' log lines go: under our train.py, and under a host codebase's.

Our `train.py` calls `setup_logging(OUTPUT_DIR)`: Dassl's logger tees stdout into `log.txt`, and
every logger's INFO lines are written to stdout. A host's train.py calls only Dassl's
`setup_logger`, which configures no `logging` handler, so our INFO lines (progress, the RESULT
line) would be dropped; `ensure_logging()` (called when one of our trainers is built) then gives
the `promptkd` logger alone a handler to stdout, so they reach the console and `log.txt` as
under ours. It leaves the root logger and every other logger as the host set them.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from dassl.utils import setup_logger


class StdoutHandler(logging.Handler):
    """Writes to whatever sys.stdout is now (Dassl's logger tees it into log.txt)."""

    def emit(self, record):
        sys.stdout.write(self.format(record) + "\n")
        sys.stdout.flush()


def setup_logging(output_dir: str) -> None:
    """Our train.py: move an earlier log.txt aside, tee stdout into a new one, log INFO to stdout."""
    log = os.path.join(output_dir, "log.txt")
    if os.path.isfile(log):
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(os.path.getmtime(log)))
        os.replace(log, f"{log}-{stamp}")
    setup_logger(output_dir)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, StdoutHandler)]
    handler = StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def ensure_logging() -> bool:
    """A host's train.py: give the `promptkd` logger a stdout handler at INFO when nothing would
    show its INFO lines. Returns True if it added one."""
    # wilds (imported by dassl.data) disables logging below WARNING for the whole process, which
    # no handler can override; our train.py lifts it at import, a host's train.py never does.
    if logging.root.manager.disable >= logging.INFO:
        logging.disable(logging.NOTSET)
    ours = logging.getLogger("promptkd")
    if any(isinstance(h, StdoutHandler) for h in ours.handlers):
        return False
    level = ours.getEffectiveLevel()
    handled = any(h.level <= logging.INFO for h in logging.getLogger().handlers) and level <= logging.INFO
    if handled:
        return False
    handler = StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False  # the root's own handlers (WARNING and up) would repeat our warnings
    return True
