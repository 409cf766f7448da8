"""ImageNet-Sketch (``imagenet-sketch/images/<wnid>/`` + ImageNet's ``classnames.txt``). Test only."""

from .common import EvalOnlyDataset


class ImageNetSketch(EvalOnlyDataset):
    """Sketches of the 1000 ImageNet classes."""

    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
