"""Reproducible views and the teacher-embedding cache (PromptKD stage 2 without the teacher).

Fake DTD, tiny CLIPs: views do not depend on the worker count; the sampler splits an epoch
among ranks; a student trained from an fp32 cache ends with the online run's weights, from an
fp16 cache within a derived bound; mismatched caches are refused; a missing view is an error;
a SIGKILLed writer resumes to the same bytes; the cached run never builds the teacher.
"""
import json
import os
import signal

import numpy as np
import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed")

from promptkd.trainers import train  # noqa: E402,F401  (conftest.py registers the trainers and datasets)
from promptkd.errors import ConfigError, DataError  # noqa: E402
from promptkd.teacher_cache import MANIFEST, TeacherCache  # noqa: E402
from promptkd.views import ViewSampler, stream_seed  # noqa: E402
from tests.cli import promptkd  # noqa: E402
from tests.cache_kit import FP32_ACROSS_BATCH_SIZES, FP32_STUDENT_SHARE, relative_distance  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.trainer_kit import learnable, make_trainer, student_args, teacher_args  # noqa: E402

pytestmark = pytest.mark.exact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory, clip_files):
    root = str(tmp_path_factory.mktemp("data"))
    make_dtd(root, n_classes=5, per_class=10)
    out = str(tmp_path_factory.mktemp("teacher"))
    make_trainer(teacher_args(root, clip_files, out, epochs=1)).train()
    return {"root": root, "export": os.path.join(out, "export"), "clip": clip_files}


def args(setup, out, *extra, epochs=EPOCHS, root=None):
    return student_args(root or setup["root"], setup["clip"], out, setup["export"], "TEST.NO_TEST", "True",
                        *extra, epochs=epochs)


def write_cache(setup, cache, *extra, epochs=EPOCHS, root=None):
    from promptkd import cli
    argv = args(setup, str(cache) + "-writer-out", "TRAINER.PROMPTKD.TEACHER_CACHE", str(cache),
                *extra, epochs=epochs, root=root)
    assert cli.main(["cache", *argv]) == 0


# --- views --------------------------------------------------------------------------------

def epoch_views(trainer, epoch):
    trainer.view_sampler.set_epoch(epoch)
    keys, images = [], []
    for batch in trainer.train_loader_x:
        keys += list(zip(batch["epoch"].tolist(), batch["index"].tolist()))
        images.append(batch["img"])
    return keys, torch.cat(images)


def test_views_are_the_same_for_0_and_2_workers(setup, tmp_path):
    zero = make_trainer(args(setup, str(tmp_path / "a")))
    two = make_trainer(args(setup, str(tmp_path / "b"), "DATALOADER.NUM_WORKERS", "2"))
    for epoch in (0, 1):
        k0, v0 = epoch_views(zero, epoch)
        k2, v2 = epoch_views(two, epoch)
        assert k0 == k2 and torch.equal(v0, v2)
    first, second = epoch_views(zero, 0), epoch_views(zero, 1)
    assert [i for _, i in first[0]] != [i for _, i in second[0]]  # a new order every epoch ...
    ds = zero.view_dataset
    epoch, index = first[0][3]
    again = ds[(epoch, index)]["img"]
    assert torch.equal(again, first[1][3])  # ... and the view is a pure function of (seed, epoch, index)
    assert not torch.equal(again, ds[(1, index)]["img"])  # another epoch, another view
    # It is Dassl's own train transform (random_resized_crop, random_flip, normalize), seeded per view.
    from dassl.utils import read_image
    torch.manual_seed(stream_seed(ds.view_seed, epoch, index))
    assert torch.equal(ds.transform(read_image(ds.data_source[index].impath)), again)


def test_sampler_is_a_function_of_seed_and_epoch_and_splits_ranks():
    ranks = [ViewSampler(23, seed=5, num_replicas=3, rank=r) for r in range(3)]
    for s in ranks:
        s.set_epoch(4)
    keys = [list(s) for s in ranks]
    assert {len(k) for k in keys} == {7}  # drop_last: every rank runs the same number of keys
    flat = [i for k in keys for _, i in k]
    assert len(set(flat)) == 21 and all(e == 4 for k in keys for e, _ in k)
    single = ViewSampler(23, seed=5)
    single.set_epoch(4)
    assert [i for _, i in single] == ranks[0].order()
    assert ranks[0].order(4) != ranks[0].order(5)
    padded = ViewSampler(23, seed=5, num_replicas=3, rank=2, drop_last=False)
    assert len(list(padded)) == 8


# --- the cache against the online teacher ------------------------------------------------

@pytest.fixture(scope="module")
def online(setup, tmp_path_factory):
    """An online fp32 run that also fills an fp32 cache as it goes (TEACHER_CACHE_WRITE)."""
    base = tmp_path_factory.mktemp("online")
    cache = str(base / "cache-online")
    trainer = make_trainer(args(setup, str(base / "run"), "TRAINER.PROMPTKD.TEACHER_CACHE", cache,
                                "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True",
                                "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32"))
    trainer.train()
    return {"weights": learnable(trainer), "cache": cache, "trainer": trainer}


