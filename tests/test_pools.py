"""The unlabelled pool of stage 2 (TRAINER.PROMPTKD.POOL): sources, budgets, leakage check,
WebDataset shards (one process, 2 gloo processes), recorded in run.json.

Fake DTD (5 classes x 10 images), tiny CLIPs, 1-2 epochs; the teacher is conftest.py's
session teacher (teacher_run). Shards are written here with webdataset's TarWriter.
"""
import json
import os
import shutil
from types import SimpleNamespace

import pytest

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")
wds = pytest.importorskip("webdataset")

from dassl.data.datasets import Datum  # noqa: E402

from promptkd.errors import ConfigError, DataError  # noqa: E402
from promptkd.pools import HashCache, budget_keep, find_overlap, parse_pool, per_class_keep  # noqa: E402
from promptkd.trainers.config import extend_cfg  # noqa: E402
from promptkd.trainers.pool_loader import ShardViewDataset, build_pool  # noqa: E402
from tests.cli import train_py  # noqa: E402
from tests.fake_data import _image  # noqa: E402
from tests.trainer_kit import make_trainer, student_args, whole_and_resumed  # noqa: E402

# data_root and teacher_run: session fixtures of tests/conftest.py

DTD = "DescribableTextures"


def write_folder(folder, n, seed0=5000):
    paths = [os.path.join(folder, f"sub{i % 2}", f"extra_{i:03d}.png") for i in range(n)]
    for i, p in enumerate(paths):
        _image(p, seed=seed0 + i)
    return paths


def write_shards(folder, n_shards, per_shard, seed0=7000):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s in range(n_shards):
        path = os.path.join(folder, f"pool-{s:03d}.tar")
        with wds.TarWriter(path) as sink:
            for j in range(per_shard):
                img = os.path.join(folder, "tmp.png")
                _image(img, seed=seed0 + 100 * s + j)
                sink.write({"__key__": f"s{s}_{j:03d}", "png": open(img, "rb").read(), "txt": "no label"})
        paths.append(path)
    os.remove(os.path.join(folder, "tmp.png"))
    return paths


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    folder = str(root / "folder")
    write_folder(folder, 12)
    shards = write_shards(str(root / "shards"), 4, 5)
    return {"folder": folder, "shards": shards, "pattern": str(root / "shards" / "pool-{000..003}.tar"),
            "hashes": str(root / "hashes.json")}


# --- pure parts -----------------------------------------------------------------------------

def test_pool_sources_are_parsed_and_bad_ones_refused(tmp_path):
    assert [s.name for s in parse_pool(["train"])] == ["train"]
    both = parse_pool(["train_base", f"folder:{tmp_path}"])
    assert [s.kind for s in both] == ["train_base", "folder"] and both[1].arg == str(tmp_path)
    for bad in (["val"], ["folder:"], ["train", "train"], ["train", "train_base"], []):
        with pytest.raises(ConfigError, match="POOL"):
            parse_pool(bad)


def test_budget_is_the_same_images_whatever_the_order():
    keys = [f"img{i}" for i in range(50)]
    chosen = {keys[i] for i in budget_keep(keys, 10, seed=3)}
    assert len(chosen) == 10
    assert {keys[::-1][i] for i in budget_keep(keys[::-1], 10, seed=3)} == chosen
    assert {keys[i] for i in budget_keep(keys, 10, seed=4)} != chosen
    labels = [i % 5 for i in range(50)]
    kept = per_class_keep(keys, labels, 2, seed=0)
    assert sorted(labels[i] for i in kept) == sorted(list(range(5)) * 2)


def test_hash_cache_reads_each_file_once(tmp_path):
    a, b = write_folder(str(tmp_path / "img"), 2)
    shutil.copy(a, tmp_path / "copy.png")
    cache = HashCache(str(tmp_path / "h.json"))
    digests = [cache.file(p) for p in (a, b, str(tmp_path / "copy.png"))]
    assert cache.hashed == 3 and digests[0] == digests[2] != digests[1]
    cache.save()
    again = HashCache(str(tmp_path / "h.json"))
    assert [again.file(p) for p in (a, b, str(tmp_path / "copy.png"))] == digests and again.hashed == 0
    os.utime(b, ns=(1, 1))  # a changed mtime: hashed again
    again.file(b)
    assert again.hashed == 1
    assert find_overlap({"x": digests[0]}, {"test": {a: digests[0]}, "val": {b: digests[1]}}) == {"test": [("x", a)]}


