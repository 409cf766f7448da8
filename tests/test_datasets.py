"""The 15 CoOp-format dataset loaders, run on tiny fake copies of the real raw layouts."""
import json
import math
import os
import os.path as osp
import pickle
import random
import re
import shutil
from collections import Counter

import pytest

dassl = pytest.importorskip(
    "dassl",
    reason="Dassl not installed (see README: install Dassl from GitHub to run the dataset-loader tests)",
)

from dassl.data.datasets import DATASET_REGISTRY, Datum, build_dataset  # noqa: E402

import promptkd.datasets  # noqa: E402,F401  (conftest.py registers the loaders)
from promptkd.datasets import common  # noqa: E402
from tests import fake_data  # noqa: E402
from tests.dataset_kit import EXPECTED_CLASSNAMES, make_cfg  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# config key -> (registered name, dataset folder, split JSON or None, few-shot capable)
SPECS = {
    "imagenet": ("ImageNet", "imagenet", None, True),
    "caltech101": ("Caltech101", "caltech-101", "split_zhou_Caltech101.json", True),
    "oxford_pets": ("OxfordPets", "oxford_pets", "split_zhou_OxfordPets.json", True),
    "stanford_cars": ("StanfordCars", "stanford_cars", "split_zhou_StanfordCars.json", True),
    "oxford_flowers": ("OxfordFlowers", "oxford_flowers", "split_zhou_OxfordFlowers.json", True),
    "food101": ("Food101", "food-101", "split_zhou_Food101.json", True),
    "fgvc_aircraft": ("FGVCAircraft", "fgvc_aircraft", None, True),
    "sun397": ("SUN397", "sun397", "split_zhou_SUN397.json", True),
    "dtd": ("DescribableTextures", "dtd", "split_zhou_DescribableTextures.json", True),
    "eurosat": ("EuroSAT", "eurosat", "split_zhou_EuroSAT.json", True),
    "ucf101": ("UCF101", "ucf101", "split_zhou_UCF101.json", True),
    "imagenetv2": ("ImageNetV2", "imagenetv2", None, False),
    "imagenet_sketch": ("ImageNetSketch", "imagenet-sketch", None, False),
    "imagenet_a": ("ImageNetA", "imagenet-adversarial", None, False),
    "imagenet_r": ("ImageNetR", "imagenet-rendition", None, False),
}
JSON_KEYS = [k for k, spec in SPECS.items() if spec[2]]
FEWSHOT_KEYS = [k for k, spec in SPECS.items() if spec[3]]
EVAL_ONLY_KEYS = [k for k, spec in SPECS.items() if not spec[3]]

# Files and folders each loader must find before reading (relative to the dataset folder).
REQUIRED_PATHS = [
    ("imagenet", "classnames.txt"), ("imagenet", "images/val"),
    ("caltech101", "101_ObjectCategories"),
    ("oxford_pets", "images"), ("oxford_pets", "annotations/trainval.txt"),
    ("oxford_pets", "annotations/test.txt"),
    ("stanford_cars", "devkit/cars_meta.mat"), ("stanford_cars", "devkit/cars_train_annos.mat"),
    ("stanford_cars", "cars_test_annos_withlabels.mat"),
    ("oxford_flowers", "jpg"), ("oxford_flowers", "imagelabels.mat"),
    ("oxford_flowers", "cat_to_name.json"),
    ("food101", "images"),
    ("fgvc_aircraft", "images"), ("fgvc_aircraft", "variants.txt"),
    ("fgvc_aircraft", "images_variant_train.txt"), ("fgvc_aircraft", "images_variant_test.txt"),
    ("sun397", "SUN397"), ("sun397", "ClassName.txt"), ("sun397", "Training_01.txt"),
    ("sun397", "Testing_01.txt"),
    ("dtd", "images"),
    ("eurosat", "2750"),
    ("ucf101", "UCF-101-midframes"), ("ucf101", "ucfTrainTestlist/classInd.txt"),
    ("ucf101", "ucfTrainTestlist/trainlist01.txt"), ("ucf101", "ucfTrainTestlist/testlist01.txt"),
    ("imagenetv2", "classnames.txt"), ("imagenetv2", "imagenetv2-matched-frequency-format-val"),
    ("imagenet_sketch", "classnames.txt"), ("imagenet_a", "imagenet-a"),
    ("imagenet_r", "classnames.txt"),
]


def build(root, key, **kwargs):
    return build_dataset(make_cfg(root, key, **kwargs))


def labels_of(items):
    return {item.label for item in items}


def per_class(items):
    return Counter(item.label for item in items)


def as_tuples(items):
    return [(item.impath, item.label, item.classname) for item in items]


