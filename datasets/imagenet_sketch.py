"""ImageNet-Sketch (``imagenet-sketch/images/<wnid>/`` + ImageNet's ``classnames.txt``). Test only."""
from dassl.data.datasets import DATASET_REGISTRY

from .common import EvalOnlyDataset


@DATASET_REGISTRY.register()
class ImageNetSketch(EvalOnlyDataset):
    """Sketches of the 1000 ImageNet classes."""

    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
