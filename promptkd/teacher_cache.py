"""Teacher-embedding cache: stage 2 without running the teacher.

The teacher's logits are exp(teacher logit scale) · e · Vᵀ with e its L2-normalised image
embedding of the view (`student.teacher_logits`). Storing e for every view (image, epoch) —
the views are a pure function of (view seed, epoch, image), `views.py` — keeps the teacher's
whole distribution: a student run reads e instead of building the teacher tower.

On disk, one folder:

    manifest.json           identity (what the cache was made from), sizes, finished shards
    e000-00000000.npy ...   shard = epoch e, images [start, start + shard_size): [rows, width]
                            float16 (default) or float32, written to a temp file, fsynced and
                            renamed, then listed in the manifest (a half-written shard is never
                            listed, so never read)
    v000-00000000.npy ...   with a view bank (views_per_image K > 0): shard = view v of each
                            image, v in [0, K), whatever the number of epochs

The cache's "slots" are its epochs (K = 0: one view per epoch and image) or the K views of
each image; `lookup`, `add` and `plan` take slot numbers (`promptkd.views.view_number` maps an
epoch to an image's view).

`TeacherCache.create` starts or resumes a cache (refusing other settings, or a disk that cannot
hold what is left); `add` takes embeddings of views in any order and writes each shard as soon
as it is complete; `plan` lists the views still missing, in shard-aligned batches (so a resumed
writer computes the same batches as an uninterrupted one). `TeacherCache.open` reads a finished
or partial cache; `lookup` of a view that is not there is an error, never a silent fallback.

`add_async` is `add` off the caller's thread (an online run's training step): the embeddings are
copied to the host without blocking (pinned memory and a CUDA event on a GPU) and a background
thread encodes, checks and writes them, in the order they were given, so the cache is the same
file for file as with `add`. A view given but not stored yet counts as present for `has`;
`lookup`, `plan`, `missing_shards` and `refresh` first wait for the views given before
(`flush`), and an error of the background thread is raised at the next call.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import queue
import shutil
import threading

import numpy as np
import torch

from .errors import ConfigError, DataError, MissingFileError, NotWritableError
from .io import (NOT_WRITABLE, atomic_write, atomic_write_json, human_size as _human, load_json, load_npy,
                 remove_stale_tmp)

logger = logging.getLogger("promptkd")

FORMAT = "promptkd-teacher-cache/1"
MANIFEST = "manifest.json"
DTYPES = {"fp16": np.float16, "fp32": np.float32}
#: every storage format (TEACHER_CACHE_DTYPE): the embeddings as fp16 / fp32, or int8 with one
#: fp32 scale per vector, or the teacher's top-k logits (`encode` / `decode`); the compact ones
#: are accepted only within a measured error (`error_check`)
FORMATS = ("fp16", "fp32", "int8", "topk")
#: int8: the largest |component| of a vector maps to 127
INT8_LEVELS = 127
#: topk: the identity key holding what its logits depend on (k, classes, temperature, class vectors)
TOPK_KEY = "topk_scoring"
# identity key -> how to name it to the user
IDENTITY_NAMES = {
    "teacher_fingerprint": "teacher weights (fingerprint)",
    "teacher_export": "teacher export (visual prompts, logit scale)",
    "width": "embedding width",
    "dataset": "dataset (DATASET.NAME)",
    "n_images": "number of train images",
    "image_list": "train image list (hash of the paths; DATASET.NUM_SHOTS / SUBSAMPLE_CLASSES / split)",
    "view_seed": "view seed (TRAINER.PROMPTKD.VIEW_SEED, default: --seed)",
    "views_per_image": "views per image (TRAINER.PROMPTKD.VIEWS_PER_IMAGE; 0 = a fresh view every epoch)",
    "transform": "train transform (INPUT.SIZE / TRANSFORMS / INTERPOLATION / RRCROP_SCALE / PIXEL_MEAN / PIXEL_STD)",
    "precision": "teacher precision (TRAINER.PROMPTKD.PREC)",
    TOPK_KEY: "top-k logits (TEACHER_CACHE_DTYPE topk: TEACHER_CACHE_TOPK, classes, TRAINER.PROMPTKD.TEMPERATURE, "
              "class vectors)",
}
# identity keys added later: the value a cache made before them has
IDENTITY_DEFAULTS = {"views_per_image": 0}
WRITE_HINT = ("Write it with `promptkd cache <the student run's train.py arguments>` "
              "(it resumes where it stopped), or fill it from an online run with "
              "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE True.")
#: a damaged file in a cache folder: its manifest may list what is no longer readable
DAMAGED_HINT = ("The cache folder is damaged: delete it and write the cache again with `python -m "
                "promptkd cache <the student run's train.py arguments>`.")
#: a full disk while writing: the writer resumes where it stopped
#: add_async: the calls that may wait for the background writer before a call waits for it
QUEUE_STEPS = 64
RESUME_HINT = ("run the same command again: the cache writer resumes where it stopped "
               "(`promptkd cache ...`, or the online run).")


def row_dtype(fmt: str, width: int, spec: dict | None = None) -> np.dtype:
    """The numpy dtype of one stored view (a shard is an array of `rows` of them, or for fp16 /
    fp32 a [rows, width] array of that dtype). topk: `spec` = {"k", "classes", ...}: k logits
    (fp16), their class indices (int16, int32 beyond 32767 classes) and the tail's logit (fp32)."""
    if fmt == "int8":
        return np.dtype([("q", np.int8, (int(width),)), ("scale", np.float32)])
    if fmt == "topk":
        k, index = int(spec["k"]), np.int16 if int(spec["classes"]) <= np.iinfo(np.int16).max else np.int32
        return np.dtype([("v", np.float16, (k,)), ("i", index, (k,)), ("rest", np.float32)])
    return np.dtype(DTYPES[fmt])


