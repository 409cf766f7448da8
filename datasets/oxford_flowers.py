"""Oxford 102 Flowers (CoOp layout: ``oxford_flowers/jpg/image_%05d.jpg``)."""
import os.path as osp

from scipy.io import loadmat

from promptkd.io import load_json

from .common import CoOpDataset, docs_anchor, split_by_percentage


class OxfordFlowers(CoOpDataset):
    """102 flower species, split 50/20/30 per class."""

    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    annotation_files = ("imagelabels.mat", "cat_to_name.json")

    def build_split(self):
        # imagelabels.mat["labels"]: the 1-based class of image_00001.jpg, image_00002.jpg, ...
        labels = loadmat(self.path("imagelabels.mat"))["labels"].ravel()
        cat_to_name = load_json(self.path("cat_to_name.json"), what="OxfordFlowers class-name file (JSON)",
                                fix=f"Download it again as described in {docs_anchor(self.name)}.")
        by_label = {}
        for i, label in enumerate(labels):
            impath = osp.join(self.image_dir, f"image_{i + 1:05d}.jpg")
            by_label.setdefault(int(label), []).append(impath)
        groups = [
            (label - 1, cat_to_name[str(label)], impaths)
            for label, impaths in sorted(by_label.items())
        ]
        return [self.datums(s) for s in split_by_percentage(groups)]
