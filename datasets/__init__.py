"""CoOp-format dataset loaders for Dassl.

Importing this package registers the 15 datasets of the CLIP prompt-learning benchmarks in
Dassl's ``DATASET_REGISTRY`` under CoOp's names, so ``DATASET.NAME`` (set by
``configs/datasets/<name>.yaml``) selects one and ``dassl.data.datasets.build_dataset(cfg)``
builds it:

- base-to-novel / few-shot: ImageNet, Caltech101, OxfordPets, StanfordCars, OxfordFlowers,
  Food101, FGVCAircraft, SUN397, DescribableTextures, EuroSAT, UCF101;
- domain generalisation (test only): ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR;
- your own data: ImageFolder (a plain folder tree, ``folder.py``).

Each loader reads the folder a CoOp user already has under ``DATASET.ROOT`` (layouts and
download sources in ``DATASETS.md``), reuses or writes CoOp's ``split_zhou_<Name>.json``, caches
few-shot subsets in ``split_fewshot/shot_{K}-seed_{S}.pkl`` and honours
``DATASET.SUBSAMPLE_CLASSES`` (all / base / new). The shared flow lives in ``common.py``;
loaders never depend on which trainer runs.
"""
from . import (  # noqa: F401  (imported for their registration side effect)
    caltech101,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)
from . import toy  # noqa: F401  (ToyShapes: generated demo data, see toy.py)
from . import folder  # noqa: F401  (ImageFolder: a user's own folder tree, see folder.py)
from .common import CoOpDataset, subsample_classes  # noqa: F401

REGISTERED_NAMES = (
    "ImageNet",
    "Caltech101",
    "OxfordPets",
    "StanfordCars",
    "OxfordFlowers",
    "Food101",
    "FGVCAircraft",
    "SUN397",
    "DescribableTextures",
    "EuroSAT",
    "UCF101",
    "ImageNetV2",
    "ImageNetSketch",
    "ImageNetA",
    "ImageNetR",
)
