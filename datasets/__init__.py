"""CoOp-format dataset loaders for Dassl.

The 15 datasets of the CLIP prompt-learning benchmarks under CoOp's names, so ``DATASET.NAME``
(set by ``configs/datasets/<name>.yaml``) selects one and ``dassl.data.datasets.build_dataset(cfg)``
builds it:

- base-to-novel / few-shot: ImageNet, Caltech101, OxfordPets, StanfordCars, OxfordFlowers,
  Food101, FGVCAircraft, SUN397, DescribableTextures, EuroSAT, UCF101;
- domain generalisation (test only): ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR;
- your own data: ImageFolder (a plain folder tree, ``folder.py``); the demo's ToyShapes (``toy.py``).

Importing this package registers nothing. ``register()`` puts each loader in Dassl's
``DATASET_REGISTRY`` under its name where that name is free: in a host codebase (CoOp, PromptSRC
and their forks) that registered its own loaders first, the host's serve the datasets it has and
ours only fill the names it lacks (``promptkd.trainers.plugin``).

Each loader reads the folder a CoOp user already has under ``DATASET.ROOT`` (layouts and
download sources in ``DATASETS.md``), reuses or writes CoOp's ``split_zhou_<Name>.json``, caches
few-shot subsets in ``split_fewshot/shot_{K}-seed_{S}.pkl`` and honours
``DATASET.SUBSAMPLE_CLASSES`` (all / base / new). The shared flow lives in ``common.py``;
loaders never depend on which trainer runs.

    common         CoOpDataset: the shared flow (splits, few-shot subsets, class subsets)
    config         the DATASET.* keys this package adds
    check          `promptkd check`: every split's images are there and readable
    folder         ImageFolder: a plain folder tree of your own
    toy            ToyShapes: the demo's toy world as a dataset
    imagenet       ImageNet-1k
    caltech101     Caltech101
    oxford_pets    OxfordPets
    stanford_cars  StanfordCars
    oxford_flowers  OxfordFlowers
    food101        Food101
    fgvc_aircraft  FGVCAircraft
    sun397         SUN397
    dtd            DescribableTextures
    eurosat        EuroSAT
    ucf101         UCF101
    imagenetv2     ImageNetV2
    imagenet_sketch  ImageNetSketch
    imagenet_a     ImageNetA
    imagenet_r     ImageNetR
"""
from .caltech101 import Caltech101
from .common import CoOpDataset, subsample_classes  # noqa: F401
from .dtd import DescribableTextures
from .eurosat import EuroSAT
from .fgvc_aircraft import FGVCAircraft
from .folder import ImageFolder
from .food101 import Food101
from .imagenet import ImageNet
from .imagenet_a import ImageNetA
from .imagenet_r import ImageNetR
from .imagenet_sketch import ImageNetSketch
from .imagenetv2 import ImageNetV2
from .oxford_flowers import OxfordFlowers
from .oxford_pets import OxfordPets
from .stanford_cars import StanfordCars
from .sun397 import SUN397
from .toy import ToyShapes
from .ucf101 import UCF101

#: The benchmarks' loaders, under CoOp's names.
BENCHMARKS = (ImageNet, Caltech101, OxfordPets, StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397,
              DescribableTextures, EuroSAT, UCF101, ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR)
#: Every loader of this package (the benchmarks, ImageFolder, the demo's ToyShapes).
LOADERS = BENCHMARKS + (ImageFolder, ToyShapes)
REGISTERED_NAMES = tuple(cls.__name__ for cls in BENCHMARKS)


def register(registry=None) -> dict:
    """Register each loader whose name is free in Dassl's DATASET_REGISTRY (or `registry`).

    Returns {name: "promptkd"} for the names our loaders serve and {name: "host"} for the names
    another loader already held (it is left as it is). Calling it again changes nothing."""
    if registry is None:
        from dassl.data.datasets import DATASET_REGISTRY as registry  # noqa: PLC0415, N811
    served = {}
    for cls in LOADERS:
        name = cls.__name__
        held = registry.get(name) if name in registry.registered_names() else None
        if held is None:
            registry.register(cls)
        served[name] = "promptkd" if held in (None, cls) else "host"
    return served


def serving(name: str, registry=None) -> str:
    """Which loader serves DATASET.NAME `name`: "module.Class (ours)" or "(the host's)"."""
    if registry is None:
        from dassl.data.datasets import DATASET_REGISTRY as registry  # noqa: PLC0415, N811
    if name not in registry.registered_names():
        return "no loader"
    cls = registry.get(name)
    whose = "ours" if cls in LOADERS else "the host's"
    return f"{cls.__module__}.{cls.__qualname__} ({whose})"
