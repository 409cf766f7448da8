"""Shared machinery of the CoOp-format dataset loaders.

Every loader in this package follows the same flow (see `CoOpDataset`):

1. locate ``<DATASET.ROOT>/<dataset_dir>`` and check that the image folder exists;
2. read the train / val / test split from ``split_zhou_<Name>.json`` when the dataset has one
   and it exists, otherwise build the split from the raw layout (`CoOpDataset.build_split`)
   and write the JSON so later runs (and other seeds) reuse exactly the same split;
3. with ``DATASET.NUM_SHOTS >= 1``, take a few-shot subset of train (K per class) and val
   (min(K, 4) per class), cached in ``split_fewshot/shot_{K}-seed_{S}.pkl``;
4. keep all / the base half / the new half of the classes (``DATASET.SUBSAMPLE_CLASSES``).

The on-disk formats (split JSON, few-shot pickle) are the ones CoOp writes, so a data folder
prepared for CoOp / CoCoOp / MaPLe / PromptSRC works unchanged, in both directions.
"""
import logging
import math
import os
import os.path as osp
import pickle
import random
from collections import OrderedDict, defaultdict
from contextlib import contextmanager

import numpy as np
from dassl.data.datasets import DatasetBase, Datum

from promptkd.errors import ConfigError, DataError, MissingFileError
from promptkd.io import IMAGE_EXTENSIONS, atomic_write, atomic_write_json, load_json, load_pickle

logger = logging.getLogger(__name__)

SUBSAMPLE_CHOICES = ("all", "base", "new")
DOCS_FILE = "DATASETS.md"


# ----------------------------------------------------------------------------------------
# errors that point at the docs
# ----------------------------------------------------------------------------------------
def docs_anchor(dataset_name):
    """GitHub anchor of a dataset's section in DATASETS.md (headings are registered names)."""
    return f"{DOCS_FILE}#{dataset_name.lower()}"


def require_path(path, dataset_name):
    """Return `path` if it exists, else raise a FileNotFoundError that says where to look."""
    if not osp.exists(path):
        raise MissingFileError(
            f"{dataset_name}: {path} does not exist. Download and arrange the dataset as "
            f"described in {docs_anchor(dataset_name)} (DATASET.ROOT / --root must be the "
            f"folder that holds the dataset folders)."
        )
    return path


class NoImagesError(MissingFileError):
    """A dataset folder that holds no images at all (e.g. created but never filled)."""


_MISSING = []  # stack of lists: inside `collect_missing_images()` missing images are recorded


@contextmanager
def collect_missing_images():
    """Within the block, an image listed by a split but absent is appended to the yielded
    list (and kept as a Datum) instead of raising: `promptkd check` reports them all."""
    missing = []
    _MISSING.append(missing)
    try:
        yield missing
    finally:
        _MISSING.pop()


def make_datum(impath, label, classname, dataset_name):
    """A Dassl `Datum`, with a FileNotFoundError naming the image instead of a bare assert."""
    if _MISSING and not osp.isfile(impath):
        _MISSING[-1].append(impath)
        datum = Datum.__new__(Datum)
        datum._impath, datum._label, datum._domain, datum._classname = impath, int(label), 0, classname
        return datum
    try:
        return Datum(impath=impath, label=int(label), classname=classname)
    except AssertionError:  # Datum asserts that the image file exists
        raise MissingFileError(
            f"{dataset_name}: image {impath} is listed by the split / annotation files but "
            f"does not exist. See {docs_anchor(dataset_name)}."
        ) from None


