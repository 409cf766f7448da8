"""UCF101 middle frames (CoOp layout: ``ucf101/UCF-101-midframes/<Camel_Case>/v_*.jpg``)."""
import os.path as osp
import re


from .common import CoOpDataset, read_lines, split_trainval


def ucf_classname(action):
    """``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup`` (also the name of the frame folder)."""
    return "_".join(re.findall(r"[A-Z][^A-Z]*", action)) or action


class UCF101(CoOpDataset):
    """101 actions, one middle frame per video; train/val = 80/20 of ``trainlist01``."""

    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    annotation_files = (
        "ucfTrainTestlist/classInd.txt",
        "ucfTrainTestlist/trainlist01.txt",
        "ucfTrainTestlist/testlist01.txt",
    )

    def build_split(self):
        cname2lab = {}
        for line in read_lines(self.path("ucfTrainTestlist/classInd.txt")):  # "1 ApplyEyeMakeup"
            label, action = line.split()[:2]
            cname2lab[action] = int(label) - 1

        def read(rel):
            items = []
            # "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1" (train) or without the label (test)
            for line in read_lines(self.path(rel)):
                action, filename = line.split()[0].split("/")
                classname = ucf_classname(action)
                impath = osp.join(self.image_dir, classname, osp.splitext(filename)[0] + ".jpg")
                items.append(self.datum(impath, cname2lab[action], classname))
            return items

        train, val = split_trainval(read("ucfTrainTestlist/trainlist01.txt"))
        return train, val, read("ucfTrainTestlist/testlist01.txt")
