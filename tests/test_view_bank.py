"""The view bank (TRAINER.PROMPTKD.VIEWS_PER_IMAGE = K): K reusable views per image.

Fake DTD, tiny CLIPs: the seeded rule draws every view once per cycle of K epochs; an online
run filling the cache runs the teacher once per view (counted on the teacher's encoder: a
20-epoch run with K = 4 makes >= 5x fewer teacher image forwards than K = 0); the writer's
cache and the online run's are the same, and so are the students trained from them; a cache
with another K is refused.
"""
import json
import os

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed")

from promptkd.trainers import train  # noqa: E402,F401  (conftest.py registers the trainers and datasets)
from promptkd.errors import ConfigError  # noqa: E402
from promptkd.student import TeacherImageScorer  # noqa: E402
from promptkd.teacher_cache import MANIFEST, TeacherCache  # noqa: E402
from promptkd.views import view_number  # noqa: E402
from tests.cache_kit import (FP32_ACROSS_BATCH_SIZES, FP32_STUDENT_SHARE, args, relative_distance,  # noqa: E402,F401
                             setup)  # (setup: the module fixture of the teacher every test here distils from)
from tests.trainer_kit import learnable, make_trainer  # noqa: E402

pytestmark = pytest.mark.exact


def bank(k, cache=None, write=True):
    extra = ["TRAINER.PROMPTKD.VIEWS_PER_IMAGE", str(k)]
    if cache is not None:
        extra += ["TRAINER.PROMPTKD.TEACHER_CACHE", str(cache), "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32"]
        if write:
            extra += ["TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True"]
    return extra


def run_from_cache(setup, out, cache, monkeypatch, k):
    from promptkd.class_vectors import ImageSide

    def refuse(*a, **kw):
        raise AssertionError("the teacher's weights were loaded in a cached run")
    with monkeypatch.context() as m:
        m.setattr(ImageSide, "load_visual", refuse)
        trainer = make_trainer(args(setup, out, *bank(k, cache, write=False)))
    assert trainer.teacher is None
    trainer.train()
    return learnable(trainer)


@pytest.fixture
def count_teacher(monkeypatch):
    """Images through the teacher's image encoder (every teacher forward goes through embed)."""
    seen = {"images": 0, "calls": 0}
    embed = TeacherImageScorer.embed

    def counted(self, images):
        seen["images"] += len(images)
        seen["calls"] += 1
        return embed(self, images)
    monkeypatch.setattr(TeacherImageScorer, "embed", counted)
    return seen


def test_the_rule_draws_each_view_once_per_cycle():
    for k in (1, 2, 4, 8):
        for index in (0, 7):
            views = [view_number(3, e, index, k) for e in range(3 * k)]
            for c in range(3):  # every cycle of k epochs draws the k views, each once
                assert sorted(views[c * k:(c + 1) * k]) == list(range(k))
            assert views == [view_number(3, e, index, k) for e in range(3 * k)]  # a pure function
    assert [view_number(3, e, 5, 0) for e in range(4)] == [0, 1, 2, 3]  # K = 0: the epoch's own view
    orders = {tuple(view_number(3, e, i, 4) for e in range(4)) for i in range(30)}
    assert len(orders) > 5  # images draw their views in different orders


def test_views_are_a_function_of_seed_image_and_view_number(setup, tmp_path):
    trainer = make_trainer(args(setup, str(tmp_path / "a"), *bank(2)))
    ds = trainer.view_dataset
    for index in (0, 3):
        for epoch in range(4):
            v = view_number(ds.view_seed, epoch, index, 2)
            item = ds[(epoch, index)]
            assert item["view"] == v and torch.equal(item["img"], ds[(-1, index, v)]["img"])
        assert not torch.equal(ds[(-1, index, 0)]["img"], ds[(-1, index, 1)]["img"])
    fresh = make_trainer(args(setup, str(tmp_path / "b"))).view_dataset  # K = 0: view v = epoch v's view
    assert torch.equal(fresh[(1, 3)]["img"], ds[(-1, 3, 1)]["img"])


def test_k4_makes_5x_fewer_teacher_forwards_in_20_epochs(setup, tmp_path, count_teacher):
    online = make_trainer(args(setup, str(tmp_path / "k0"), epochs=20))
    n = len(online.view_dataset)
    assert n % 4 == 0  # the batch: no view is dropped, so K = 0 runs exactly 20 n teacher forwards
    online.train()
    k0 = count_teacher["images"]
    assert k0 == 20 * n
    count_teacher["images"] = 0
    cache = tmp_path / "cache-k4"
    trainer = make_trainer(args(setup, str(tmp_path / "k4"), *bank(4, cache), epochs=20))
    trainer.train()
    k4 = count_teacher["images"]
    assert k4 == 4 * n and k0 >= 5 * k4  # each of the 4 n views once, in the first 4 epochs
    assert TeacherCache.open(str(cache), trainer.cache.manifest["identity"], 4).is_complete()
    count_teacher["images"] = 0  # a second run on the full cache (resumed): no teacher forward
    make_trainer(args(setup, str(tmp_path / "k4b"), *bank(4, cache), epochs=20)).train()
    assert count_teacher["images"] == 0


