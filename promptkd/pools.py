"""The unlabelled pool of stage 2, in plain Python: sources, budgets, content hashes, leakage.

The pool is TRAINER.PROMPTKD.POOL, a list of sources (`parse_pool`):

* ``train``: the dataset's train split as the data settings build it (all classes by default:
  the published protocol; labels never read);
* ``train_base``: its base-class images only (class membership comes from the split's labels);
* ``folder:PATH``: every image file below PATH (any tree; no labels);
* ``wds:PATTERN``: WebDataset ``.tar`` shards, a path or brace pattern (``shard-{000..009}.tar``).

Budgets (`budget_keep`, `per_class_keep`) keep N images by a seeded hash of each image's
name, so the same N come back on every run, whatever the listing order, and adding images
to a folder keeps the previous choice except where a new image ranks lower.

Content hashes (`HashCache`) are sha256 of a file's bytes, cached per file under (absolute
path, size, mtime_ns) in one small JSON file, so a re-run reads no image; a shard's entry is
the (key, sha256) of every image member. `find_overlap` matches a pool's hashes against the
evaluation splits' hashes. No torch, no Dassl.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import tarfile
import zlib
from dataclasses import dataclass

from .errors import ConfigError, DataError, MissingFileError
from .extras import require
from .io import IMAGE_EXTENSIONS, atomic_write_text

logger = logging.getLogger("promptkd")

SPLIT_KINDS = ("train", "train_base")
PATH_KINDS = ("folder", "wds")
KINDS = SPLIT_KINDS + PATH_KINDS
HASH_CACHE_FORMAT = 1
#: the image members of a WebDataset sample, in the order tried
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
POOL_HINT = ("TRAINER.PROMPTKD.POOL is a list of sources: train (the default), train_base, folder:PATH, "
             "wds:PATTERN (e.g. \"['train', 'folder:/data/extra']\"); see docs/protocols.md.")


@dataclass(frozen=True)
class PoolSource:
    kind: str  # one of KINDS
    arg: str = ""  # the folder or the shard pattern

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def parse_pool(entries) -> list[PoolSource]:
    """TRAINER.PROMPTKD.POOL (a list, or one string) -> sources, checked (each once)."""
    if isinstance(entries, str):
        entries = [entries]
    entries = [str(e).strip() for e in entries]
    if not entries:
        raise ConfigError("TRAINER.PROMPTKD.POOL is empty. " + POOL_HINT)
    sources = []
    for entry in entries:
        kind, sep, arg = entry.partition(":")
        kind = kind.strip().lower()
        if kind in SPLIT_KINDS and not sep:
            source = PoolSource(kind)
        elif kind in PATH_KINDS and arg.strip():
            source = PoolSource(kind, os.path.abspath(os.path.expanduser(arg.strip())))
        else:
            raise ConfigError(f"TRAINER.PROMPTKD.POOL entry '{entry}' is not a pool source. " + POOL_HINT)
        if source in sources:
            raise ConfigError(f"TRAINER.PROMPTKD.POOL names '{entry}' twice: each image would be distilled twice.")
        sources.append(source)
    if {"train", "train_base"} <= {s.kind for s in sources}:
        raise ConfigError("TRAINER.PROMPTKD.POOL has both train and train_base: train already holds the base "
                          "classes' images. Keep one.")
    return sources


def list_folder_images(folder: str) -> list[str]:
    """Every image file below `folder` (by extension, hidden entries skipped), sorted."""
    if not os.path.isdir(folder):
        raise MissingFileError(f"TRAINER.PROMPTKD.POOL folder:{folder}: no such folder. Give an existing folder "
                               "of images (any tree, labels are not read).")
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(top, f) for f in files
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    found.sort()
    if not found:
        raise DataError(f"TRAINER.PROMPTKD.POOL folder:{folder} holds no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}).")
    return found


def expand_shards(pattern: str) -> list[str]:
    """A shard path, brace pattern (`braceexpand`, as webdataset expands it) or glob -> the
    shard files, each checked to exist (in the pattern's order)."""
    what = f"TRAINER.PROMPTKD.POOL wds:{pattern} (.tar shards)"
    require("webdataset", "shards", what)
    braceexpand = require("braceexpand", "shards", what).braceexpand  # webdataset's own dependency

    paths = []
    for part in braceexpand(pattern):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        if not matches or not all(os.path.isfile(p) for p in matches):
            missing = [p for p in matches if not os.path.isfile(p)] or [part]
            raise MissingFileError(f"TRAINER.PROMPTKD.POOL wds:{pattern}: shard {missing[0]} does not exist. "
                                   "Give .tar shard files (a path, a brace pattern such as "
                                   "/data/shards/pool-{000000..000009}.tar, or a glob).")
        paths += matches
    if len(set(paths)) != len(paths):
        raise ConfigError(f"TRAINER.PROMPTKD.POOL wds:{pattern} names a shard twice.")
    return paths


# --- budgets ---------------------------------------------------------------------------------
def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"promptkd-pool:{int(seed)}:{key}".encode(), digest_size=16).digest()