@pytest.fixture
def fake(tmp_path):
    """fake(key) -> root holding the default fake copy of that dataset."""

    def _make(key):
        fake_data.MAKERS[key](tmp_path)
        return tmp_path

    return _make


# ----------------------------------------------------------------------------------------
# all / base / new
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(SPECS))
def test_all_base_new(fake, key):
    root = fake(key)
    full = build(root, key)
    c = len(EXPECTED_CLASSNAMES[key])
    m = math.ceil(c / 2)
    assert type(full).__name__ == SPECS[key][0]
    assert full.num_classes == c
    assert full.classnames == EXPECTED_CLASSNAMES[key]
    for split in (full.train_x, full.val, full.test):
        assert split and labels_of(split) <= set(range(c))
    assert labels_of(full.train_x) == labels_of(full.test) == set(range(c))
    # every item's class name agrees with its label
    for item in full.train_x + full.val + full.test:
        assert full.lab2cname[item.label] == item.classname
        assert osp.isfile(item.impath)

    base = build(root, key, subsample="base")
    new = build(root, key, subsample="new")
    assert base.num_classes == m and new.num_classes == c // 2
    assert base.classnames == full.classnames[:m]
    assert new.classnames == full.classnames[m:]
    assert labels_of(base.test) == set(range(m))
    assert labels_of(new.test) == set(range(c - m))
    # the halves partition the full test set, with labels shifted for new
    full_test = sorted(as_tuples(full.test))
    halves = [(p, y, n) for p, y, n in as_tuples(base.test)] + \
             [(p, y + m, n) for p, y, n in as_tuples(new.test)]
    assert sorted(halves) == full_test


# ----------------------------------------------------------------------------------------
# split JSON
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", JSON_KEYS)
def test_split_json_written_then_reused(fake, key, monkeypatch):
    root = fake(key)
    name, folder, split_file, _ = SPECS[key]
    split_path = root / folder / split_file
    assert not split_path.exists()  # the kit writes none

    first = build(root, key)
    assert split_path.is_file()
    with open(split_path) as f:
        split = json.load(f)
    assert set(split) == {"train", "val", "test"}
    image_dir = first.image_dir
    for part, items in (("train", first.train_x), ("val", first.val), ("test", first.test)):
        assert len(split[part]) == len(items)
        for (rel, label, cname), item in zip(split[part], items):
            assert not osp.isabs(rel) and "\\" not in rel
            assert osp.join(image_dir, rel) == item.impath
            assert (label, cname) == (item.label, item.classname)
    if key == "stanford_cars":  # paths relative to the dataset folder itself
        assert split["train"][0][0].startswith("cars_train/")
    # atomic write: no temporary file left behind
    assert not [f for f in os.listdir(root / folder) if f.startswith(".tmp-")]
    before = split_path.read_bytes()

    # the second build reads the JSON instead of rebuilding (and leaves the file untouched)
    cls = DATASET_REGISTRY.get(name)

    def no_rebuild(self):
        raise AssertionError("split rebuilt although the JSON exists")

    monkeypatch.setattr(cls, "build_split", no_rebuild)
    second = build(root, key)
    assert split_path.read_bytes() == before
    for a, b in ((first.train_x, second.train_x), (first.val, second.val), (first.test, second.test)):
        assert as_tuples(a) == as_tuples(b)


def handmade_dtd_split(root):
    """A split file unlike anything the loader would build: 1 train, 1 val, 2 test per class,
    class names "<folder> texture"."""
    image_dir = root / "dtd" / "images"
    split = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(sorted(os.listdir(image_dir))):
        files = sorted(os.listdir(image_dir / cls))
        name = f"{cls} texture"
        split["train"].append([f"{cls}/{files[0]}", label, name])
        split["val"].append([f"{cls}/{files[1]}", label, name])
        split["test"] += [[f"{cls}/{f}", label, name] for f in files[2:4]]
    return split


def assert_matches_split(ds, split, image_dir):
    for part, items in (("train", ds.train_x), ("val", ds.val), ("test", ds.test)):
        assert [[osp.relpath(i.impath, image_dir), i.label, i.classname] for i in items] == split[part]


def test_existing_split_json_is_read_unchanged(fake):
    """A split file from CoOp decides the split, labels and names, whatever the folders say."""
    root = fake("dtd")
    split = handmade_dtd_split(root)
    split_path = root / "dtd" / "split_zhou_DescribableTextures.json"
    split_path.write_text(json.dumps(split))
    before = split_path.read_bytes()

    ds = build(root, "dtd")
    assert split_path.read_bytes() == before
    assert ds.classnames == [f"{cls} texture" for cls in sorted(os.listdir(root / "dtd" / "images"))]
    assert_matches_split(ds, split, root / "dtd" / "images")