@pytest.fixture(scope="module")
def online_k2(setup, tmp_path_factory):
    base = tmp_path_factory.mktemp("online-k2")
    cache = base / "cache"
    trainer = make_trainer(args(setup, str(base / "run"), *bank(2, cache)))
    trainer.train()
    return {"weights": learnable(trainer), "cache": cache, "trainer": trainer}


def test_writer_cache_equals_the_online_one_and_gives_its_student(setup, online_k2, tmp_path, monkeypatch):
    from promptkd import cli
    cache = tmp_path / "writer"
    argv = args(setup, str(tmp_path / "w-out"), *bank(2, cache, write=False),
                "TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE", "7", "TRAINER.PROMPTKD.TEACHER_CACHE_BATCH_SIZE", "5")
    assert cli.main(["cache", *argv]) == 0
    manifest = json.load(open(cache / MANIFEST))
    assert manifest["views_per_image"] == 2 and manifest["epochs"] == 2  # K views, whatever the epochs
    assert all(name.startswith("v") for name in manifest["shards"])
    a, b = TeacherCache(str(cache), manifest), online_k2["trainer"].cache
    n = a.n_images
    idx, views = torch.arange(n).repeat(2), torch.arange(2).repeat_interleave(n)
    assert (a.lookup(views, idx) - b.lookup(views, idx)).abs().max() <= FP32_ACROSS_BATCH_SIZES
    weights = run_from_cache(setup, str(tmp_path / "s"), cache, monkeypatch, 2)
    init = learnable(make_trainer(args(setup, str(tmp_path / "init"))))
    assert relative_distance(weights, online_k2["weights"], init) <= FP32_STUDENT_SHARE
    # The online run's own cache holds what its teacher gave: the online student exactly.
    weights = run_from_cache(setup, str(tmp_path / "s2"), online_k2["cache"], monkeypatch, 2)
    assert all(torch.equal(weights[k], online_k2["weights"][k]) for k in weights)


@pytest.mark.parametrize("k", [0, 4])
def test_a_cache_with_another_k_is_refused(setup, online_k2, tmp_path, k):
    with pytest.raises(ConfigError, match=r"views per image \(TRAINER.PROMPTKD.VIEWS_PER_IMAGE.*cache 2, this run "
                                          + str(k)):
        make_trainer(args(setup, str(tmp_path / "o"), *bank(k, online_k2["cache"], write=False)))
    with pytest.raises(ConfigError, match="other settings: .*views per image"):  # nor resumed by a writer
        make_trainer(args(setup, str(tmp_path / "o"), *bank(k, online_k2["cache"])))


def test_a_resumed_run_gives_the_uninterrupted_student_and_cache(setup, online_k2, tmp_path):
    """Killed after epoch 1 (the views it embedded not, or only partly, on disk) and re-run: the views are
    the same (a pure function of the epoch), the ones lost with the process are embedded again
    when drawn, and the cache and the student end as the uninterrupted run's (fp32 rounding of
    other batch shapes aside)."""

    def run_args(name):
        return args(setup, str(tmp_path / name), *bank(2, tmp_path / (name + "-cache")),
                    "TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE", "7")
    cut = make_trainer(run_args("cut"))
    after_epoch = cut.after_epoch

    def crash():
        after_epoch()
        if cut.epoch == 0:
            raise KeyboardInterrupt("killed after epoch 1")
    cut.after_epoch = crash
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    partial = json.load(open(tmp_path / "cut-cache" / MANIFEST))["shards"]
    assert len(partial) < 6  # of 2 views x 3 shards of 7 images: the rest was in memory, lost
    resumed = make_trainer(run_args("cut"))
    resumed.train()
    assert resumed.cache.is_complete()
    n = resumed.cache.n_images
    idx, views = torch.arange(n).repeat(2), torch.arange(2).repeat_interleave(n)
    assert (resumed.cache.lookup(views, idx) - online_k2["trainer"].cache.lookup(views, idx)).abs().max() \
        <= FP32_ACROSS_BATCH_SIZES
    init = learnable(make_trainer(args(setup, str(tmp_path / "init"))))
    assert relative_distance(learnable(resumed), online_k2["weights"], init) <= FP32_STUDENT_SHARE


def test_benchmark_reports_the_total_teacher_cost_per_k(tmp_path, capsys):
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("teacher_cache_benchmark",
                                                  os.path.join(root, "benchmarks", "teacher_cache.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--tiny", "--cost-only", "--repeats", "1", "--warmup", "0", "--write-batch", "4",
                         "--cache-images", "16", "--sample-images", "50", "--images", "1000"])
    rows = {r["K"]: r for r in report["total_cost"]["banks"]}
    assert rows[0]["teacher_forwards"] == 20 * 1000 and rows[4]["teacher_forwards"] == 4 * 1000
    assert rows[4]["reduction"] == 5.0 and rows[8]["teacher_seconds"] > 0
    sizes = report["total_cost"]["bytes_per_view"]
    assert sizes["fp32"] > sizes["fp16"] > sizes["int8"] > sizes["topk10"] > 0
    assert "total teacher cost of a 20-epoch distillation" in capsys.readouterr().out
