"""What the fixture host's loaders share: CoOp's split JSON, per-class splits, few shots and
base / new classes.

The split file `split_zhou_<Name>.json` holds {"train" | "val" | "test": [[path relative to the
image folder, label, class name], ...]}; it is built from the raw files once and then read.
"""
import json
import math
import os
import random

from dassl.data.datasets import DatasetBase, Datum


class CoOpFormatDataset(DatasetBase):
    """Subclasses set `dataset_dir`, `image_dir` (under it) and implement `build_split()`,
    which returns three lists of (path relative to the image folder, label, class name)."""

    dataset_dir = ""
    image_dir = ""

    def __init__(self, cfg):
        self.dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT)), self.dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, self.image_dir)
        split_path = os.path.join(self.dataset_dir, f"split_zhou_{type(self).__name__}.json")
        if os.path.exists(split_path):
            with open(split_path, encoding="utf-8") as f:
                split = json.load(f)
        else:
            split = dict(zip(("train", "val", "test"), self.build_split()))
            tmp = f"{split_path}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(split, f, indent=1)
            os.replace(tmp, split_path)
            print(f"Saved split to {split_path}")
        train, val, test = ([Datum(impath=os.path.join(self.image_dir, path), label=int(label), classname=name)
                             for path, label, name in split[key]] for key in ("train", "val", "test"))
        shots = cfg.DATASET.NUM_SHOTS
        if shots >= 1:
            train = self.generate_fewshot_dataset(train, num_shots=shots)
            val = self.generate_fewshot_dataset(val, num_shots=min(shots, 4))
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)


def subsample_classes(*splits, subsample="all"):
    """All classes, or the first (base) or second (new) half of the labels, relabelled from 0."""
    if subsample == "all":
        return splits
    if subsample not in ("base", "new"):
        raise ValueError(f"DATASET.SUBSAMPLE_CLASSES must be all, base or new, not {subsample!r}")
    labels = sorted({item.label for split in splits for item in split})
    half = math.ceil(len(labels) / 2)
    kept = labels[:half] if subsample == "base" else labels[half:]
    new_label = {old: new for new, old in enumerate(kept)}
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    return tuple([Datum(impath=item.impath, label=new_label[item.label], classname=item.classname)
                  for item in split if item.label in new_label] for split in splits)


def split_per_class(by_class, p_train=0.5, p_val=0.2):
    """{(label, name): [relative paths]} -> train / val / test lists, shuffled per class
    (Python's random, seeded by train.py)."""
    train, val, test = [], [], []
    for (label, name), paths in sorted(by_class.items()):
        paths = sorted(paths)
        random.shuffle(paths)
        n_train, n_val = round(len(paths) * p_train), round(len(paths) * p_val)
        rows = [(path, label, name) for path in paths]
        train += rows[:n_train]
        val += rows[n_train:n_train + n_val]
        test += rows[n_train + n_val:]
    return train, val, test


def class_folders(image_dir, ignored=(), rename=None):
    """{(label, class name): [relative paths]} of `image_dir/<class>/<image>`, labels in sorted order."""
    rename = rename or {}
    folders = sorted(f for f in os.listdir(image_dir)
                     if os.path.isdir(os.path.join(image_dir, f)) and f not in ignored and not f.startswith("."))
    return {(label, rename.get(folder, folder)):
            [f"{folder}/{name}" for name in os.listdir(os.path.join(image_dir, folder)) if not name.startswith(".")]
            for label, folder in enumerate(folders)}
