"""User errors and how every command-line entry point reports them.

A mistake the user can fix (a missing, truncated or foreign file, a bad key or value, class
vectors made for another dataset, the wrong checkpoint kind, missing weights, a full disk,
...) is raised as a `UserError` (or one of its subclasses, which are also the matching
built-in exception, so callers that catch `ValueError` / `FileNotFoundError` keep working).
`run_cli(main)` turns it into

    error: <message>

on stderr and exit code 2, without a traceback. `--debug` on the command line or
`PROMPTKD_DEBUG=1` in the environment shows the traceback. No error path prints a traceback
without it: a file the process may not read or write (or a full disk) met where no guard
named it is reported the same way (exit 2), Ctrl-C as `error: interrupted` (exit 130), and any
other exception, a bug, as `error: unexpected <type>: <message> (at file:line)` (exit 1).
"""
from __future__ import annotations

import errno
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


class NotWritableError(UserError, PermissionError):
    """A write to a place this process may not write: a read-only file system (EROFS) or no
    permission (EACCES / EPERM)."""


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
        _report(str(err))
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:  # Ctrl-C: a resumable run resumes from its last checkpoint
        if debug_requested(argv):
            raise
        _report("interrupted (Ctrl-C).")
        sys.exit(EXIT_INTERRUPTED)
    except OSError as err:
        if debug_requested(argv):
            raise
        if err.errno not in _ENVIRONMENT_ERRNOS:
            _unexpected(err)
        # a file the process may not read or write, a full disk, ... met where no guard named it
        what = f" {err.filename}" if err.filename else ""
        _report(f"{err.strerror or err}:{what}. Check the path and its permissions (a read-only file system, "
                "another user's folder, a full disk) and run the command again.")
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:  # noqa: BLE001  (a bug: named in one line, the traceback under --debug)
        if debug_requested(argv):
            raise
        _unexpected(err)
    sys.exit(code or 0)


EXIT_INTERRUPTED = 130  # as a shell reports SIGINT
EXIT_BUG = 1


#: errno values of an environment the user can fix: read-only, no permission, disk or quota full
_ENVIRONMENT_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


def _report(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)


def _unexpected(err: BaseException) -> None:
    """A failure no check anticipated: its type and message in one line, exit code 1; the
    traceback (for a bug report) with --debug."""
    where = ""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" (at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"
    _report(f"unexpected {type(err).__name__}: {err}{where}. This is a bug, or an input no check "
            "anticipated; please report it with the traceback.")
    sys.exit(EXIT_BUG)
