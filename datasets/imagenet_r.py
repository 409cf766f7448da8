"""ImageNet-R (``imagenet-rendition/imagenet-r/<wnid>/`` + ``classnames.txt``). Test only."""

from .common import EvalOnlyDataset


class ImageNetR(EvalOnlyDataset):
    """Renditions (art, cartoons, ...) of 200 ImageNet classes, labelled 0..199."""

    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
