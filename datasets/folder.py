"""ImageFolder: your own dataset as a plain folder tree (``configs/datasets/folder.yaml``).

``<DATASET.ROOT>/<DATASET.FOLDER.DIR>/`` holds either

* ``train/<class>/*``, ``test/<class>/*`` and optionally ``val/<class>/*`` (without ``val/``,
  ``DATASET.FOLDER.VAL_RATIO`` of each class's train images become val), or
* one folder per class, ``<class>/*``, split per class by ``DATASET.FOLDER.SPLIT``
  (train / val / test ratios) with ``DATASET.FOLDER.SPLIT_SEED``.

Labels follow the sorted folder names (so base-to-novel takes the first ceil(C/2) classes by
sorted name, as for every dataset). Class names are the folder names with underscores as
spaces, unless ``classnames.txt`` in the dataset folder maps ``<folder> <class name>`` (one
per line). The split is written as CoOp's JSON, ``split_ImageFolder_<settings>.json`` (the
ratio layout's name holds the ratios and seed, so changing them builds a new split); delete it
to rebuild after adding images. Few-shot subsets and SUBSAMPLE_CLASSES work as for the others.
"""
import logging
import os
import os.path as osp
import random


from promptkd.errors import MissingFileError

from .common import (IMAGE_EXTENSIONS, CoOpDataset, NoImagesError, list_images, list_subdirs, read_lines,
                     split_by_percentage, split_trainval)

logger = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val", "test")
CLASSNAMES_FILE = "classnames.txt"


def _holds_images(folder):
    """Whether any image file lies anywhere below `folder`."""
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(folder) for f in files)


def _config_error(message):
    from promptkd.errors import ConfigError  # plain PyTorch core; imported late to keep this light

    return ConfigError(message)


class ImageFolder(CoOpDataset):
    """A user's folder of class folders (with or without train / val / test folders)."""

    def __init__(self, cfg):
        node = cfg.DATASET.FOLDER
        if not node.DIR:
            raise _config_error("DATASET.FOLDER.DIR is empty: set it to your dataset's folder name under "
                                "DATASET.ROOT (see DATASETS.md#imagefolder).")
        ratios = [float(r) for r in node.SPLIT]
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] == 0:
            raise _config_error(f"DATASET.FOLDER.SPLIT is {list(node.SPLIT)}: give three train / val / test "
                                "ratios that sum to 1 with train > 0, e.g. (0.5, 0.2, 0.3).")
        if not 0 <= float(node.VAL_RATIO) < 1:
            raise _config_error(f"DATASET.FOLDER.VAL_RATIO must be in [0, 1), got {node.VAL_RATIO}.")
        self.ratios, self.val_ratio, self.seed = ratios, float(node.VAL_RATIO), int(node.SPLIT_SEED)
        # the class attributes CoOpDataset reads, per instance
        self.dataset_dir = node.DIR
        folder = osp.join(osp.abspath(osp.expanduser(cfg.DATASET.ROOT)), node.DIR)
        self.has_split_folders = osp.isdir(osp.join(folder, "train")) and osp.isdir(osp.join(folder, "test"))
        if self.has_split_folders:
            tag = f"folders_val{round(self.val_ratio * 100)}_seed{self.seed}" if not osp.isdir(
                osp.join(folder, "val")) else "folders"
        else:
            tag = "split" + "-".join(str(round(r * 100)) for r in ratios) + f"_seed{self.seed}"
        self.split_file = f"split_ImageFolder_{tag}.json"
        super().__init__(cfg)

    # --- class names ------------------------------------------------------------------------
    def classnames_for(self, folders):
        """Folder name -> class name (classnames.txt, else underscores as spaces)."""
        names = {f: f.replace("_", " ") for f in folders}
        path = self.path(CLASSNAMES_FILE)
        if osp.isfile(path):
            given = {}
            for line in read_lines(path):
                folder, _, name = line.partition(" ")
                if not name.strip():
                    raise _config_error(f"{path}: line '{line}' has no class name; each line is "
                                        "'<folder> <class name>'.")
                given[folder] = name.strip()
            unknown = sorted(set(given) - set(folders))
            if unknown:
                raise _config_error(f"{path} names folders that are not classes of {self.image_dir}: {unknown[:5]}.")
            missing = [f for f in folders if f not in given]
            if missing:
                logger.warning("%s does not name %d folders (%s ...): using their folder names", path,
                               len(missing), missing[:3])
            names.update(given)
        return names

    # --- the split ----------------------------------------------------------------------------
    def build_split(self):
        if self.has_split_folders:
            return self._from_split_folders()
        folders = list_subdirs(self.image_dir)
        if not folders:
            layout = "expected <class>/<image> or train/<class>/<image> and test/<class>/<image>"
            if not _holds_images(self.image_dir):
                raise NoImagesError(f"ImageFolder: no images found in {self.image_dir}; {layout}.")
            raise MissingFileError(f"ImageFolder: {self.image_dir} has no class folders; {layout}.")
        names = self.classnames_for(folders)
        groups = [(label, names[f], [osp.join(self.image_dir, f, i) for i in list_images(osp.join(self.image_dir, f))])
                  for label, f in enumerate(folders)]
        for _, name, impaths in groups:
            if not impaths:
                logger.warning("ImageFolder: class '%s' has no images", name)
        train, val, test = split_by_percentage(groups, self.ratios[0], self.ratios[1], rng=random.Random(self.seed))
        return [self.datums(s) for s in (train, val, test)]

    def _from_split_folders(self):
        present = [s for s in SPLIT_FOLDERS if osp.isdir(self.path(s))]
        folders = sorted({f for s in present for f in list_subdirs(self.path(s))})
        if not folders:
            if not _holds_images(self.dataset_dir):
                raise NoImagesError(f"ImageFolder: no images found in {self.dataset_dir}; expected "
                                    "train/<class>/<image> and test/<class>/<image>.")
            raise MissingFileError(f"ImageFolder: {self.path('train')} has no class folders.")
        names = self.classnames_for(folders)
        label = {f: i for i, f in enumerate(folders)}
        splits = {}
        for s in present:
            items = []
            for f in list_subdirs(self.path(s)):
                items += [self.datum(osp.join(self.path(s, f), i), label[f], names[f])
                          for i in list_images(self.path(s, f))]
            missing = [f for f in folders if f not in list_subdirs(self.path(s))]
            if missing:
                logger.warning("ImageFolder: %s/ has no folder for %d classes (%s ...)", s, len(missing), missing[:3])
            splits[s] = items
        if "val" not in splits:
            splits["train"], splits["val"] = split_trainval(splits["train"], self.val_ratio, rng=random.Random(self.seed))
        return splits["train"], splits["val"], splits["test"]
