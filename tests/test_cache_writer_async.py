"""The teacher cache written off the training step (issue 37 item 14): `TeacherCache.add_async`
copies a step's embeddings to the host without blocking and a background thread encodes and
writes them, in order, so the cache is the same file for file as the synchronous `add` wrote,
and the step no longer waits for the write (on a GPU: for the copy either).
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from promptkd.errors import NotWritableError
from promptkd.teacher_cache import TeacherCache

WIDTH, N, SHARD = 6, 40, 8


def identity():
    return {"teacher_fingerprint": "t", "teacher_export": "e", "width": WIDTH, "dataset": "d", "n_images": N,
            "image_list": "l", "view_seed": 0, "transform": "x", "precision": "fp32", "views_per_image": 0}


def steps(epochs=2, batch=5, seed=0):
    """An online run's steps: each epoch's images in a shuffled order, in batches (not aligned
    with the shards), with random embeddings."""
    g = torch.Generator().manual_seed(seed)
    for e in range(epochs):
        order = torch.randperm(N, generator=g)
        for k in range(0, N, batch):
            idx = order[k:k + batch]
            yield torch.full((len(idx),), e), idx, torch.randn(len(idx), WIDTH, generator=g) * 3


def files(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder)) if n.endswith(".npy")}


@pytest.mark.parametrize("fmt", ["fp16", "fp32", "int8"])
def test_async_writer_writes_the_same_files(tmp_path, fmt):
    sync = TeacherCache.create(str(tmp_path / "sync"), identity(), N, 2, WIDTH, fmt, SHARD)
    threaded = TeacherCache.create(str(tmp_path / "async"), identity(), N, 2, WIDTH, fmt, SHARD)
    for e, i, x in steps():
        sync.add(e, i, x)
        threaded.add_async(e, i, x)
    threaded.flush()
    a, b = files(tmp_path / "sync"), files(tmp_path / "async")
    assert len(a) == 2 * N // SHARD and a == b  # byte for byte
    assert threaded.is_complete() and sorted(threaded.manifest["shards"]) == sorted(sync.manifest["shards"])


def test_the_step_does_not_wait_for_a_slow_writer(tmp_path, monkeypatch):
    """A writer that takes 0.1 s a shard: 10 shards cost the synchronous `add` >= 1 s in the
    step loop; `add_async` returns at once (the loop takes < 0.3 s of the 1 s even on a loaded
    2-core machine: it only queues) and `flush` waits for the writes."""
    real = TeacherCache._write_shard

    def slow(self, *args):
        time.sleep(0.1)
        assert threading.current_thread() is not threading.main_thread() or not self.async_expected
        return real(self, *args)

    monkeypatch.setattr(TeacherCache, "_write_shard", slow)
    timings = {}
    for name in ("sync", "async"):
        cache = TeacherCache.create(str(tmp_path / name), identity(), N, 2, WIDTH, "fp16", SHARD)
        cache.async_expected = name == "async"
        start = time.perf_counter()
        for e, i, x in steps():
            (cache.add_async if name == "async" else cache.add)(e, i, x)
        timings[name] = time.perf_counter() - start
        cache.flush()
        assert cache.is_complete()
    assert timings["sync"] >= 1.0 and timings["async"] < 0.3, timings
    assert files(tmp_path / "sync") == files(tmp_path / "async")


def test_views_given_count_as_stored_and_read_back(tmp_path, monkeypatch):
    """A view bank asks `has` before it embeds a view and reads stored ones back: a view given
    to the writer counts as present at once, and `lookup` waits for it."""
    cache = TeacherCache.create(str(tmp_path / "c"), identity(), N, 2, WIDTH, "fp32", SHARD)
    gate = threading.Event()
    real = TeacherCache.add
    monkeypatch.setattr(TeacherCache, "add", lambda self, *a, **k: (gate.wait(5), real(self, *a, **k))[1])
    x = torch.randn(3, WIDTH)
    cache.add_async([1, 1, 1], [0, 9, 17], x)
    assert cache.has(1, 9) and not cache.has(0, 9) and not cache.has(1, 10)
    threading.Timer(0.2, gate.set).start()
    assert torch.equal(cache.lookup([1, 1], [17, 0]), x[[2, 0]])  # waited for the writer
    assert not cache._pending


def test_a_writer_error_is_raised_in_the_run(tmp_path, monkeypatch):
    cache = TeacherCache.create(str(tmp_path / "c"), identity(), N, 2, WIDTH, "fp16", SHARD)

    def refuse(self, *args):
        raise NotWritableError("disk gone")

    monkeypatch.setattr(TeacherCache, "_write_shard", refuse)
    for e, i, x in steps(epochs=1, batch=N):
        cache.add_async(e, i, x)
    with pytest.raises(NotWritableError, match="disk gone"):
        cache.flush()
    with pytest.raises(ValueError, match="width"):
        cache.add_async([0], [0], torch.zeros(1, WIDTH + 1))


# --- under DDP (gloo): the cache equals the one the synchronous writer wrote, byte for byte -----

SYNC_HOOK = r"""import os
if os.environ.get("PROMPTKD_TEST_SYNC_CACHE_WRITER"):
    from promptkd.teacher_cache import TeacherCache
    TeacherCache.add_async = TeacherCache.add  # the writer as it was: in the step
    open(os.environ["PROMPTKD_TEST_SYNC_CACHE_WRITER"], "a").write("hooked\n")
"""


@pytest.mark.slow
def test_ddp_cache_is_the_synchronous_writers(data_root, clip_files, teacher_run, tmp_path):
    from tests.ddp_kit import ROOT, torchrun
    from tests.trainer_kit import student_args

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SYNC_HOOK)
    opts = ["TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp16", "TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE", "5",
            "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True", "TEST.NO_TEST", "True"]
    caches = {}
    marker = tmp_path / "hooked"
    for name, extra in (("async", {}), ("sync", {"PROMPTKD_TEST_SYNC_CACHE_WRITER": str(marker),
                                                 "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"})):
        caches[name] = tmp_path / f"{name}_cache"
        proc = torchrun(str(tmp_path / f"{name}_probe"),
                        student_args(data_root, clip_files, str(tmp_path / f"{name}_out"), teacher_run["export"],
                                     "TRAINER.PROMPTKD.TEACHER_CACHE", str(caches[name]), *opts, epochs=2),
                        extra_env=extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.exists(), proc.stderr[:3000]
    assert marker.read_text().count("hooked") >= 2  # both ranks ran the synchronous writer
    a, b = files(caches["sync"]), files(caches["async"])
    assert a and a == b, sorted(set(a) ^ set(b))
