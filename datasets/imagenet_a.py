"""ImageNet-A (``imagenet-adversarial/imagenet-a/<wnid>/`` + ``classnames.txt``). Test only."""
from dassl.data.datasets import DATASET_REGISTRY

from .common import EvalOnlyDataset


@DATASET_REGISTRY.register()
class ImageNetA(EvalOnlyDataset):
    """Natural adversarial examples of 200 ImageNet classes, labelled 0..199."""

    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
