"""The faster training-image path (INPUT.DECODER torchvision): torchvision's `decode_jpeg`
(libjpeg-turbo, no PIL image) and the transforms v2 on uint8 tensors, with the augmentation of
the configured PIL transform.

    read_tensor(path)            -> uint8 [3, H, W] RGB (decode_image: JPEG, PNG; PIL for the rest)
    tensor_transform(compose)    -> the v2 Compose that does what the PIL Compose does

`tensor_transform` maps each step of the PIL pipeline Dassl builds from INPUT.* to its v2
counterpart with the same parameters: RandomResizedCrop (size, scale, ratio, interpolation;
antialiased, as PIL always is), RandomHorizontalFlip, Resize, CenterCrop, ToTensor (uint8 ->
float in [0, 1]) and Normalize. The v2 steps draw their random numbers from torch's generator
in the same order and with the same calls as the PIL ones (the crop box: `uniform_` of the
area share and log-ratio, up to 10 tries, then `randint` of the corner; the flip: one `rand`),
so the same generator state gives the same crop box and flip: the views of a seeded view
(promptkd/views.py) are the same crops on either path. Pixel values differ only by the
resampling arithmetic (PIL's and torch's antialiased bicubic, both rounded to uint8) and the
JPEG decoder builds: a few levels of 255 at most (tests/test_decoder.py measures it). Any other
step is refused, naming it.
"""
from __future__ import annotations

import torch

from .errors import ConfigError

#: INPUT.DECODER values
DECODERS = ("pil", "torchvision")


def read_tensor(path: str) -> torch.Tensor:
    """The image at `path` as uint8 [3, H, W] RGB: torchvision's decoders for JPEG and PNG (the
    EXIF orientation is not applied, as PIL's Image.open does not), PIL for other formats."""
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png, read_file  # noqa: PLC0415

    data = read_file(path)
    head = bytes(data[:8].tolist())
    if head[:3] == b"\xff\xd8\xff":
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    if head == b"\x89PNG\r\n\x1a\n":
        return decode_png(data, mode=ImageReadMode.RGB)
    from PIL import Image  # noqa: PLC0415
    from torchvision.transforms.functional import pil_to_tensor  # noqa: PLC0415
    with Image.open(path) as image:
        return pil_to_tensor(image.convert("RGB"))


def tensor_transform(compose, where: str = "INPUT.TRANSFORMS"):
    """The transforms-v2 pipeline on uint8 tensors that does what `compose` (torchvision's PIL
    transforms, e.g. Dassl's train transform) does."""
    from torchvision import transforms as T  # noqa: PLC0415
    from torchvision.transforms import v2  # noqa: PLC0415

    steps = []
    for t in getattr(compose, "transforms", [compose]):
        if isinstance(t, T.RandomResizedCrop):
            steps.append(v2.RandomResizedCrop(t.size, scale=t.scale, ratio=t.ratio, interpolation=t.interpolation,
                                              antialias=True))
        elif isinstance(t, T.RandomHorizontalFlip):
            steps.append(v2.RandomHorizontalFlip(p=t.p))
        elif isinstance(t, T.Resize):
            steps.append(v2.Resize(t.size, interpolation=t.interpolation, max_size=t.max_size, antialias=True))
        elif isinstance(t, T.CenterCrop):
            steps.append(v2.CenterCrop(t.size))
        elif isinstance(t, T.ToTensor):
            steps.append(v2.ToDtype(torch.float32, scale=True))
        elif isinstance(t, T.Normalize):
            steps.append(v2.Normalize(list(t.mean), list(t.std), inplace=t.inplace))
        else:
            raise ConfigError(f"INPUT.DECODER torchvision runs random_resized_crop, random_flip, resize, center crop "
                              f"and normalize on tensors, but the transform from {where} has {type(t).__name__}: "
                              "set INPUT.DECODER pil for it.")
    return v2.Compose(steps)
