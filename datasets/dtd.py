"""Describable Textures (CoOp layout: ``dtd/images/<class>/``)."""

from .common import FolderPerClassDataset


class DescribableTextures(FolderPerClassDataset):
    """47 texture classes, split 50/20/30 per class."""

    dataset_dir = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"