# --- build_pool on a stand-in trainer (no model) ---------------------------------------------

def fake_trainer(data_root, hashes, **keys):
    from yacs.config import CfgNode as CN
    from dassl.config import get_cfg_default
    cfg = extend_cfg(get_cfg_default())
    cfg.DATASET.NAME, cfg.DATASET.SUBSAMPLE_CLASSES = DTD, "all"
    cfg.TRAINER.PROMPTKD.HASH_CACHE = hashes
    for k, v in keys.items():
        cfg.TRAINER.PROMPTKD[k] = v
    images = os.path.join(data_root, "dtd", "images")
    classes = sorted(os.listdir(images))
    datums = [Datum(impath=os.path.join(images, c, f), label=y, classname=c)
              for y, c in enumerate(classes) for f in sorted(os.listdir(os.path.join(images, c)))]
    train, test = [d for i, d in enumerate(datums) if i % 10 < 7], [d for i, d in enumerate(datums) if i % 10 >= 8]
    dataset = SimpleNamespace(train_x=train, val=[], test=test)
    loader = SimpleNamespace(dataset=SimpleNamespace(data_source=test))
    assert isinstance(cfg, CN)
    return SimpleNamespace(cfg=cfg, dm=SimpleNamespace(dataset=dataset), num_base=3, eval_loader=loader,
                           test_loader=loader)


def test_default_pool_is_the_train_split_and_is_not_hashed(data_root, extra):
    trainer = fake_trainer(data_root, extra["hashes"] + ".none")
    pool = build_pool(trainer)
    assert pool.items is trainer.dm.dataset.train_x  # the very list: the published run, unchanged
    assert pool.record()["leakage_check"]["checked"] is False and not os.path.exists(extra["hashes"] + ".none")


def test_budgets_keep_the_same_images_every_run(data_root, extra):
    pools = [build_pool(fake_trainer(data_root, extra["hashes"], POOL=["train", f"folder:{extra['folder']}"],
                                     POOL_BUDGET=9)) for _ in range(2)]
    assert [d.impath for d in pools[0].items] == [d.impath for d in pools[1].items] and len(pools[0]) == 9
    record = pools[0].record()
    assert record["budget"] == {"images": 9, "requested": 9, "seed": 0} and record["labels_used_for_selection"] is None
    assert record["images_by_source"] == {"train": 35, f"folder:{extra['folder']}": 12}
    base = build_pool(fake_trainer(data_root, extra["hashes"], POOL=["train_base"], POOL_BUDGET_PER_CLASS=2))
    assert sorted(d.label for d in base.items) == [0, 0, 1, 1, 2, 2]
    assert "per-class" in base.record()["labels_used_for_selection"]
    with pytest.raises(ConfigError, match="needs labels"):
        build_pool(fake_trainer(data_root, extra["hashes"], POOL=[f"folder:{extra['folder']}"], POOL_BUDGET_PER_CLASS=2))


def test_a_pool_holding_a_test_image_is_refused_naming_it(data_root, extra, tmp_path):
    folder = tmp_path / "leaky"
    shutil.copytree(extra["folder"], folder)
    test_image = fake_trainer(data_root, "").dm.dataset.test[3].impath
    shutil.copy(test_image, folder / "innocent.jpg")
    keys = dict(POOL=[f"folder:{folder}"])
    with pytest.raises(DataError, match="1 image\\(s\\) of the test split") as err:
        build_pool(fake_trainer(data_root, str(tmp_path / "h.json"), **keys))
    assert str(folder / "innocent.jpg") in str(err.value) and test_image in str(err.value)
    cache = HashCache(str(tmp_path / "h.json"))
    assert len(cache.files) == 13 + 10  # the pool and the test images, cached
    pool = build_pool(fake_trainer(data_root, str(tmp_path / "h.json"), ALLOW_TEST_OVERLAP=True, **keys))
    leak = pool.record()["leakage_check"]
    assert leak["overlap"] == {"test": 1} and leak["allow_test_overlap"] is True and leak["files_hashed"] == 0


def test_shards_are_listed_budgeted_and_checked(data_root, extra):
    pool = build_pool(fake_trainer(data_root, extra["hashes"], POOL=[f"wds:{extra['pattern']}"], POOL_BUDGET=13))
    assert pool.streamed and len(pool) == 13 and pool.record()["leakage_check"]["overlap"] == {}
    assert pool.record()["images_by_source"] == {f"wds:{extra['pattern']}": 20}


