"""Food-101 (CoOp layout: ``food-101/images/<class>/``)."""

from .common import FolderPerClassDataset


class Food101(FolderPerClassDataset):
    """101 dishes, split 50/20/30 per class."""

    dataset_dir = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"
