"""Stanford Cars (CoOp layout: ``stanford_cars/{cars_train,cars_test,devkit}``).

Split-JSON paths are relative to the dataset folder itself (``cars_train/00001.jpg``).
"""

from scipy.io import loadmat

from .common import CoOpDataset, mat_int, mat_str, split_trainval


class StanfordCars(CoOpDataset):
    """196 car models; train/val = 80/20 of the official train set, test = the test set."""

    dataset_dir = "stanford_cars"
    split_file = "split_zhou_StanfordCars.json"
    annotation_files = (
        "devkit/cars_meta.mat",
        "devkit/cars_train_annos.mat",
        "cars_test_annos_withlabels.mat",
    )

    @staticmethod
    def classname(meta_name):
        """CoOp's class name: the model year moved to the front ("2012 Audi TTS Coupe")."""
        words = meta_name.split(" ")
        return " ".join([words[-1]] + words[:-1])

    def read_annotations(self, image_folder, anno_rel):
        meta = loadmat(self.path("devkit/cars_meta.mat"))["class_names"].ravel()
        annos = loadmat(self.path(anno_rel))["annotations"].ravel()
        items = []
        for anno in annos:
            label = mat_int(anno["class"]) - 1
            impath = self.path(image_folder, mat_str(anno["fname"]))
            items.append(self.datum(impath, label, self.classname(mat_str(meta[label]))))
        return items

    def build_split(self):
        trainval = self.read_annotations("cars_train", "devkit/cars_train_annos.mat")
        test = self.read_annotations("cars_test", "cars_test_annos_withlabels.mat")
        train, val = split_trainval(trainval)
        return train, val, test
