from dassl.data.datasets import DATASET_REGISTRY

from .coop_format import CoOpFormatDataset, class_folders, split_per_class


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpFormatDataset):
    """`dtd/images/<texture>/`, split 50 / 20 / 30 per class."""

    dataset_dir = "dtd"
    image_dir = "images"

    def build_split(self):
        return split_per_class(class_folders(self.image_dir))
