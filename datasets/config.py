"""The dataset keys this project adds to Dassl's config (the trainers' other keys: trainers/config.py).

`promptkd check` builds a dataset with them alone; `promptkd.trainers.config.extend_cfg` adds
them with the rest.
"""
from yacs.config import CfgNode as CN


def extend_data_cfg(cfg):
    # all | base | new: base = labels [0, ceil(C/2)), new = the rest, relabelled from 0.
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    # An image that cannot be read stops the run with its path (False), or is skipped, counted
    # and listed in the log at the end of the epoch / evaluation (True). Off by default so
    # results are never silently computed on fewer images.
    cfg.DATALOADER.SKIP_UNREADABLE = False
    # With SKIP_UNREADABLE True: more than this share of a split's images unreadable (0.01 = 1%)
    # stops the run, naming the share and the first files; 1.0 never stops.
    cfg.DATALOADER.MAX_UNREADABLE_SHARE = 0.01
    # How a test image is fitted to INPUT.SIZE: "shortest" (Dassl's and OpenAI CLIP's: resize the
    # shorter side, centre-crop) or "squash" (resize the whole image to INPUT.SIZE, as open_clip
    # does for e.g. DFN5B's ViT-H/14). Checked against the backbone's own preprocessing.
    cfg.INPUT.RESIZE_MODE = "shortest"
    # How training images are decoded and augmented: "pil" (Dassl's: PIL decode, PIL transforms) or
    # "torchvision" (decode_jpeg + the transforms v2 on tensors: the same crops from the same random
    # numbers, pixels within a few levels of 255; 1.3-1.6x PIL's images/s per core; docs/gpu.md).
    cfg.INPUT.DECODER = "pil"
    # ImageFolder (your own data, configs/datasets/folder.yaml, DATASETS.md#imagefolder).
    cfg.DATASET.FOLDER = CN()
    cfg.DATASET.FOLDER.DIR = ""  # the dataset's folder under DATASET.ROOT
    # train / val / test ratios per class when the folder has no train/ and test/ folders
    cfg.DATASET.FOLDER.SPLIT = (0.5, 0.2, 0.3)
    cfg.DATASET.FOLDER.VAL_RATIO = 0.2  # with train/ and test/ but no val/: this share of train is val
    cfg.DATASET.FOLDER.SPLIT_SEED = 1  # seed of the split (independent of the run's --seed)