def test_concurrent_runs_share_the_first_written_split(fake, monkeypatch):
    """If another run writes the split while this one builds it, both use the file."""
    root = fake("dtd")
    split = handmade_dtd_split(root)
    split_path = root / "dtd" / "split_zhou_DescribableTextures.json"
    cls = DATASET_REGISTRY.get("DescribableTextures")
    original = cls.build_split

    def build_while_another_run_writes(self):
        result = original(self)
        split_path.write_text(json.dumps(split))  # the other run finishes first
        return result

    monkeypatch.setattr(cls, "build_split", build_while_another_run_writes)
    before_files = set(os.listdir(root / "dtd"))
    ds = build(root, "dtd")
    assert json.loads(split_path.read_text()) == split  # not overwritten
    assert_matches_split(ds, split, root / "dtd" / "images")
    assert set(os.listdir(root / "dtd")) == before_files | {split_path.name}  # no temp file left


def test_split_helpers_are_seeded_and_proportional(tmp_path):
    groups = [(label, f"c{label}", [f"/x/{label}/{i}.jpg" for i in range(10)]) for label in range(3)]
    random.seed(0)
    a = common.split_by_percentage(groups)
    random.seed(0)
    b = common.split_by_percentage(groups)
    assert a == b
    train, val, test = a
    assert [len(s) for s in a] == [15, 6, 9]  # 50/20/30 of 10 per class
    assert sorted(train + val + test) == sorted((p, y, n) for y, n, ps in groups for p in ps)

    img = tmp_path / "x.jpg"
    img.write_bytes(b"")
    items = [Datum(str(img), label=y) for y in range(2) for _ in range(10)]
    random.seed(1)
    tr, va = common.split_trainval(items, p_val=0.2)
    assert per_class(va) == {0: 2, 1: 2} and per_class(tr) == {0: 8, 1: 8}


# ----------------------------------------------------------------------------------------
# few-shot subsets
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", FEWSHOT_KEYS)
def test_fewshot_cache(fake, key):
    root = fake(key)
    folder = SPECS[key][1]
    full = build(root, key)
    cache = root / folder / "split_fewshot" / "shot_2-seed_1.pkl"
    assert not cache.exists()

    ds = build(root, key, shots=2, seed=1)
    assert cache.is_file()
    assert set(per_class(ds.train_x).values()) == {2} and len(per_class(ds.train_x)) == full.num_classes
    assert set(as_tuples(ds.train_x)) <= set(as_tuples(full.train_x))
    with open(cache, "rb") as f:
        data = pickle.load(f)
    assert as_tuples(data["train"]) == as_tuples(ds.train_x)
    if key == "imagenet":  # val is the test set, kept whole (CoOp)
        assert "val" not in data and as_tuples(ds.val) == as_tuples(full.test)
    else:
        assert max(per_class(ds.val).values()) <= min(2, 4)
        assert as_tuples(data["val"]) == as_tuples(ds.val)
    assert as_tuples(ds.test) == as_tuples(full.test)  # test is never subsampled

    # the same seed draws the same subset, whatever the global random state
    random.seed(12345)
    shutil.move(str(cache), str(cache) + ".bak")
    redrawn = build(root, key, shots=2, seed=1)
    assert as_tuples(redrawn.train_x) == as_tuples(ds.train_x)

    # a second build reads the cache: tamper with it and see the tampered subset come back
    one_each = {}
    for item in data["train"]:
        one_each.setdefault(item.label, item)
    data["train"] = list(one_each.values())
    with open(cache, "wb") as f:
        pickle.dump(data, f)
    cached = build(root, key, shots=2, seed=1)
    assert as_tuples(cached.train_x) == as_tuples(data["train"])

    # base classes of the few-shot subset
    base = build(root, key, shots=2, seed=1, subsample="base")
    assert labels_of(base.train_x) == set(range(math.ceil(full.num_classes / 2)))


@pytest.mark.parametrize("key", EVAL_ONLY_KEYS)
def test_eval_only_datasets_ignore_num_shots(fake, key):
    root = fake(key)
    ds = build(root, key, shots=2)
    assert not (root / SPECS[key][1] / "split_fewshot").exists()
    assert as_tuples(ds.train_x) == as_tuples(ds.val) == as_tuples(ds.test)