def budget_keep(keys: list[str], budget: int, seed: int) -> list[int]:
    """The positions of the `budget` keys ranked first by a seeded hash, in the input order.

    The choice depends only on (seed, the set of keys): not on the listing order, the
    process count or any RNG state."""
    if budget <= 0 or budget >= len(keys):
        return list(range(len(keys)))
    chosen = sorted(range(len(keys)), key=lambda i: _rank(seed, keys[i]))[:budget]
    return sorted(chosen)


def per_class_keep(keys: list[str], labels: list[int], per_class: int, seed: int) -> list[int]:
    """`per_class` keys of each label (the first by the seeded hash), in the input order."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    chosen = []
    for members in groups.values():
        chosen += sorted(members, key=lambda i: _rank(seed, keys[i]))[:per_class]
    return sorted(chosen)


# --- content hashes --------------------------------------------------------------------------
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


#: a shard folder's sample counts, {shard file name: samples} (open_clip's / LAION's convention)
SIZES_FILE = "sizes.json"
TAR_BLOCK = 512


def shard_members(path: str) -> list[tuple[str, str]]:
    """[(sample key, sha256 of its image member)] of a WebDataset shard, in shard order (the
    key is the member name up to its first dot in the basename, as webdataset splits it)."""
    return shard_contents(path)[0]


def shard_contents(path: str) -> tuple[list[tuple[str, str]], int]:
    """(`shard_members`, the number of samples of any kind) of a WebDataset shard, read in full.

    A shard must end with the tar end-of-archive block: Python's tarfile (and webdataset, which
    reads shards with it) stops without a word at a header that was cut off or is garbage, so a
    shard cut at a member boundary would otherwise read as a shorter, valid one. Where the shard's
    folder has a `sizes.json` ({file name: samples}), the count read must be the one it states."""
    out, seen, samples = [], set(), set()
    fix = "Replace it (copy or download it again), or drop it from TRAINER.PROMPTKD.POOL."
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                samples.add(key)
                if not dot or ext.lower() not in WDS_IMAGE_EXTENSIONS or key in seen:
                    continue
                seen.add(key)
                out.append((key, sha256_bytes(tar.extractfile(member).read())))
            end = tar.offset  # where tarfile stopped looking for the next header
            tar.fileobj.seek(end)
            tail = tar.fileobj.read(TAR_BLOCK)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"WebDataset shard {path} cannot be read as a tar file (damaged, or cut short): {err}. "
                        f"{fix}") from None
    if len(tail) < TAR_BLOCK or any(tail):
        what = "ends" if not tail else ("is cut off inside a header" if len(tail) < TAR_BLOCK else
                                        "holds bytes that are not a tar header")
        raise DataError(f"WebDataset shard {path} {what} at byte {end} after {len(samples)} samples ({len(out)} "
                        f"images), without the tar end-of-archive block: it was cut short or damaged (an interrupted "
                        f"copy or download), so it holds fewer samples than it was written with. {fix}")
    check_stated_size(path, len(samples))
    return out, len(samples)


def check_stated_size(path: str, samples: int) -> None:
    """A shard's sample count against its folder's `sizes.json`, where there is one."""
    stated = shard_size_stated(path)
    if stated is not None and stated != samples:
        raise DataError(f"WebDataset shard {path} holds {samples} samples, but "
                        f"{os.path.join(os.path.dirname(os.path.abspath(path)), SIZES_FILE)} says {stated}: the shard "
                        "is not the one the counts were written for (damaged, or replaced). Replace it, fix the "
                        "count, or drop the shard from TRAINER.PROMPTKD.POOL.")


def shard_size_stated(path: str) -> int | None:
    """The sample count `sizes.json` in the shard's folder states for it, if there is one."""
    sizes_path = os.path.join(os.path.dirname(os.path.abspath(path)), SIZES_FILE)
    if not os.path.isfile(sizes_path):
        return None
    try:
        with open(sizes_path, encoding="utf-8") as f:
            sizes = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{sizes_path} (the shards' sample counts) cannot be read: {err}. Fix it as "
                        "{\"shard-000000.tar\": 10000, ...}, or remove it.") from None
    if not isinstance(sizes, dict):
        raise DataError(f"{sizes_path} is not a JSON object of shard file names and sample counts.")
    count = sizes.get(os.path.basename(path))
    if count is None:
        return None
    if type(count) is not int or count < 0:
        raise DataError(f"{sizes_path}: the count of {os.path.basename(path)} is {count!r}, not a number of samples.")
    return count


