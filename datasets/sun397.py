"""SUN397 (CoOp layout: ``sun397/SUN397/<letter>/<class>[/<sub>]/`` + partition files)."""
import os.path as osp
import posixpath


from .common import CoOpDataset, read_lines, split_trainval


def sun_classname(class_path):
    """``/b/bakery/shop`` -> ``shop bakery``: the parts after the letter, reversed.

    Underscores are kept ("outdoor apartment_building"), as in CoOp's split file; the
    trainers replace them by spaces when building prompts.
    """
    parts = [p for p in class_path.strip("/").split("/") if p][1:]
    return " ".join(reversed(parts))


class SUN397(CoOpDataset):
    """397 scene classes; train/val = 80/20 of ``Training_01.txt``, test = ``Testing_01.txt``."""

    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    annotation_files = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")

    def build_split(self):
        # ClassName.txt: "/a/abbey" ... ; the line index is the label
        class_paths = [line.strip("/") for line in read_lines(self.path("ClassName.txt"))]
        cname2lab = {c: i for i, c in enumerate(class_paths)}

        def read(rel):
            items = []
            for line in read_lines(self.path(rel)):  # "/a/abbey/sun_xxx.jpg"
                relpath = line.lstrip("/")
                class_path = posixpath.dirname(relpath)
                items.append(self.datum(
                    osp.join(self.image_dir, *relpath.split("/")),
                    cname2lab[class_path],
                    sun_classname(class_path),
                ))
            return items

        train, val = split_trainval(read("Training_01.txt"))
        return train, val, read("Testing_01.txt")