def test_imagenet_preprocessed_cache_and_moved_folder(tmp_path, monkeypatch):
    first_root = tmp_path / "a"
    fake_data.make_imagenet(first_root)
    first = build(first_root, "imagenet", shots=2)
    assert (first_root / "imagenet" / "preprocessed.pkl").is_file()

    # the cache is read: no folder scan on the second build
    import promptkd.datasets.imagenet as imagenet_module

    def no_scan(*args, **kwargs):
        raise AssertionError("ImageNet folders scanned although preprocessed.pkl exists")

    with monkeypatch.context() as mp:
        mp.setattr(imagenet_module, "read_wnid_folders", no_scan)
        second = build(first_root, "imagenet")
    assert as_tuples(second.test) == as_tuples(build(first_root, "imagenet").test)

    # after moving the data folder, caches holding the old absolute paths are rebuilt
    moved_root = tmp_path / "b"
    shutil.move(str(first_root), str(moved_root))
    moved = build(moved_root, "imagenet", shots=2)
    for item in moved.train_x + moved.test:
        assert item.impath.startswith(str(moved_root)) and osp.isfile(item.impath)
    assert [(osp.basename(p), y) for p, y, _ in as_tuples(moved.train_x)] == \
        [(osp.basename(p), y) for p, y, _ in as_tuples(first.train_x)]


# ----------------------------------------------------------------------------------------
# class subsets (unit)
# ----------------------------------------------------------------------------------------
def test_subsample_classes_rules(tmp_path):
    img = tmp_path / "x.jpg"
    img.write_bytes(b"")
    for c in (4, 5):
        labels = [10 * y for y in range(c)]  # non-contiguous labels are sorted and relabelled
        train = [Datum(str(img), label=y, classname=f"n{y}") for y in labels for _ in range(2)]
        test = [Datum(str(img), label=y, classname=f"n{y}") for y in labels]
        (same_train, same_test) = common.subsample_classes(train, test, subsample="all")
        assert same_train is train and same_test is test
        b_train, b_test = common.subsample_classes(train, test, subsample="base")
        n_train, n_test = common.subsample_classes(train, test, subsample="new")
        m = math.ceil(c / 2)
        assert [i.label for i in b_test] == list(range(m))
        assert [i.label for i in n_test] == list(range(c - m))
        assert [i.classname for i in b_test + n_test] == [f"n{y}" for y in labels]
        assert len(b_train) == 2 * m and len(n_train) == 2 * (c - m)

    with pytest.raises(ValueError) as err:
        common.subsample_classes(train, subsample="novel")
    for word in ("DATASET.SUBSAMPLE_CLASSES", "all", "base", "new", "novel"):
        assert word in str(err.value)


def test_unknown_subsample_value_from_cfg(fake):
    root = fake("dtd")
    with pytest.raises(ValueError, match="DATASET.SUBSAMPLE_CLASSES"):
        build(root, "dtd", subsample="half")


# ----------------------------------------------------------------------------------------
# missing data -> errors that point at DATASETS.md
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(SPECS))
def test_missing_dataset_folder(tmp_path, key):
    name, folder, _, _ = SPECS[key]
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, key)
    msg = str(err.value)
    assert str(tmp_path / folder) in msg
    assert f"DATASETS.md#{name.lower()}" in msg


@pytest.mark.parametrize("key,rel", REQUIRED_PATHS)
def test_missing_annotation_or_image_folder(fake, key, rel):
    root = fake(key)
    name, folder, _, _ = SPECS[key]
    path = root / folder / rel
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        build(root, key)
    msg = str(err.value)
    assert str(path) in msg
    assert f"DATASETS.md#{name.lower()}" in msg


def test_missing_listed_image(fake):
    root = fake("oxford_pets")
    path = root / "oxford_pets" / "images" / "Bengal_2.jpg"
    path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        build(root, "oxford_pets")
    assert str(path) in str(err.value) and "DATASETS.md#oxfordpets" in str(err.value)


def github_anchor(heading):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_docs_have_a_section_per_dataset():
    with open(osp.join(REPO, "DATASETS.md"), encoding="utf-8") as f:
        headings = [line[3:] for line in f.read().splitlines() if line.startswith("## ")]
    anchors = {f"DATASETS.md#{github_anchor(h)}" for h in headings}
    for name, *_ in SPECS.values():
        assert common.docs_anchor(name) in anchors


def test_configs_name_registered_datasets():
    config_dir = osp.join(REPO, "configs", "datasets")
    configs = {f[:-5] for f in os.listdir(config_dir) if f.endswith(".yaml")}
    assert configs >= set(SPECS)  # the 15 CoOp datasets, with CoOp's file names
    for key, (name, *_) in SPECS.items():
        assert make_cfg("/nonexistent", key).DATASET.NAME == name
        assert name in DATASET_REGISTRY.registered_names()
