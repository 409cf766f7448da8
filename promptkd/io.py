"""Every file the project reads or writes goes through here: guarded loaders, one atomic writer.

Reading (`load_torch`, `load_json`, `load_npy`, `load_pickle`, `read_text`): a missing file
raises `MissingFileError`; an empty, truncated or foreign file (a text file where a checkpoint
is expected, a zip of something else, JSON cut short, ...) raises a `UserError` that names the
file, what was expected there and `fix`, the command that writes it again (the caller knows
how its file is made). No raw "PytorchStreamReader failed reading zip archive" reaches a user.
Torch files load with `weights_only=True` (plain tensors, strings and numbers); a torch file
that pickles Python objects (the published PromptKD/PromptSRC checkpoints, written by torch
1.x with a pickled scheduler) loads with `weights_only=False` only when the caller says it is
trusted (config MODEL.TRUST_PICKLED_CHECKPOINTS).

Writing (`atomic_write`, and on it `atomic_save` for torch objects, `atomic_write_text`,
`atomic_write_json`): the bytes go to a temporary `.tmp-*` file in the target's folder, are
flushed and fsynced, and the file is renamed over the target, so a crash or a concurrent
reader never sees a half-written file; the temporary file is removed on any exception. A full
disk or quota (ENOSPC / EDQUOT) becomes `DiskFullError`, which names the file, how much it
needs and how much the folder's disk has free.

Plain PyTorch and NumPy; no Dassl.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from typing import BinaryIO, Callable

import numpy as np
import torch

from .errors import CheckpointError, DataError, DiskFullError, MissingFileError, NotWritableError, UserError

TRUST_KEY = "MODEL.TRUST_PICKLED_CHECKPOINTS"
#: image files, by extension (lower case): dataset folders and `promptkd.deploy.predict`'s inputs
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: what a temporary file of `atomic_write` starts with (a killed writer may leave one behind)
TMP_PREFIX = ".tmp-"
#: errno values of a full disk: no space left, quota exceeded
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
#: errno values of a place that cannot be written: read-only file system, no permission
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def human_size(n: float | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


# --- writing --------------------------------------------------------------------------------

class _Counter:
    """A write-only sink that counts bytes: how large a file `write` makes, without writing it."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n

    def flush(self):
        pass


def _size_of(write: Callable[[BinaryIO], None]) -> int | None:
    sink = _Counter()
    try:
        write(sink)
    except Exception:  # a writer that needs a real file (fileno, seek): the size stays unknown
        return None
    return sink.size


def _free_bytes(folder: str) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(path: str, err: OSError, needed: int | None, written: int | None = None,
                    fix: str = "") -> DiskFullError:
    """The `DiskFullError` of a write of `path` that failed with ENOSPC / EDQUOT."""
    folder = os.path.dirname(os.path.abspath(path))
    if needed is not None:
        need = human_size(needed)
    elif written:
        need = f"more than {human_size(written)}"
    else:
        need = "an unknown amount"
    reason = os.strerror(err.errno) if err.errno else str(err)
    return DiskFullError(
        f"Cannot write {path}: {reason}. It needs {need}; the disk of {folder} has "
        f"{human_size(_free_bytes(folder))} free. Free space there (or write to another folder), then "
        + (fix or "run the command again.")
    )


def _publish_once(tmp: str, path: str) -> bool:
    """Move `tmp` to `path` unless `path` exists; False if another writer got there first."""
    try:
        os.link(tmp, path)  # atomic, and fails if `path` exists
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno in FULL_DISK:
            raise
        if os.path.exists(path):  # a file system without hard links
            return False
        os.replace(tmp, path)
    return True


def _about(filename, folder: str) -> bool:
    """Whether an OSError's file is `folder`, a folder above it or a file in it."""
    if not filename:
        return False
    name = os.path.abspath(os.fsdecode(filename))
    return name == folder or folder.startswith(name + os.sep) or os.path.dirname(name) == folder


def atomic_write(path: str, write: Callable, *, fix: str = "", exclusive: bool = False,
                 suffix: str = "", to_path: bool = False) -> int | None:
    """Write `path` atomically: `write(f)` fills a temporary file `f` (binary) in the same
    folder, which is fsynced and renamed to `path`; on any exception it is removed and `path`
    keeps its old content. With `to_path`, `write` gets the temporary file's path instead
    (for writers that only take a path, e.g. ONNX's); `suffix` is that file's extension.
    With `exclusive`, `path` is published only if it does not exist yet (None is returned
    when another writer got there first). Returns the size written. A full disk raises
    `DiskFullError` (naming `path`, the size needed and the free space; `fix` says how to
    carry on once there is space, default: run the command again)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
        if to_path:
            os.close(fd)
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            size = os.path.getsize(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
        if exclusive:
            return size if _publish_once(tmp, path) else None
        os.replace(tmp, path)
        return size
    except OSError as err:
        if err.errno in NOT_WRITABLE and _about(err.filename, folder):  # not an error of `write`'s own reads
            raise NotWritableError(f"Cannot write {path}: {os.strerror(err.errno)} ({err.filename or folder}). "
                                   "Write to a folder this user can write, or make this one writable.") from None
        if err.errno not in FULL_DISK:
            raise
        written = os.path.getsize(tmp) if tmp and os.path.exists(tmp) else None
        needed = None if to_path else _size_of(write)
        raise disk_full_error(path, err, needed, written, fix) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str, *, fix: str = "") -> int:
    """`torch.save(obj)` to `path`, atomically (`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f), fix=fix)


def atomic_write_text(path: str, text: str, *, fix: str = "", exclusive: bool = False) -> int | None:
    """`text` (UTF-8) to `path`, atomically (`atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), fix=fix, exclusive=exclusive)


