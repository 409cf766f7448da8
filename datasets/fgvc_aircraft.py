"""FGVC-Aircraft 2013b (CoOp layout: ``fgvc_aircraft/images/<id>.jpg`` + list files).

The split is the official one given by the list files; there is no split JSON.
"""
import os.path as osp


from .common import CoOpDataset, read_lines


class FGVCAircraft(CoOpDataset):
    """100 aircraft variants; label = line index in ``variants.txt``."""

    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    annotation_files = (
        "variants.txt",
        "images_variant_train.txt",
        "images_variant_val.txt",
        "images_variant_test.txt",
    )

    def build_split(self):
        classnames = read_lines(self.path("variants.txt"))
        cname2lab = {c: i for i, c in enumerate(classnames)}

        def read(split):
            items = []
            # lines "<image id> <variant name, may contain spaces>"
            for line in read_lines(self.path(f"images_variant_{split}.txt")):
                imid, _, classname = line.partition(" ")
                impath = osp.join(self.image_dir, imid + ".jpg")
                items.append(self.datum(impath, cname2lab[classname.strip()], classname.strip()))
            return items

        return read("train"), read("val"), read("test")
