"""ImageNet-1k (CoOp layout: ``imagenet/images/{train,val}/<wnid>/`` + ``classnames.txt``).

The official validation images are the test set (and, as in CoOp, also Dassl's val set).
Scanning 1.28M files is slow, so the full lists are cached in ``imagenet/preprocessed.pkl``
(``{"train": [Datum], "test": [Datum]}``, CoOp's format).
"""
import logging
import os.path as osp


from promptkd.errors import DataError
from promptkd.io import load_pickle

from .common import CoOpDataset, read_classnames, read_wnid_folders, write_pickle_atomic

logger = logging.getLogger(__name__)


class ImageNet(CoOpDataset):
    """1000 classes; label = the wnid's line index in ``classnames.txt``."""

    dataset_dir = "imagenet"
    image_subdir = "images"
    annotation_files = ("classnames.txt",)
    fewshot_val = False  # val is the test set: kept whole

    def load_split(self):
        preprocessed = self.path("preprocessed.pkl")
        if osp.isfile(preprocessed):
            logger.info("Loading preprocessed ImageNet lists from %s", preprocessed)
            fix = "Delete it: the next run scans the image folders again and writes it anew."
            data = load_pickle(preprocessed, what="preprocessed ImageNet list", fix=fix)
            if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "test")):
                raise DataError(f"{preprocessed} is not a preprocessed ImageNet list (a dict with 'train' and "
                                f"'test' lists). {fix}")
            train, test = data["train"], data["test"]
            # a cache written before the data folder was moved lists paths that are gone
            if all(osp.isfile(split[0].impath) for split in (train, test) if split):
                return train, test, test
            logger.warning("%s lists images that no longer exist: rebuilding it", preprocessed)

        for rel in self.annotation_files:
            self.require(rel)
        self.require("images", "train")
        self.require("images", "val")
        classnames = read_classnames(self.path("classnames.txt"))
        train = read_wnid_folders(self.path("images", "train"), classnames, self.datum, relabel=False)
        test = read_wnid_folders(self.path("images", "val"), classnames, self.datum, relabel=False)
        write_pickle_atomic({"train": train, "test": test}, preprocessed)
        logger.info("Saved preprocessed ImageNet lists to %s", preprocessed)
        return train, test, test
