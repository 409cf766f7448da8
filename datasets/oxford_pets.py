"""Oxford-IIIT Pets (CoOp layout: ``oxford_pets/images``, ``oxford_pets/annotations``)."""
import os.path as osp


from .common import CoOpDataset, read_lines, split_trainval


class OxfordPets(CoOpDataset):
    """37 breeds; train/val = 80/20 of the official trainval list, test = the test list."""

    dataset_dir = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"
    annotation_files = ("annotations/trainval.txt", "annotations/test.txt")

    def read_annotations(self, rel):
        """Lines ``<image> <class 1-based> <species> <breed id>``; class = breed, lower case."""
        items = []
        for line in read_lines(self.path(rel)):
            imname, label = line.split()[:2]
            breed = "_".join(imname.split("_")[:-1]).lower()
            items.append(self.datum(osp.join(self.image_dir, imname + ".jpg"), int(label) - 1, breed))
        return items

    def build_split(self):
        trainval = self.read_annotations("annotations/trainval.txt")
        test = self.read_annotations("annotations/test.txt")
        train, val = split_trainval(trainval)
        return train, val, test
