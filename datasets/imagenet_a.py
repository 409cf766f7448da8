"""ImageNet-A (``imagenet-adversarial/imagenet-a/<wnid>/`` + ``classnames.txt``). Test only."""

from .common import EvalOnlyDataset


class ImageNetA(EvalOnlyDataset):
    """Natural adversarial examples of 200 ImageNet classes, labelled 0..199."""

    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