def test_shards_split_over_ranks_and_workers_without_duplicates(extra):
    from promptkd.trainers.pool_loader import ShardEpochLoader
    listing = {s: [f"s{i}_{j:03d}" for j in range(5)] for i, s in enumerate(extra["shards"])}
    seen = {}
    for epoch in (0, 1):
        names = []
        for rank in (0, 1):
            ds = ShardViewDataset(listing, transform=_to_tensor(), view_seed=1, rank=rank, world=2, shuffle=3)
            steps = ds.steps(batch_size=2, num_workers=2, epochs=2)
            loader = ShardEpochLoader(ds, 2, 2, steps, False)
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader) == steps == 4  # 2 workers x (5 // 2)
            names += [n for b in batches for n in b["impath"]]
            assert all((b["epoch"] == epoch).all() for b in batches)
        assert len(names) == len(set(names)) == 16  # each worker drops its tail, nothing read twice
        seen[epoch] = names
    assert seen[0] != seen[1]  # a new shard order and shuffle each epoch


def test_shards_stream_with_listed_sources_each_image_once_an_epoch(data_root, extra, tmp_path):
    from promptkd.trainers.pool_loader import LISTED_UNIT, ShardEpochLoader
    sources = ["train", f"folder:{extra['folder']}", f"wds:{extra['pattern']}"]
    pool = build_pool(fake_trainer(data_root, extra["hashes"], POOL=sources))
    train = fake_trainer(data_root, "").dm.dataset.train_x
    assert pool.streamed and len(pool) == len(train) + 12 + 20
    assert pool.record()["images_by_source"] == dict(zip(sources, [len(train), 12, 20]))
    assert pool.record()["streamed_listed_images"] == len(train) + 12 and pool.record()["streamed_shards"] == 4
    units = pool.units()
    listed = [u for u in units if u.startswith(LISTED_UNIT)]
    assert len(listed) == -(-(len(train) + 12) // 5)  # cut into units of a shard's size (5)
    everything = set(pool.names())
    for epoch in (0, 1):
        names = []
        for rank in (0, 1):
            ds = ShardViewDataset(units, transform=_to_tensor(), view_seed=1, rank=rank, world=2, shuffle=3)
            loader = ShardEpochLoader(ds, 2, 2, ds.steps(batch_size=2, num_workers=2, epochs=2), False)
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            assert batches and all(b["img"].shape[1:] == (3, 8, 8) and (b["label"] == -1).all() for b in batches)
            names += [n for b in batches for n in b["impath"]]
        assert len(names) == len(set(names)) and set(names) <= everything  # nothing twice, no label read
        assert any("::" in n for n in names) and any(n in {d.impath for d in train} for n in names)
    # a budget over the mixed pool: the same images on every build, drawn from both kinds
    again = [build_pool(fake_trainer(data_root, extra["hashes"], POOL=sources, POOL_BUDGET=30)) for _ in range(2)]
    assert sorted(again[0].names()) == sorted(again[1].names()) and len(again[0]) == 30
    assert again[0].items and any(again[0].listing.values())
    # and a test image in the listed part is refused, naming it
    leaky = tmp_path / "leaky"
    shutil.copytree(extra["folder"], leaky)
    test_image = fake_trainer(data_root, "").dm.dataset.test[0].impath
    shutil.copy(test_image, leaky / "innocent.jpg")
    with pytest.raises(DataError, match="1 image\\(s\\) of the test split") as err:
        build_pool(fake_trainer(data_root, extra["hashes"], POOL=[f"folder:{leaky}", f"wds:{extra['pattern']}"]))
    assert str(leaky / "innocent.jpg") in str(err.value)


def _to_tensor():
    from torchvision import transforms as T
    return T.Compose([T.Resize((8, 8)), T.ToTensor()])


# --- end to end: PromptKD on each pool kind ----------------------------------------------------

def pool_args(data_root, clip_files, teacher_run, out, extra, *keys, epochs=1):
    return student_args(data_root, clip_files, out, teacher_run["export"], "TRAINER.PROMPTKD.HASH_CACHE",
                        extra["hashes"], *keys, epochs=epochs)


@pytest.mark.parametrize("pool", ["train_base", "folder", "train+folder"])
def test_each_listed_pool_distils(pool, data_root, clip_files, teacher_run, extra, tmp_path):
    sources = {"train_base": ["train_base"], "folder": [f"folder:{extra['folder']}"],
               "train+folder": ["train", f"folder:{extra['folder']}"]}[pool]
    trainer = make_trainer(pool_args(data_root, clip_files, teacher_run, str(tmp_path), extra,
                                     "TRAINER.PROMPTKD.POOL", str(sources)))
    trainer.train()
    expected = {"train_base": 3 * 5, "folder": 12, "train+folder": 25 + 12}[pool]  # fake DTD: 5 train per class
    assert len(trainer.view_dataset) == len(trainer.pool) == expected
    assert set(trainer.last_report) >= {"base", "novel", "hm"}


def test_shards_mixed_with_the_train_split_distil_and_resume(data_root, clip_files, teacher_run, extra, tmp_path):
    keys = ("TRAINER.PROMPTKD.POOL", str(["train", f"wds:{extra['pattern']}"]), "DATALOADER.TRAIN_X.BATCH_SIZE", "2")
    whole, resumed = whole_and_resumed(lambda run: pool_args(data_root, clip_files, teacher_run, str(tmp_path / run),
                                                             extra, *keys, epochs=2), 1)
    assert whole.pool.streamed and len(whole.pool) == 25 + 20 and resumed.start_epoch == 1
    assert whole.pool.record()["streamed_listed_images"] == 25
    assert len(whole.train_loader_x) == 45 // 2  # one process, no loader worker: every image each epoch
    assert set(whole.last_report) >= {"base", "novel", "hm"}


def test_shard_pool_distils_records_and_resumes(data_root, clip_files, teacher_run, extra, tmp_path):
    keys = ("TRAINER.PROMPTKD.POOL", str([f"wds:{extra['pattern']}"]), "DATALOADER.TRAIN_X.BATCH_SIZE", "2")
    whole, resumed = whole_and_resumed(lambda run: pool_args(data_root, clip_files, teacher_run, str(tmp_path / run),
                                                             extra, *keys, epochs=2), 1)
    assert len(whole.train_loader_x) == 10 and resumed.start_epoch == 1
    with pytest.raises(ConfigError, match="TEACHER_CACHE with a WebDataset pool"):
        make_trainer(pool_args(data_root, clip_files, teacher_run, str(tmp_path / "c"), extra, *keys,
                               "TRAINER.PROMPTKD.TEACHER_CACHE", str(tmp_path / "cache")))
    out = tmp_path / "recorded"
    proc = train_py(pool_args(data_root, clip_files, teacher_run, str(out), extra, *keys))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.load(open(out / "run.json"))
    assert run["pool"]["sources"] == [f"wds:{extra['pattern']}"] and run["pool"]["images"] == 20
    assert run["pool"]["streamed_shards"] == 4 and run["pool"]["leakage_check"]["checked"] is True
    # the session teacher's run.json (an in-process trainer writes its own, trainers/base.py)
    assert run["teacher_data"] == {"protocol": "base2novel", "dataset": "DescribableTextures", "train_classes": "base",
                                   "num_shots": 4, "seed": 1, "trainer": "PromptKDTeacher"}


# --- 2 gloo processes --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "wds", "folder+wds"])
def test_folder_and_shard_pools_through_ddp(kind, data_root, clip_files, teacher_run, extra, tmp_path):
    from tests.ddp_kit import assert_same, ranks, torchrun
    sources = {"folder": [f"folder:{extra['folder']}"], "wds": [f"wds:{extra['pattern']}"],
               "folder+wds": [f"folder:{extra['folder']}", f"wds:{extra['pattern']}"]}[kind]
    out, probe = str(tmp_path / "out"), str(tmp_path / "probe")
    os.makedirs(probe)
    args = pool_args(data_root, clip_files, teacher_run, out, extra, "TRAINER.PROMPTKD.POOL", str(sources),
                     "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "DATALOADER.NUM_WORKERS", "1", epochs=1)
    proc = torchrun(probe, args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = ranks(probe)
    assert_same(r0["state"], r1["state"])
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["processes"] == 2 and run["pool"]["images"] == {"folder": 12, "wds": 20, "folder+wds": 32}[kind]
    log = open(os.path.join(out, "log.txt")).read()
    assert {"folder": "12 images", "wds": "5 steps of 2 per process",
            "folder+wds": "32 images in 7 units (4 WebDataset shards, 12 listed images)"}[kind] in log