def run_from_cache(setup, out, cache, monkeypatch, *extra):
    from promptkd.class_vectors import ImageSide

    def refuse(*a, **k):
        raise AssertionError("the teacher's weights were loaded in a cached run")
    with monkeypatch.context() as m:
        m.setattr(ImageSide, "load_visual", refuse)
        trainer = make_trainer(args(setup, out, "TRAINER.PROMPTKD.TEACHER_CACHE", str(cache), *extra))
    assert trainer.teacher is None
    trainer.train()
    return learnable(trainer)


def test_fp32_cache_gives_the_online_student(setup, online, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache32"
    write_cache(setup, cache, "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32",
                "TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE", "7", "TRAINER.PROMPTKD.TEACHER_CACHE_BATCH_SIZE", "5")
    # The writer's cache holds the embeddings the online run computed (at another batch size).
    n, ep = online["trainer"].cache.n_images, EPOCHS
    a, b = TeacherCache(str(cache), json.load(open(cache / MANIFEST))), online["trainer"].cache
    idx = torch.arange(n).repeat(ep)
    eps = torch.arange(ep).repeat_interleave(n)
    assert (a.lookup(eps, idx) - b.lookup(eps, idx)).abs().max() <= FP32_ACROSS_BATCH_SIZES
    with caplog.at_level("INFO", logger="promptkd"):
        weights = run_from_cache(setup, str(tmp_path / "s"), cache, monkeypatch)
    assert "the teacher image tower is not built (no teacher weights are loaded)" in caplog.text
    ref = online["weights"]
    init = learnable(make_trainer(args(setup, str(tmp_path / "init"))))
    assert relative_distance(weights, ref, init) <= FP32_STUDENT_SHARE
    # A student reading the cache the online run filled reads exactly the embeddings the online
    # teacher gave, through the same student computation at the same shapes: the online
    # student, whatever the CPU.
    weights = run_from_cache(setup, str(tmp_path / "s2"), online["cache"], monkeypatch)
    assert all(torch.equal(weights[k], ref[k]) for k in ref)


def test_fp16_cache_stays_within_the_rounding_bound(setup, online, tmp_path, monkeypatch):
    cache = tmp_path / "cache16"
    write_cache(setup, cache)  # fp16 is the default
    c16, c32 = TeacherCache(str(cache), json.load(open(cache / MANIFEST))), online["trainer"].cache
    assert c16.dtype == "fp16" and os.path.getsize(cache / "e000-00000000.npy") < os.path.getsize(
        os.path.join(c32.directory, "e000-00000000.npy"))
    n = c16.n_images
    idx, eps = torch.arange(n).repeat(EPOCHS), torch.arange(EPOCHS).repeat_interleave(n)
    e16, e32 = c16.lookup(eps, idx), c32.lookup(eps, idx)
    # Rounding a unit vector's components (|e_i| <= 1) to fp16 moves each by at most 2^-11 |e_i|
    # (half an ulp, 11-bit significand), so |Δlogit| = exp(s)|Δe·v| <= exp(s) 2^-11 Σ|e_i||v_i|
    # <= exp(s) 2^-11 (Cauchy-Schwarz, unit v): the teacher's distribution moves by that at most
    # (plus D 2^-24 for fp16 subnormals and the fp32 rounding of batches of another size).
    trainer = online["trainer"]
    scale, vectors = trainer.teacher_logit_scale.exp(), trainer.class_vectors
    bound = scale * (2.0**-11 + c16.width * 2.0**-24)
    assert ((e16 - e32) @ vectors.t()).abs().max() * scale <= bound
    assert (e16 - e32).abs().max() > 0  # it really is rounded
    # The student then moves by a small fraction of what training moved it.
    weights = run_from_cache(setup, str(tmp_path / "s"), cache, monkeypatch)
    init = learnable(make_trainer(args(setup, str(tmp_path / "init"))))
    # over all learnable weights (a tensor training barely moves is noise)
    assert 0 < relative_distance(weights, online["weights"], init) <= 0.01


# --- refusals -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_cache(setup, tmp_path_factory):
    cache = tmp_path_factory.mktemp("small") / "cache"
    write_cache(setup, cache, epochs=1)
    return cache


def other_teacher_export(setup, tmp_path):
    """The same weights with other visual prompts (another teacher run)."""
    import shutil
    from promptkd.class_vectors import IMAGE_SIDE_FILE, ImageSide
    folder = tmp_path / "other_teacher"
    shutil.copytree(setup["export"], folder)
    side = ImageSide.load(str(folder / IMAGE_SIDE_FILE))
    side.prompts = [p + 0.01 for p in side.prompts]
    side.save(str(folder / IMAGE_SIDE_FILE))
    return str(folder)


@pytest.mark.parametrize("change, message", [
    ("teacher", "teacher export"),
    ("seed", "view seed .*cache 1, this run 2"),
    ("view_seed", "view seed .*cache 1, this run 7"),
    ("epochs", "epochs: cache 1, this run 2"),
    ("dataset", "number of train images.*train image list"),
    ("transform", "train transform"),
])
def test_a_mismatched_cache_is_refused(setup, small_cache, tmp_path, change, message):
    extra, epochs, root = [], 1, None
    export = setup["export"]
    if change == "teacher":
        export = other_teacher_export(setup, tmp_path)
    elif change == "seed":
        extra = ["--seed", "2"]
    elif change == "view_seed":
        extra = ["TRAINER.PROMPTKD.VIEW_SEED", "7"]
    elif change == "epochs":
        epochs = 2
    elif change == "dataset":
        root = str(tmp_path / "other_data")
        make_dtd(root, n_classes=5, per_class=12)
    elif change == "transform":
        extra = ["INPUT.RRCROP_SCALE", "(0.5, 1.0)"]
    a = student_args(root or setup["root"], setup["clip"], str(tmp_path / "o"), export,
                     "TRAINER.PROMPTKD.TEACHER_CACHE", str(small_cache), epochs=epochs)
    if extra[:1] == ["--seed"]:
        a[a.index("--seed") + 1] = extra[1]
    else:
        a += extra
    with pytest.raises(ConfigError, match="does not match this run: .*" + message):
        make_trainer(a)


def test_fewer_epochs_than_cached_are_read_and_a_missing_view_is_an_error(setup, small_cache, tmp_path):
    trainer = make_trainer(args(setup, str(tmp_path / "o"), "TRAINER.PROMPTKD.TEACHER_CACHE", str(small_cache), epochs=1))
    assert trainer.cache.lookup([0], [0]).shape == (1, trainer.cache.width)
    with pytest.raises(DataError, match="no view for epoch 2"):
        trainer.cache.lookup([1], [0])
    empty = TeacherCache.create(str(tmp_path / "partial"), trainer.cache.manifest["identity"],
                                trainer.cache.n_images, 1, trainer.cache.width, shard_size=4)
    empty.add([0] * 4, [0, 1, 2, 3], torch.nn.functional.normalize(torch.randn(4, empty.width), dim=-1))
    assert empty.lookup([0], [2]).shape == (1, empty.width)
    with pytest.raises(DataError, match=r"no shard e000-00000004.npy .*1 of \d+ shards are written.*promptkd cache"):
        empty.lookup([0, 0], [0, 5])
    with pytest.raises(DataError, match=r"is incomplete: \d+ of \d+ shards for 1 epochs are missing \(the first: e000-00000004"):
        TeacherCache.open(empty.directory, empty.manifest["identity"], 1)


def test_cache_write_refuses_a_full_disk(setup, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(DataError, match="needs .* more in .* but the disk has only 100 B free"):
        write_cache(setup, tmp_path / "cache")


# --- a killed writer ----------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_writer_resumes_to_the_same_cache(setup, tmp_path):
    root = str(tmp_path / "bigger")
    make_dtd(root, n_classes=5, per_class=24)

    def write(cache, **kw):
        return promptkd("cache", [
            *args(setup, str(tmp_path / "out"), "TRAINER.PROMPTKD.TEACHER_CACHE", str(cache),
                           "TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE", "4",
                           "TRAINER.PROMPTKD.TEACHER_CACHE_BATCH_SIZE", "3", epochs=2, root=root)], **kw)

    def three_shards_written(_):
        try:
            return len(json.load(open(cut / MANIFEST))["shards"]) >= 3
        except (OSError, ValueError):
            return False
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = write(whole)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = write(cut, until=three_shards_written)  # SIGKILL as soon as 3 shards are on disk
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    manifest = json.load(open(cut / MANIFEST))
    total = len(json.load(open(whole / MANIFEST))["shards"])
    assert 3 <= len(manifest["shards"]) < total
    again = write(cut)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{total - len(manifest['shards'])} of {total} shards to write" in again.stdout  # it resumed ...
    files = sorted(f for f in os.listdir(whole) if f.endswith(".npy"))
    assert files == sorted(f for f in os.listdir(cut) if f.endswith(".npy")) and len(files) == total
    assert not [f for f in os.listdir(cut) if f.startswith(".tmp-")]
    for f in files:  # ... to the same bytes
        assert np.array_equal(np.load(whole / f), np.load(cut / f)), f
    assert json.load(open(whole / MANIFEST))["shards"] == json.load(open(cut / MANIFEST))["shards"]


def test_cli_reports_errors_with_exit_2(setup, tmp_path):
    proc = promptkd("cache", [*args(setup, str(tmp_path / "o"))])
    assert proc.returncode == 2 and "error: Set TRAINER.PROMPTKD.TEACHER_CACHE" in proc.stderr


def test_benchmark_smoke(tmp_path, capsys):
    from benchmarks import teacher_cache as bench

    report = bench.main(["--tiny", "--repeats", "1", "--warmup", "0", "--write-batch", "4", "--cache-images", "64",
                         "--json", str(tmp_path / "b.json")])
    assert set(report["seconds"]) == set(bench.SETTINGS) and all(v > 0 for v in report["seconds"].values())
    assert report["flops"]["step/online"] > report["flops"]["step/cached"] > 0
    assert report["write_views_per_s"] > 0 and "speed-up" in capsys.readouterr().out