# ----------------------------------------------------------------------------------------
# small readers
# ----------------------------------------------------------------------------------------
def listdir_nohidden(path, sort=True):
    """Entries of a directory, without hidden ones (".DS_Store", ".ipynb_checkpoints")."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def list_subdirs(path):
    """Sorted names of the non-hidden sub-directories of `path`."""
    return [f for f in listdir_nohidden(path) if osp.isdir(osp.join(path, f))]


def list_images(path):
    """Sorted names of the image files in `path` (by extension, case-insensitive)."""
    return [
        f
        for f in listdir_nohidden(path)
        if f.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(path, f))
    ]


def read_lines(path):
    """Stripped non-empty lines of a text file, skipping '#' comment lines."""
    with open(path, "r", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def read_classnames(path):
    """ImageNet's ``classnames.txt``: lines ``<wnid> <class name with spaces>``.

    Returns an OrderedDict wnid -> class name in file order (the order defines the labels).
    """
    classnames = OrderedDict()
    for line in read_lines(path):
        wnid, _, name = line.partition(" ")
        classnames[wnid] = name.strip()
    return classnames


def mat_str(value):
    """A string stored by MATLAB (`scipy.io.loadmat` wraps it in nested arrays)."""
    return str(np.asarray(value).squeeze())


def mat_int(value):
    """An integer stored by MATLAB (`scipy.io.loadmat` wraps it in a 1x1 array)."""
    return int(np.asarray(value).squeeze())


# ----------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------
def write_json_atomic(obj, path, exclusive=False):
    """Write JSON atomically (`promptkd.io.atomic_write`); with `exclusive` only if no file is
    there yet (returns False when another process wrote it first)."""
    return atomic_write_json(path, obj, exclusive=exclusive, indent=4, separators=(",", ": ")) is not None


def write_pickle_atomic(obj, path):
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def split_fix(dataset_name):
    """What to do with a damaged split JSON."""
    return (f"Download it again as described in {docs_anchor(dataset_name)}, or delete it: the split is then "
            f"rebuilt from the raw files (which may differ from CoOp's published split).")


# ----------------------------------------------------------------------------------------
# the CoOp split JSON
# ----------------------------------------------------------------------------------------
def read_split(filepath, path_prefix, dataset_name):
    """Read ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

    Paths in the file are relative to `path_prefix` (the dataset's image folder).
    Returns the lists of Datum (train, val, test).
    """
    logger.info("Reading split from %s", filepath)
    fix = split_fix(dataset_name)
    split = load_json(filepath, what=f"{dataset_name} split file (JSON)", fix=fix)
    if not all(isinstance(split.get(k), list) for k in ("train", "val", "test")):
        raise DataError(f"{filepath} is not a split file: it needs lists 'train', 'val' and 'test'. {fix}")

    def convert(items):
        return [
            make_datum(osp.join(path_prefix, relpath), label, classname, dataset_name)
            for relpath, label, classname in items
        ]

    return convert(split["train"]), convert(split["val"]), convert(split["test"])


def write_split(train, val, test, filepath, path_prefix):
    """Write the split JSON with paths relative to `path_prefix`, unless it exists.

    The file is published atomically and only if absent, so runs started together on a fresh
    folder (e.g. seeds 1-3) cannot overwrite each other's split: the first one wins. Returns
    False when another process wrote the file first (the caller should then read it).
    """

    def convert(items):
        out = []
        for item in items:
            relpath = osp.relpath(item.impath, path_prefix).replace(os.sep, "/")
            out.append((relpath, int(item.label), item.classname))
        return out

    split = {"train": convert(train), "val": convert(val), "test": convert(test)}
    written = write_json_atomic(split, filepath, exclusive=True)
    if written:
        logger.info("Saved split to %s", filepath)
    return written


# ----------------------------------------------------------------------------------------
# building splits from raw layouts
# ----------------------------------------------------------------------------------------
def group_by_label(items):
    """{label: [items]} in increasing label order; each item has a `.label` (Datum)."""
    groups = defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    return OrderedDict(sorted(groups.items()))


def split_trainval(trainval, p_val=0.2, rng=random):
    """Split a list of Datum into train / val with a fraction `p_val` of each class in val.

    Per class (in label order) the items are shuffled with `rng` (the global `random` module
    by default, so the result is fixed by the seed the trainer set), the first
    round(n * p_val) go to val and the rest to train.
    """
    logger.info("Splitting trainval into %.0f%% train and %.0f%% val", (1 - p_val) * 100, p_val * 100)
    train, val = [], []
    for items in group_by_label(trainval).values():
        items = list(items)
        rng.shuffle(items)
        n_val = round(len(items) * p_val)
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def split_by_percentage(groups, p_train=0.5, p_val=0.2, rng=random):
    """Split per-class groups into train / val / test (50/20/30 by default).

    `groups` is a sequence of ``(label, classname, impaths)``. For each class the paths are
    sorted, shuffled with `rng`, and the first round(n * p_train) go to train, the next
    round(n * p_val) to val, the rest to test. Returns lists of (impath, label, classname).
    """
    logger.info(
        "Splitting into %.0f%% train, %.0f%% val and %.0f%% test",
        p_train * 100, p_val * 100, (1 - p_train - p_val) * 100,
    )
    train, val, test = [], [], []
    for label, classname, impaths in groups:
        impaths = sorted(impaths)
        rng.shuffle(impaths)
        n_train = round(len(impaths) * p_train)
        n_val = round(len(impaths) * p_val)
        if len(impaths) - n_train - n_val <= 0:
            logger.warning("class %r has %d images: none left for test", classname, len(impaths))
        triples = [(impath, label, classname) for impath in impaths]
        train.extend(triples[:n_train])
        val.extend(triples[n_train:n_train + n_val])
        test.extend(triples[n_train + n_val:])
    return train, val, test


def read_class_folders(image_dir, ignored=(), new_names=None):
    """``image_dir/<class>/<image>`` -> groups ``(label, classname, impaths)``.

    Classes are the sorted sub-folders minus `ignored`; labels follow that order; the class
    name is the folder name unless `new_names` maps it to another one.
    """
    new_names = new_names or {}
    folders = [f for f in list_subdirs(image_dir) if f not in ignored]
    groups = []
    for label, folder in enumerate(folders):
        class_dir = osp.join(image_dir, folder)
        impaths = [osp.join(class_dir, name) for name in list_images(class_dir)]
        groups.append((label, new_names.get(folder, folder), impaths))
    return groups


def read_wnid_folders(image_dir, classnames, make, relabel):
    """``<image_dir>/<wnid>/<image>`` -> [Datum], classes in ``classnames`` (wnid -> name) order.

    With `relabel` only the wnids whose folder exists are kept and labelled 0..K-1 in that
    order (ImageNet-A and ImageNet-R hold 200 of the 1000 classes); without it the label is
    the wnid's index in `classnames` (ImageNet, where train and val must agree). Folders that
    are not in `classnames` are skipped with a warning. `make(impath, label, classname)`
    builds one item.
    """
    present = set(list_subdirs(image_dir))
    unknown = sorted(present - set(classnames))
    if unknown:
        logger.warning("%d folders of %s are not in classnames.txt and are ignored: %s",
                       len(unknown), image_dir, unknown[:5])
    wnids = [w for w in classnames if w in present]
    index = {w: i for i, w in enumerate(classnames)}
    items = []
    for position, wnid in enumerate(wnids):
        label = position if relabel else index[wnid]
        class_dir = osp.join(image_dir, wnid)
        for imname in list_images(class_dir):
            items.append(make(osp.join(class_dir, imname), label, classnames[wnid]))
    return items


# ----------------------------------------------------------------------------------------
# few-shot subsets and base / new classes
# ----------------------------------------------------------------------------------------
@contextmanager
def seeded_random(seed):
    """Seed Python's `random` for the block and restore the caller's state afterwards.

    Few-shot sampling then depends only on (split, K, seed): the cached file and a freshly
    drawn subset agree whatever ran before in the process. With an existing split file this
    draws the subset CoOp draws right after its train.py seeds `random` with the same seed.
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _all_files_exist(items):
    return all(osp.isfile(item.impath) for item in items)


def load_or_make_fewshot(dataset, train, val, num_shots, seed, cache_dir, fewshot_val=True):
    """Few-shot train (K per class) and val (min(K, 4) per class), cached as a pickle.

    The cache is ``<cache_dir>/shot_{K}-seed_{S}.pkl`` holding ``{"train": [Datum],
    "val": [Datum]}`` (CoOp's format; a file without "val", as CoOp writes for ImageNet, is
    read too). A cache whose image paths no longer exist (the data folder was moved) is
    rebuilt with a warning. With `fewshot_val=False` val is kept whole and not cached.
    """
    path = osp.join(cache_dir, f"shot_{num_shots}-seed_{seed}.pkl")
    if osp.isfile(path):
        logger.info("Loading few-shot data from %s", path)
        fix = ("Delete it: the next run draws the few-shot subset again (it depends only on the split, the "
               "number of shots and the seed).")
        data = load_pickle(path, what="few-shot cache", fix=fix)
        if not isinstance(data, dict) or not isinstance(data.get("train"), list):
            raise DataError(f"{path} is not a few-shot cache (a dict with a 'train' list). {fix}")
        cached_val = data.get("val") if fewshot_val else None
        if _all_files_exist(data["train"]) and _all_files_exist(cached_val or []):
            return data["train"], (cached_val if cached_val is not None else val)
        logger.warning("Few-shot cache %s lists images that no longer exist: rebuilding it", path)

    with seeded_random(seed):
        train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
        data = {"train": train}
        if fewshot_val:
            val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
            data["val"] = val
    write_pickle_atomic(data, path)
    logger.info("Saved few-shot data to %s", path)
    return train, val


def subsample_classes(*splits, subsample="all"):
    """Keep all classes, the base half or the new half, relabelled from 0.

    The labels present in the splits are sorted; with C of them and m = ceil(C / 2) the base
    classes are the first m and the new classes the remaining C - m. Returns a list with one
    filtered list of Datum per input split (the inputs themselves for "all").
    """
    subsample = str(subsample).lower()
    if subsample not in SUBSAMPLE_CHOICES:
        raise ConfigError(
            f"DATASET.SUBSAMPLE_CLASSES must be one of {', '.join(SUBSAMPLE_CHOICES)}; "
            f"got {subsample!r}"
        )
    if subsample == "all":
        return list(splits)

    labels = sorted({item.label for split in splits for item in split})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    logger.info("SUBSAMPLE %s CLASSES: %d of %d", subsample.upper(), len(selected), len(labels))
    relabeler = {y: y_new for y_new, y in enumerate(selected)}

    output = []
    for split in splits:
        output.append([
            Datum(
                impath=item.impath,
                label=relabeler[item.label],
                domain=item.domain,
                classname=item.classname,
            )
            for item in split
            if item.label in relabeler
        ])
    return output


# ----------------------------------------------------------------------------------------
# the base class of every loader
# ----------------------------------------------------------------------------------------
class CoOpDataset(DatasetBase):
    """The flow shared by the CoOp-format loaders.

    Subclasses set the class attributes and implement `build_split()`:

    - ``dataset_dir``: folder under DATASET.ROOT (becomes the absolute path on the instance);
    - ``image_subdir``: image folder relative to ``dataset_dir`` ("" = the dataset folder);
      split-JSON paths are relative to it;
    - ``split_file``: name of the split JSON in the dataset folder, or None when the split is
      given by the raw files alone (it is then rebuilt on every load);
    - ``annotation_files``: files (relative to ``dataset_dir``) that must exist before the
      split is built from the raw layout;
    - ``fewshot``: False for test-only datasets (NUM_SHOTS is then ignored);
    - ``fewshot_val``: False to keep val whole under few-shot (ImageNet, where val = test).
    """

    dataset_dir = ""
    image_subdir = ""
    split_file = None
    annotation_files = ()
    fewshot = True
    fewshot_val = True

    def __init__(self, cfg):
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = osp.join(root, self.dataset_dir)  # an instance may set its own first
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir) if self.image_subdir \
            else self.dataset_dir
        self.split_path = osp.join(self.dataset_dir, self.split_file) if self.split_file else None
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

        require_path(self.dataset_dir, self.name)
        require_path(self.image_dir, self.name)
        train, val, test = self.load_split()
        if not train:  # Dassl's DatasetBase would fail on it with a bare "max() arg is an empty sequence"
            what = "no images found" if not (val or test) else "no training images found"
            source = self.split_path if self.split_path and osp.isfile(self.split_path) else self.image_dir
            fix = (f"list training images in it or delete it to rebuild the split from {self.image_dir}"
                   if source == self.split_path else f"put the images there as described in {docs_anchor(self.name)}")
            raise NoImagesError(f"{self.name}: {what} in {source}: {fix}.")

        num_shots = int(cfg.DATASET.NUM_SHOTS)
        if num_shots >= 1:
            if self.fewshot:
                train, val = load_or_make_fewshot(
                    self, train, val, num_shots, cfg.SEED, self.split_fewshot_dir,
                    fewshot_val=self.fewshot_val,
                )
            else:
                logger.info("%s is a test-only dataset: DATASET.NUM_SHOTS is ignored", self.name)

        subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        super().__init__(train_x=train, val=val, test=test)

    @property
    def name(self):
        """The registered name (the class name)."""
        return type(self).__name__

    def path(self, *parts):
        """An absolute path inside the dataset folder."""
        return osp.join(self.dataset_dir, *parts)

    def require(self, *parts):
        """`path(*parts)`, checked to exist (FileNotFoundError pointing at DATASETS.md)."""
        return require_path(self.path(*parts), self.name)

    def datum(self, impath, label, classname):
        return make_datum(impath, label, classname, self.name)

    def datums(self, triples):
        """[(impath, label, classname)] -> [Datum]."""
        return [self.datum(*t) for t in triples]

    def load_split(self):
        """Read the split JSON if there is one, else build the split and write the JSON."""
        if self.split_path and osp.isfile(self.split_path):
            return read_split(self.split_path, self.image_dir, self.name)
        for rel in self.annotation_files:
            self.require(rel)
        train, val, test = self.build_split()
        if not train:  # nothing to keep: no JSON, so the split is built once the images are there
            return train, val, test
        if self.split_path and not write_split(train, val, test, self.split_path, self.image_dir):
            logger.info("%s was written by another run meanwhile: using it", self.split_path)
            return read_split(self.split_path, self.image_dir, self.name)
        return train, val, test

    def build_split(self):
        """Build (train, val, test) lists of Datum from the raw layout."""
        raise NotImplementedError


class FolderPerClassDataset(CoOpDataset):
    """``<image_dir>/<class>/<image>`` split 50/20/30 per class (Caltech101, DTD, ...)."""

    ignored_folders = ()
    new_classnames = {}

    def build_split(self):
        groups = read_class_folders(self.image_dir, self.ignored_folders, self.new_classnames)
        return [self.datums(s) for s in split_by_percentage(groups)]


class EvalOnlyDataset(CoOpDataset):
    """An evaluation-only dataset (the ImageNet variants): train = val = test.

    Dassl's DatasetBase needs a non-empty train split to count classes, so the test list
    stands in for all three. The split is read from the raw layout on every load.
    """

    fewshot = False
    annotation_files = ("classnames.txt",)

    def load_split(self):
        for rel in self.annotation_files:
            self.require(rel)
        test = self.read_test()
        return test, test, test

    def read_test(self):
        """The test images in ``<image_dir>/<wnid>/``, classes in ``classnames.txt`` order,
        relabelled 0..K-1 over the wnids whose folder exists."""
        classnames = read_classnames(self.path("classnames.txt"))
        return read_wnid_folders(self.image_dir, classnames, self.datum, relabel=True)
