import os

from dassl.data.datasets import DATASET_REGISTRY

from .coop_format import CoOpFormatDataset, split_per_class


@DATASET_REGISTRY.register()
class OxfordPets(CoOpFormatDataset):
    """`oxford_pets/images/<Breed>_<n>.jpg` with `annotations/{trainval,test}.txt` (lines:
    image, class id from 1, species, breed id); train / val = 80 / 20 of trainval."""

    dataset_dir = "oxford_pets"
    image_dir = "images"

    def read(self, name):
        rows = []
        with open(os.path.join(self.dataset_dir, "annotations", name), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    image, class_id = line.split()[:2]
                    breed = image.rsplit("_", 1)[0].lower()
                    rows.append((int(class_id) - 1, breed, image + ".jpg"))
        return rows

    def build_split(self):
        by_class = {}
        for label, breed, path in self.read("trainval.txt"):
            by_class.setdefault((label, breed), []).append(path)
        train, val, _ = split_per_class(by_class, p_train=0.8, p_val=0.2)
        test = [(path, label, breed) for label, breed, path in self.read("test.txt")]
        return train, val, test
