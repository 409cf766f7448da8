"""User errors and how every command-line entry point reports them.

A mistake the user can fix (a missing, truncated or foreign file, a bad key or value, class
vectors made for another dataset, the wrong checkpoint kind, missing weights, a full disk,
...) is raised as a `UserError` (or one of its subclasses, which are also the matching
built-in exception, so callers that catch `ValueError` / `FileNotFoundError` keep working).
`run_cli(main)` turns it into

    error: <message>

on stderr and exit code 2, without a traceback. `--debug` on the command line or
`PROMPTKD_DEBUG=1` in the environment shows the traceback. Any other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

DEBUG_ENV = "PROMPTKD_DEBUG"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; the message says what and how."""

    def __str__(self):  # the message as written (KeyError-like bases would quote it)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(UserError, ValueError):
    """A bad config key or value, or settings that do not fit together."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the run needs is not there."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or weights file that is not what the run needs, or may not be read."""


class DataError(UserError, OSError):
    """A data file that cannot be read (missing, truncated, not an image, not of its kind):
    dataset files, teacher-cache shards and manifests, JSON records."""


class DiskFullError(UserError, OSError):
    """A write that failed because the disk or quota is full (ENOSPC / EDQUOT)."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def add_debug_argument(parser) -> None:
    """`--debug`, which every command takes (read by `debug_requested`)."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show the Python traceback of a user error (also {DEBUG_ENV}=1)")


def run_cli(main: Callable[[], int | None], argv: Sequence[str] | None = None) -> None:
    """Run `main()` and exit with its return code; report a `UserError` as `error: ...`."""
    try:
        code = main()
    except BrokenPipeError:  # `... | head` closed the pipe: stop quietly (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except UserError as err:
        if debug_requested(argv):
            raise
        print(f"error: {err}", file=sys.stderr)
        print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code or 0)