def atomic_write_json(path: str, obj, *, fix: str = "", exclusive: bool = False, **dumps) -> int | None:
    """`json.dumps(obj, **dumps)` to `path`, atomically (`atomic_write`)."""
    return atomic_write_text(path, json.dumps(obj, **dumps), fix=fix, exclusive=exclusive)


def remove_stale_tmp(folder: str) -> list[str]:
    """Delete the temporary files a killed writer left in `folder`; returns their names."""
    if not os.path.isdir(folder):
        return []
    stale = [f for f in os.listdir(folder) if f.startswith(TMP_PREFIX)]
    for name in stale:
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:  # another process cleaned it first
            pass
    return stale


# --- reading --------------------------------------------------------------------------------

def _join(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def _first_line(err: BaseException, limit: int = 160) -> str:
    """`Type: first sentence of the message` (torch's run on for lines), at most `limit` characters."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    text = lines[0].split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {text if len(text) <= limit else text[:limit - 3] + '...'}"


def file_error(path: str, problem: str, fix: str = "", error: type[UserError] = CheckpointError) -> UserError:
    """`error("<path> <problem>. <fix>")`: the message of a file that is not what it should be."""
    return error(_join(f"{path} {problem}.", fix))


def unreadable(path: str, what: str, fix: str = "", err: BaseException | None = None,
               error: type[UserError] = CheckpointError) -> UserError:
    """The error of a file that is there but cannot be read as a `what`."""
    detail = f" ({_first_line(err)})" if err is not None else ""
    return file_error(path, f"cannot be read as a {what}: it is truncated, damaged or another kind of file{detail}",
                      fix, error)


def check_present(path: str, what: str, fix: str = "", error: type[UserError] = CheckpointError) -> None:
    """A missing file is a `MissingFileError`, an empty one an `error`; both name `fix`."""
    if not os.path.isfile(path):
        raise MissingFileError(_join(f"No {what} at {path}.", fix))
    if os.path.getsize(path) == 0:
        raise file_error(path, f"is empty (0 bytes), not a {what}", fix, error)


_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def is_torch_archive(path: str) -> bool:
    """Whether `path` looks like a `torch.save` file: a zip archive holding one `<name>/data.pkl`,
    or the legacy (torch < 1.6) format, which starts with torch's pickled magic number."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in z.namelist())
        with open(path, "rb") as f:
            return f.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC
    except (OSError, zipfile.BadZipFile):
        return False


def load_torch(path: str, *, what: str = "checkpoint", fix: str = "", trusted: bool = False,
               map_location="cpu"):
    """`torch.load(path, weights_only=True)`; pickled Python objects only if `trusted`.

    A missing, empty, truncated or foreign file raises an error naming `path`, `what` was
    expected and `fix`; a torch file that pickles objects, when not `trusted`, says which
    setting allows it."""
    path = os.fspath(path)
    check_present(path, what, fix)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not is_torch_archive(path):
            raise unreadable(path, what, fix, err) from None
        if not trusted:
            raise CheckpointError(
                f"{path} pickles Python objects (a torch 1.x checkpoint such as the published "
                f"PromptKD/PromptSRC files) and cannot be read with weights_only=True. If you "
                f"trust this file, set {TRUST_KEY} True to load it with weights_only=False. "
                f"({str(err).splitlines()[0]})"
            ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, ... on a bad file
        raise unreadable(path, what, fix, err) from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise unreadable(path, what, fix, err) from None


def load_json(path: str, *, what: str, fix: str = "", kind: type | None = dict,
              error: type[UserError] = DataError):
    """The JSON value in `path` (of type `kind`, unless None), or an error naming the file and `fix`."""
    path = os.fspath(path)
    check_present(path, what, fix, error)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise unreadable(path, what, fix, err, error) from None
    if kind is not None and not isinstance(value, kind):
        raise file_error(path, f"is not a {what}: it holds a JSON {type(value).__name__}, not a "
                         f"{'JSON object' if kind is dict else kind.__name__}", fix, error)
    return value


def load_npy(path: str, *, what: str, fix: str = "", mmap_mode: str | None = None,
             error: type[UserError] = DataError) -> np.ndarray:
    """`np.load(path, allow_pickle=False)` of one array, or an error naming the file and `fix`."""
    path = os.fspath(path)
    check_present(path, what, fix, error)
    try:
        value = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise unreadable(path, what, fix, err, error) from None
    if not isinstance(value, np.ndarray):  # an .npz (zip) archive
        if hasattr(value, "close"):
            value.close()
        raise file_error(path, f"is not a {what}: it is a zip archive, not one .npy array", fix, error)
    return value


def load_pickle(path: str, *, what: str, fix: str = "", error: type[UserError] = DataError):
    """`pickle.load` of `path` (files this project writes itself), or an error naming it and `fix`."""
    path = os.fspath(path)
    check_present(path, what, fix, error)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as err:  # UnpicklingError, EOFError, AttributeError, ImportError, ...
        raise unreadable(path, what, fix, err, error) from None


def read_text(path: str, *, what: str, fix: str = "", error: type[UserError] = DataError) -> str:
    """The UTF-8 text of `path`, or an error naming the file and `fix`."""
    path = os.fspath(path)
    check_present(path, what, fix, error)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError) as err:
        raise unreadable(path, what, fix, err, error) from None
    if "\x00" in text:
        raise unreadable(path, what, fix, None, error)
    return text