class HashCache:
    """sha256 of files (and of shards' image members), cached per (path, size, mtime_ns).

    One JSON file; `save()` rewrites it atomically when something was hashed. Entries of
    files that changed are recomputed; `hashed` counts the files read in this process."""

    def __init__(self, path: str):
        self.path = path
        self.files: dict[str, list] = {}
        self.shards: dict[str, list] = {}
        self.hashed, self.dirty = 0, False
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                if data.get("format") == HASH_CACHE_FORMAT and all(isinstance(data.get(k, {}), dict)
                                                                   for k in ("files", "shards")):
                    self.files, self.shards = data.get("files", {}), data.get("shards", {})
            except (OSError, ValueError, AttributeError) as err:  # a cache only: rebuilt, never trusted half-read
                logger.warning("Content-hash cache %s is unreadable (%s): hashing again.", path, err)

    @staticmethod
    def _stamp(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    def file(self, path: str) -> str:
        path = os.path.abspath(path)
        size, mtime = self._stamp(path)
        entry = self.files.get(path)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [size, mtime] and isinstance(entry[2], str):
            return entry[2]
        digest = sha256_file(path)
        self.files[path] = [size, mtime, digest]
        self.hashed, self.dirty = self.hashed + 1, True
        return digest

    def shard(self, path: str) -> list[tuple[str, str]]:
        path = os.path.abspath(path)
        size, mtime = self._stamp(path)
        entry = self.shards.get(path)
        if (isinstance(entry, list) and len(entry) == 4 and entry[:2] == [size, mtime]  # older entries: read again
                and isinstance(entry[2], list) and type(entry[3]) is int):
            check_stated_size(path, entry[3])
            return [tuple(m) for m in entry[2]]
        members, samples = shard_contents(path)
        self.shards[path] = [size, mtime, [list(m) for m in members], samples]
        self.hashed, self.dirty = self.hashed + 1, True
        return members

    def save(self) -> None:
        if self.path and self.dirty:
            text = json.dumps({"format": HASH_CACHE_FORMAT, "files": self.files, "shards": self.shards})
            atomic_write_text(self.path, text, fix="Free some space, or point TRAINER.PROMPTKD.HASH_CACHE elsewhere.")
            self.dirty = False


def find_overlap(pool: dict[str, str], splits: dict[str, dict[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """{split: [(pool image, split image with the same bytes)]} for every split with overlap.

    `pool` and each split map an image's name (path, or shard::key) to its content hash."""
    found = {}
    for split, images in splits.items():
        by_hash: dict[str, str] = {}
        for name, digest in images.items():
            by_hash.setdefault(digest, name)
        pairs = sorted((name, by_hash[d]) for name, d in pool.items() if d in by_hash)
        if pairs:
            found[split] = pairs
    return found
