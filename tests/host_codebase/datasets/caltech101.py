from dassl.data.datasets import DATASET_REGISTRY

from .coop_format import CoOpFormatDataset, class_folders, split_per_class


@DATASET_REGISTRY.register()
class Caltech101(CoOpFormatDataset):
    """`caltech-101/101_ObjectCategories/<class>/`, without the background and the duplicate faces."""

    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"

    def build_split(self):
        return split_per_class(class_folders(
            self.image_dir, ignored=("BACKGROUND_Google", "Faces_easy"),
            rename={"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}))