def bytes_per_view(fmt: str, width: int, spec: dict | None = None) -> int:
    return row_dtype(fmt, width, spec).itemsize * (int(width) if fmt in DTYPES else 1)


def shard_shape(fmt: str, rows: int, width: int) -> tuple:
    return (int(rows), int(width)) if fmt in DTYPES else (int(rows),)


def topk_spec(k: int, classes: int, temperature: float, vectors_id: str) -> dict:
    """The identity entry of a topk cache (k is capped at the number of classes)."""
    return {"k": min(int(k), int(classes)), "classes": int(classes), "temperature": float(temperature),
            "class_vectors": vectors_id}


def encode(fmt: str, values: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """float32 embeddings [B, width] (topk: the teacher's logits [B, classes]) -> stored rows.

    int8: q = round(e / s), s = max|e| / 127 per vector, so |e_i - s q_i| <= s / 2.
    topk: the k largest logits and their classes; the other C - k classes share the rest of the
    teacher's probability mass at temperature T uniformly, which one logit `rest` for all of
    them gives: (C - k) exp(rest / T) = sum of exp(l_j / T) over the other classes."""
    if fmt in DTYPES:
        return values.astype(DTYPES[fmt])
    out = np.zeros(len(values), row_dtype(fmt, values.shape[1], spec))
    if fmt == "int8":
        peak = np.abs(values).max(axis=1)
        scale = np.where(peak > 0, peak / INT8_LEVELS, 1.0).astype(np.float32)
        out["q"] = np.clip(np.rint(values / scale[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
        out["scale"] = scale
        return out
    k, T, C = spec["k"], spec["temperature"], values.shape[1]
    t = torch.from_numpy(values).double()
    top = t.topk(k, dim=1)
    out["v"], out["i"] = top.values.numpy().astype(np.float16), top.indices.numpy()
    if k < C:
        rest = (t / T).scatter(1, top.indices, float("-inf")).logsumexp(1)
        out["rest"] = (T * (rest - np.log(C - k))).numpy()
    return out


def decode(fmt: str, rows: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """Stored rows -> float32 embeddings [B, width] (topk: logits [B, classes], the tail's
    classes all at `rest`)."""
    if fmt in DTYPES:
        return rows.astype(np.float32)
    if fmt == "int8":
        return rows["q"].astype(np.float32) * rows["scale"][:, None].astype(np.float32)
    out = np.repeat(rows["rest"].astype(np.float32)[:, None], int(spec["classes"]), axis=1)
    np.put_along_axis(out, rows["i"].astype(np.int64), rows["v"].astype(np.float32), axis=1)
    return out


def error_check(fmt: str, vectors: torch.Tensor, logit_scale: float, temperature: float, bound: float,
                mass_bound: float, spec: dict | None = None):
    """For a compact format: a check that `TeacherCache.add` runs on every batch it stores,
    refusing the format when its measured error exceeds the stated bound. int8: max over views
    and classes of |Δlogit| / T against the run's class vectors (logit = exp(logit scale) e · v)
    <= `bound` (TEACHER_CACHE_MAX_LOGIT_ERROR). topk: the stored logits' |Δlogit| / T <= `bound`
    too, and ||p_topk - p||_1 of the teacher's distribution at T (what sets the KD gradient's
    error) <= `mass_bound` (TEACHER_CACHE_MAX_PROB_ERROR). None for fp16 / fp32, kept as they are."""
    if fmt in DTYPES:
        return None
    v = vectors.detach().to("cpu", torch.float32)
    factor = float(np.exp(logit_scale))
    fix = ("store fp16 (TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE fp16), or raise the bound knowingly "
           "(docs/teacher_cache.md, Compact formats).")

    def check(original: np.ndarray, stored: np.ndarray) -> float:
        if not len(original):
            return 0.0
        if fmt == "int8":
            error = float((torch.from_numpy(decode(fmt, stored) - original) @ v.t()).abs().max()) * factor / temperature
        else:
            logits = torch.from_numpy(original)
            kept = logits.gather(1, torch.from_numpy(stored["i"].astype(np.int64)))
            error = float((torch.from_numpy(stored["v"].astype(np.float32)) - kept).abs().max()) / temperature
            p = torch.softmax(logits.double() / temperature, 1)
            q = torch.softmax(torch.from_numpy(decode(fmt, stored, spec)).double() / temperature, 1)
            mass = float((q - p).abs().sum(1).max())
            if mass > mass_bound:
                raise ConfigError(
                    f"The topk teacher cache (k = {spec['k']}) moves the teacher's distribution by ||dp||_1 up to "
                    f"{mass:.4f} on these views, more than TRAINER.PROMPTKD.TEACHER_CACHE_MAX_PROB_ERROR "
                    f"{mass_bound:g}: too much of it is outside the top {spec['k']}. Raise "
                    f"TRAINER.PROMPTKD.TEACHER_CACHE_TOPK, or " + fix)
        if error > bound:
            raise ConfigError(
                f"The {fmt} teacher cache moves the teacher's logits / T by up to {error:.4f} on these views, more "
                f"than TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR {bound:g}: " + fix)
        return error
    return check


def estimate_bytes(n_images: int, epochs: int, width: int, dtype: str, spec: dict | None = None) -> int:
    return int(n_images) * int(epochs) * bytes_per_view(dtype, width, spec)


def _setting_differences(manifest: dict, identity: dict, epochs: int, dtype: str, shard_size: int) -> list[str]:
    """What differs between a cache's manifest and this run's identity and storage settings."""
    diff = _differences(manifest["identity"], identity)
    for key, want in (("epochs", epochs), ("dtype", dtype), ("shard_size", shard_size)):
        if manifest[key] != want:
            diff.append(f"{key}: cache {manifest[key]!r}, this run {want!r}")
    return diff


def _differences(stored: dict, wanted: dict) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(wanted), key=lambda k: list(IDENTITY_NAMES).index(k) if k in IDENTITY_NAMES else 99):
        a, b = stored.get(key, IDENTITY_DEFAULTS.get(key)), wanted.get(key, IDENTITY_DEFAULTS.get(key))
        if a != b:
            name = IDENTITY_NAMES.get(key, key)
            if isinstance(a, list) or isinstance(b, list):
                out.append(f"{name}: cache {a}, this run {b}")
            else:
                out.append(f"{name}: cache {a!r}, this run {b!r}")
    return out


class TeacherCache:
    """A cache folder: its manifest, shard layout, buffered writing and reading."""

    def __init__(self, directory: str, manifest: dict):
        self.directory = directory
        self.manifest = manifest
        self.n_images = int(manifest["n_images"])
        self.epochs = int(manifest["epochs"])
        self.width = int(manifest["width"])
        self.dtype = manifest["dtype"]
        self.shard_size = int(manifest["shard_size"])
        self.views_per_image = int(manifest.get("views_per_image", 0))
        #: topk: what its logits depend on (k, classes, temperature, class vectors); else None
        self.spec = manifest["identity"].get(TOPK_KEY) if self.dtype == "topk" else None
        #: lookup gives the teacher's logits [B, classes] (topk), not embeddings [B, width]
        self.gives_logits = self.dtype == "topk"
        #: topk, writing: embeddings [B, width] (numpy) -> the teacher's logits [B, classes]
        self.scorer = None
        self._buffers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._maps: dict[str, np.ndarray] = {}
        #: compact formats: a check(original, stored) run on every batch `add` stores
        #: (`logit_error_check`); the largest error it measured
        self.check = None
        self.max_error = 0.0
        # add_async: the background writer, its queue, the views given but not stored yet
        self._lock, self._pending_lock = threading.RLock(), threading.Lock()  # buffers / pending views
        self._queue: queue.Queue | None = None
        self._pending: collections.Counter = collections.Counter()
        self._error: BaseException | None = None

    # --- layout ------------------------------------------------------------------------------
    def shard_starts(self) -> range:
        return range(0, self.n_images, self.shard_size)

    def shard_name(self, epoch: int, start: int) -> str:
        return f"{'v' if self.views_per_image else 'e'}{epoch:03d}-{start:08d}.npy"

    def shard_rows(self, start: int) -> int:
        return min(self.shard_size, self.n_images - start)

    @property
    def done(self) -> dict:
        return self.manifest["shards"]

    def n_shards(self, epochs: int | None = None) -> int:
        return len(self.shard_starts()) * (self.epochs if epochs is None else epochs)

    def missing_shards(self, epochs) -> list[tuple[int, int]]:
        self.flush()
        return [(e, s) for e in epochs for s in self.shard_starts() if self.shard_name(e, s) not in self.done]

    def is_complete(self, epochs=None) -> bool:
        return not self.missing_shards(range(self.epochs) if epochs is None else epochs)

    # --- creating / opening ------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str, identity: dict, n_images: int, epochs: int, width: int,
               dtype: str = "fp16", shard_size: int = 4096, views_per_image: int = 0) -> "TeacherCache":
        """Start a cache in `directory`, or resume the one there (same settings only).
        `epochs` is the number of slots: the run's epochs, or views_per_image when that is > 0."""
        if dtype not in FORMATS:
            raise ConfigError(f"teacher cache dtype '{dtype}': use one of {', '.join(FORMATS)}.")
        spec = identity.get(TOPK_KEY)
        if dtype == "topk" and not spec:
            raise ValueError(f"a topk teacher cache needs identity[{TOPK_KEY!r}] (topk_spec).")
        if shard_size < 1:
            raise ConfigError(f"teacher cache shard size must be >= 1, got {shard_size}.")
        path = os.path.join(directory, MANIFEST)
        why = _write_problem(directory)
        if why:
            return cls._read_only(directory, identity, epochs, dtype, shard_size, why)
        with _locked(directory):
            if os.path.isfile(path):
                cache = cls(directory, _read_manifest(path))
                diff = _setting_differences(cache.manifest, identity, epochs, dtype, shard_size)
                if diff:
                    raise ConfigError(f"The teacher cache in {directory} was made with other settings: "
                                      + "; ".join(diff) + ". Use another TRAINER.PROMPTKD.TEACHER_CACHE folder "
                                      "for these settings (or delete this one).")
                remove_stale_tmp(directory)  # a writer killed mid-shard
            else:
                manifest = {"format": FORMAT, "identity": identity, "n_images": int(n_images),
                            "epochs": int(epochs), "width": int(width), "dtype": dtype,
                            "shard_size": int(shard_size), "shards": {}}
                if views_per_image:
                    manifest["views_per_image"] = int(views_per_image)
                _write_manifest(directory, manifest)
                cache = cls(directory, manifest)
        left = len(cache.missing_shards(range(cache.epochs)))
        need = sum(cache.shard_rows(s) for _, s in cache.missing_shards(range(cache.epochs))) \
            * bytes_per_view(dtype, width, spec)
        total = estimate_bytes(n_images, epochs, width, dtype, spec)
        free = shutil.disk_usage(directory).free
        logger.info("Teacher cache %s: %d views (%d images x %d %s) x %d x %s = %s in all; %d of %d shards "
                    "to write (%s), %s free on the disk.", directory, n_images * epochs, n_images, epochs,
                    "views each" if cache.views_per_image else "epochs", width, dtype, _human(total), left, cache.n_shards(), _human(need), _human(free))
        if need > free:
            raise DataError(f"The teacher cache needs {_human(need)} more in {directory} but the disk has only "
                            f"{_human(free)} free. Free space, choose another TRAINER.PROMPTKD.TEACHER_CACHE folder, "
                            "or store fp16 (TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE fp16).")
        return cache

    @classmethod
    def _read_only(cls, directory: str, identity: dict, epochs: int, dtype: str, shard_size: int,
                   why: str) -> "TeacherCache":
        """A cache folder this process cannot write (a read-only mount, another user's folder): a
        complete cache made with these settings is used as it is (nothing is left to write);
        anything else is an error naming the folder and the way out."""
        path = os.path.join(directory, MANIFEST)
        fix = ("Give TRAINER.PROMPTKD.TEACHER_CACHE a folder this user can write (or make this one writable)"
               ", or, to read a finished cache from a read-only location, run the student without "
               "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE (`promptkd train` reads it and writes nothing there).")
        if not os.path.isfile(path):
            raise NotWritableError(f"The teacher cache folder {directory} cannot be written ({why}), and it holds no "
                                   f"cache yet ({MANIFEST}): nothing can be cached there. {fix}")
        cache = cls(directory, _read_manifest(path))
        diff = _setting_differences(cache.manifest, identity, epochs, dtype, shard_size)
        if diff:
            raise NotWritableError(f"The teacher cache in {directory} was made with other settings ("
                                   + "; ".join(diff) + f"), and the folder cannot be written ({why}). {fix}")
        missing = cache.missing_shards(range(cache.epochs))
        if missing:
            raise NotWritableError(f"The teacher cache in {directory} is incomplete ({len(missing)} of "
                                   f"{cache.n_shards()} shards missing), and the folder cannot be written ({why}), so "
                                   f"the missing views cannot be added. {fix}")
        logger.info("Teacher cache %s: complete and read-only (%s); nothing to write.", directory, why)
        return cache

    @classmethod
    def open(cls, directory: str, identity: dict, epochs: int) -> "TeacherCache":
        """Open a cache for reading; refuse one made with other settings or too few epochs."""
        path = os.path.join(directory, MANIFEST)
        if not os.path.isfile(path):
            raise MissingFileError(f"No teacher cache at {directory} (no {MANIFEST}). {WRITE_HINT}")
        cache = cls(directory, _read_manifest(path))
        diff = _differences(cache.manifest["identity"], identity)
        if epochs > cache.epochs:
            diff.append(f"epochs: cache {cache.epochs}, this run {epochs} (OPTIM.MAX_EPOCH)")
        if diff:
            raise ConfigError(f"The teacher cache in {directory} does not match this run: " + "; ".join(diff)
                              + f". Use a cache written with this run's settings. {WRITE_HINT}")
        missing = cache.missing_shards(range(epochs))
        if missing:  # fail now, not hours into the run
            e, s = missing[0]
            raise DataError(f"The teacher cache in {directory} is incomplete: {len(missing)} of {cache.n_shards(epochs)} "
                            f"shards for {epochs} epochs are missing (the first: {cache.shard_name(e, s)}, epoch {e + 1}). "
                            + WRITE_HINT)
        done = cache.n_shards(epochs)
        logger.info("Teacher cache %s: %s embeddings, %d of %d shards for %d epochs present%s.", directory,
                    cache.dtype, done, cache.n_shards(epochs), epochs,
                    "" if epochs == cache.epochs else f" (the cache holds {cache.epochs} epochs)")
        return cache

    # --- writing -----------------------------------------------------------------------------
    def plan(self, epochs, batch_size: int) -> list[list[tuple[int, int]]]:
        """The views still missing in `epochs`, as (epoch, index) batches that never cross a shard."""
        self.flush()
        batches = []
        for e, s in self.missing_shards(epochs):
            rows = range(s, s + self.shard_rows(s))
            buf = self._buffers.get((e, s))
            todo = [i for i in rows if buf is None or not buf[1][i - s]]
            batches += [[(e, i) for i in todo[k:k + batch_size]] for k in range(0, len(todo), batch_size)]
        return batches

    def has(self, slot: int, index: int) -> bool:
        """Whether view (slot, index) is stored: in a written shard or in this process's buffers,
        or given to `add_async` (stored when its turn comes)."""
        if (slot, index) in self._pending:
            return True
        start = index - index % self.shard_size
        name = self.shard_name(slot, start)
        with self._lock:
            if name in self.done or name in self._maps:
                return True
            buf = self._buffers.get((slot, start))
            return buf is not None and bool(buf[1][index - start])

    def refresh(self) -> None:
        """Re-read the manifest (shards another process has written since)."""
        self.flush()
        self.manifest = _read_manifest(os.path.join(self.directory, MANIFEST))

    def add(self, epochs, indices, embeddings: torch.Tensor, write: bool = True) -> None:
        """Store embeddings [B, width] of views (epochs[b], indices[b]); write finished shards.
        write=False (a DDP rank other than the writer): a finished shard stays in memory."""
        original = embeddings.detach().to("cpu", torch.float32).numpy()
        if original.shape[1:] != (self.width,):
            raise ValueError(f"embeddings of width {original.shape[1:]} for a cache of width {self.width}.")
        if self.dtype == "topk":
            if self.scorer is None:
                raise ValueError("a topk teacher cache needs its scorer (the teacher's logits) to store views.")
            original = self.scorer(original)
        values = encode(self.dtype, original, self.spec)
        if self.check is not None:
            self.max_error = max(self.max_error, self.check(original, values))
        with self._lock:  # the buffers (has / lookup read them from the caller's thread); the writes outside
            finished = self._fill(epochs, indices, values)
        for key in finished:
            buf = self._buffers[key][0]
            if write:
                self._write_shard(*key, buf)
            with self._lock:
                if not write:
                    self._maps[self.shard_name(*key)] = buf
                del self._buffers[key]

    def _fill(self, epochs, indices, values) -> list:
        """Put encoded rows in their shards' buffers; the (slot, start) of the shards now full."""
        touched = set()
        for e, i, v in zip(_ints(epochs), _ints(indices), values):
            start = i - i % self.shard_size
            if self.shard_name(e, start) in self.done or self.shard_name(e, start) in self._maps:
                continue
            if (e, start) not in self._buffers:
                rows = self.shard_rows(start)
                self._buffers[(e, start)] = (np.zeros(shard_shape(self.dtype, rows, self.width),
                                                      row_dtype(self.dtype, self.width, self.spec)),
                                             np.zeros(rows, bool))
            buf, filled = self._buffers[(e, start)]
            buf[i - start], filled[i - start] = v, True
            touched.add((e, start))
        return [key for key in sorted(touched) if self._buffers[key][1].all()]

    def add_async(self, epochs, indices, embeddings: torch.Tensor, write: bool = True) -> None:
        """`add`, done by a background thread: returns once the embeddings' copy to the host is
        queued (on a GPU: `non_blocking` into pinned memory, a CUDA event marks its end; the
        caller's stream is never waited for here). The views are stored in the order given, so
        the cache holds what `add` would write. At most `QUEUE_STEPS` calls wait in the queue
        (beyond that a call waits for the writer: memory stays bounded)."""
        self._raise_error()
        if embeddings.shape[1:] != (self.width,):
            raise ValueError(f"embeddings of width {tuple(embeddings.shape[1:])} for a cache of width {self.width}.")
        keys = list(zip(_ints(epochs), _ints(indices)))  # host values in the trainer (a CUDA tensor would sync)
        host, done = _host(embeddings.detach()), None
        if embeddings.is_cuda:
            done = torch.cuda.Event()
            done.record()
        with self._pending_lock:
            self._pending.update(keys)
        if self._queue is None:
            self._queue = queue.Queue(maxsize=QUEUE_STEPS)
            threading.Thread(target=self._drain, name=f"teacher-cache-writer {self.directory}", daemon=True).start()
        self._queue.put((keys, host, done, write))

    def flush(self) -> None:
        """Wait until every view given to `add_async` is stored (and its shards written); raise
        the background thread's error, if it had one."""
        if self._queue is not None:
            self._queue.join()
        self._raise_error()

    def _drain(self) -> None:
        while True:
            keys, host, done, write = self._queue.get()
            try:
                if self._error is None:  # after an error the rest is dropped (the run stops at its next call)
                    if done is not None:
                        done.synchronize()  # the copy to the host has landed
                    self.add([e for e, _ in keys], [i for _, i in keys], host, write)
            except BaseException as err:  # noqa: BLE001  (raised again on the caller's thread)
                self._error = err
            finally:
                with self._pending_lock:
                    self._pending.subtract(keys)
                    for key in keys:
                        if self._pending[key] <= 0:
                            del self._pending[key]
                self._queue.task_done()

    def _raise_error(self) -> None:
        err, self._error = self._error, None
        if err is not None:
            raise err

    def _write_shard(self, epoch: int, start: int, values: np.ndarray) -> None:
        name = self.shard_name(epoch, start)
        size = atomic_write(os.path.join(self.directory, name), lambda f: np.save(f, values, allow_pickle=False),
                            fix=RESUME_HINT)
        with _locked(self.directory):  # another writer may have listed shards meanwhile
            manifest = _read_manifest(os.path.join(self.directory, MANIFEST))
            manifest["shards"][name] = size
            _write_manifest(self.directory, manifest)
        self.manifest = manifest

    # --- reading -----------------------------------------------------------------------------
    def lookup(self, epochs, indices) -> torch.Tensor:
        """Embeddings [B, width] (float32) of views (epochs[b], indices[b])."""
        if self._pending and any(key in self._pending for key in zip(_ints(epochs), _ints(indices))):
            self.flush()  # given to add_async, not stored yet
        with self._lock:
            return self._lookup(epochs, indices)

    def _lookup(self, epochs, indices) -> torch.Tensor:
        out = np.empty((len(indices), int(self.spec["classes"]) if self.gives_logits else self.width), np.float32)
        one = None if self.dtype in DTYPES else row_dtype(self.dtype, self.width, self.spec)
        for b, (e, i) in enumerate(zip(_ints(epochs), _ints(indices))):
            if not (0 <= e < self.epochs and 0 <= i < self.n_images):
                what = f"view {e}" if self.views_per_image else f"epoch {e + 1}"
                holds = f"{self.epochs} views" if self.views_per_image else f"{self.epochs} epochs"
                raise DataError(f"The teacher cache in {self.directory} has no view for {what}, image {i}: "
                                f"it holds {holds} of {self.n_images} images.")
            start = i - i % self.shard_size
            buf = self._buffers.get((e, start))
            if buf is not None and buf[1][i - start]:  # embedded by this run, shard not finished yet
                row = buf[0][i - start]
            else:
                row = self._shard(e, start)[i - start]
            out[b] = row if one is None else decode(self.dtype, np.array([row], one), self.spec)[0]
        return torch.from_numpy(out)

    def _shard(self, epoch: int, start: int) -> np.ndarray:
        name = self.shard_name(epoch, start)
        if name not in self._maps:
            if name not in self.done:  # it may have been written since we opened the manifest
                self.manifest = _read_manifest(os.path.join(self.directory, MANIFEST))
            if name not in self.done:
                raise DataError(
                    f"The teacher cache in {self.directory} has no shard {name} (epoch {epoch + 1}, images "
                    f"{start}..{start + self.shard_rows(start) - 1}): {len(self.done)} of {self.n_shards()} "
                    f"shards are written. {WRITE_HINT}")
            path = os.path.join(self.directory, name)
            values = load_npy(path, what="teacher cache shard (.npy)", fix=DAMAGED_HINT, mmap_mode="r")
            shape = shard_shape(self.dtype, self.shard_rows(start), self.width)
            dtype = row_dtype(self.dtype, self.width, self.spec)
            if values.shape != shape or values.dtype != dtype:
                raise DataError(f"Teacher cache shard {path} holds {values.dtype} {values.shape}, expected "
                                f"{dtype} {shape}. "
                                + DAMAGED_HINT)
            self._maps[name] = values
        return self._maps[name]


def _host(t):
    """`t` on the host without waiting for its device: a CUDA tensor is copied with `non_blocking`
    into pinned memory (valid once an event recorded after it has completed); others as they are."""
    if not isinstance(t, torch.Tensor) or not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _ints(values) -> list[int]:
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _write_problem(directory: str) -> str | None:
    """Create `directory` if needed; why this process cannot create files in it ("Read-only file
    system", "Permission denied"), or None when it can. Found by creating its lock file: as root
    the mode bits alone do not say."""
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, ".lock"), "a"):
            pass
    except OSError as err:
        if err.errno in NOT_WRITABLE:
            return os.strerror(err.errno)
        if isinstance(err, (FileExistsError, NotADirectoryError)):
            raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_CACHE {directory}: {err.strerror} (a file is in the way). "
                              "Give a folder.") from None
        raise
    return None


@contextlib.contextmanager
def _locked(directory: str):
    with open(os.path.join(directory, ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_manifest(path: str) -> dict:
    manifest = load_json(path, what="teacher cache manifest", fix=DAMAGED_HINT)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a teacher cache manifest of format {FORMAT} "
                        f"(found {manifest.get('format')!r}). {DAMAGED_HINT}")
    return manifest


def _write_manifest(directory: str, manifest: dict) -> None:
    atomic_write_json(os.path.join(directory, MANIFEST), manifest, fix=RESUME_HINT, indent=1, sort_keys=True)
