"""Caltech-101 (CoOp layout: ``caltech-101/101_ObjectCategories/<class>/``)."""

from .common import FolderPerClassDataset


class Caltech101(FolderPerClassDataset):
    """101 object classes; the background and the duplicate face class are left out."""

    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    ignored_folders = ("BACKGROUND_Google", "Faces_easy")
    new_classnames = {
        "airplanes": "airplane",
        "Faces": "face",
        "Leopards": "leopard",
        "Motorbikes": "motorbike",
    }
