"""Tiny fake copies of the 15 CoOp datasets, in their real on-disk raw formats.

Each `make_<name>(root, n_classes=..., per_class=...)` writes ``<root>/<dataset folder>``
exactly as a user would arrange the real download (see DATASETS.md): real small image files
(PIL), real ``.mat`` files (scipy.io.savemat, read back by scipy.io.loadmat the way the loaders
read the real ones) and the text annotation files. No split JSON is written: the loaders must
build it from the raw layout. The function names follow ``configs/datasets/<name>.yaml``.

Defaults give 5 classes (an odd count: base = 3, new = 2) with enough images per class for
the 50/20/30 and 80/20 splits and for a 2-shot subset. Everything is deterministic.

Usable from any test: ``from tests.fake_data import make_oxford_pets`` then
``make_oxford_pets(tmp_path)`` and ``DATASET.ROOT = str(tmp_path)``.
"""
import json
import os
import os.path as osp

import numpy as np
from PIL import Image
from scipy.io import savemat

IMAGE_SIZE = 16

# Real names, so the fakes exercise the real renaming rules.
CALTECH101_CLASSES = ["airplanes", "Faces", "Leopards", "Motorbikes", "accordion", "anchor",
                      "ant", "barrel", "bass", "beaver"]
CALTECH101_IGNORED = ["BACKGROUND_Google", "Faces_easy"]
OXFORD_PETS_BREEDS = ["Abyssinian", "american_bulldog", "Bengal", "basset_hound", "British_Shorthair",
                      "beagle", "Egyptian_Mau", "boxer"]
CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012",
             "BMW M3 Coupe 2012", "Chevrolet Corvette ZR1 2012", "Dodge Caliber Wagon 2007",
             "Ford F-150 Regular Cab 2012", "Tesla Model S Sedan 2012"]
FLOWER_NAMES = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                "english marigold", "tiger lily", "moon orchid", "bird of paradise"]
FOOD101_CLASSES = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare",
                   "beet_salad", "beignets", "bibimbap"]
AIRCRAFT_VARIANTS = ["707-320", "Boeing 717", "A300B4", "F/A-18", "Tu-134", "Cessna 172",
                     "DHC-1", "Falcon 2000"]
# (ClassName.txt entry, expected class name)
SUN397_CLASSES = [("/a/abbey", "abbey"), ("/b/bakery/shop", "shop bakery"),
                  ("/a/apartment_building/outdoor", "outdoor apartment_building"),
                  ("/b/bedroom", "bedroom"), ("/c/church/indoor", "indoor church"),
                  ("/d/dining_room", "dining_room"), ("/f/forest/broadleaf", "broadleaf forest"),
                  ("/k/kitchen", "kitchen")]
DTD_CLASSES = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed",
               "cracked"]
EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]
# (classInd.txt action, expected class name = frame folder)
UCF101_CLASSES = [("ApplyEyeMakeup", "Apply_Eye_Makeup"), ("Archery", "Archery"),
                  ("BabyCrawling", "Baby_Crawling"), ("YoYo", "Yo_Yo"),
                  ("PlayingDaf", "Playing_Daf"), ("TaiChi", "Tai_Chi"),
                  ("JumpRope", "Jump_Rope"), ("Skijet", "Skijet")]
IMAGENET_CLASSES = [("n01440764", "tench"), ("n01443537", "goldfish"),
                    ("n01484850", "great white shark"), ("n01491361", "tiger shark"),
                    ("n01494475", "hammerhead shark"), ("n01496331", "electric ray"),
                    ("n01498041", "stingray"), ("n01514668", "rooster"), ("n01514859", "hen"),
                    ("n01518878", "ostrich")]


def _names(base, n, prefix):
    """The first n of `base`, extended with synthetic names if more are asked for."""
    return list(base[:n]) + [f"{prefix}{i}" for i in range(len(base), n)]


def _image(path, seed):
    """A tiny real image file; the format follows the extension."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    ext = osp.splitext(path)[1].lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[ext]
    Image.fromarray(pixels).save(path, format=fmt)


def _text(path, lines):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _savemat(path, data):
    os.makedirs(osp.dirname(path), exist_ok=True)
    savemat(path, data)


def _cell_row(strings):
    """A 1xN MATLAB cell array of strings."""
    cell = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        cell[0, i] = s
    return cell


def _folder_per_class(image_dir, classes, per_class, ext=".jpg", stem="{cls}_{j:04d}"):
    for c, cls in enumerate(classes):
        for j in range(per_class):
            name = stem.format(cls=cls, j=j + 1) + ext
            _image(osp.join(image_dir, cls, name), seed=1000 * c + j)


def _imagenet_classnames(n_total):
    pairs = list(IMAGENET_CLASSES[:n_total])
    pairs += [(f"n{99000000 + i:08d}", f"class {i}") for i in range(len(pairs), n_total)]
    return pairs


def _write_classnames(path, pairs):
    _text(path, [f"{wnid} {name}" for wnid, name in pairs])


# ----------------------------------------------------------------------------------------
def make_imagenet(root, n_classes=5, per_class=4):
    """``imagenet/images/{train,val}/<wnid>/*.JPEG`` + ``imagenet/classnames.txt``."""
    d = osp.join(root, "imagenet")
    pairs = _imagenet_classnames(n_classes)
    _write_classnames(osp.join(d, "classnames.txt"), pairs)
    for c, (wnid, _) in enumerate(pairs):
        for j in range(per_class):
            _image(osp.join(d, "images", "train", wnid, f"{wnid}_{j + 1}.JPEG"), seed=c * 100 + j)
        for j in range(2):
            k = c * 2 + j + 1
            _image(osp.join(d, "images", "val", wnid, f"ILSVRC2012_val_{k:08d}.JPEG"), seed=10000 + k)


def make_caltech101(root, n_classes=5, per_class=6):
    """``caltech-101/101_ObjectCategories/<class>/image_%04d.jpg`` with the two ignored folders."""
    image_dir = osp.join(root, "caltech-101", "101_ObjectCategories")
    classes = CALTECH101_IGNORED + _names(CALTECH101_CLASSES, n_classes, "object")
    _folder_per_class(image_dir, classes, per_class, stem="image_{j:04d}")


def make_oxford_pets(root, n_classes=5, per_class=6):
    """``oxford_pets/images/<Breed>_<n>.jpg`` + ``annotations/{trainval,test}.txt``.

    Two thirds of each breed's images go to trainval, the rest to test.
    """
    d = osp.join(root, "oxford_pets")
    n_test = max(1, per_class // 3)
    trainval, test = [], []
    for c, breed in enumerate(_names(OXFORD_PETS_BREEDS, n_classes, "breed")):
        species = 1 if breed[0].isupper() else 2  # cats are capitalised in the real files
        for j in range(per_class):
            imname = f"{breed}_{j + 1}"
            _image(osp.join(d, "images", imname + ".jpg"), seed=c * 100 + j)
            line = f"{imname} {c + 1} {species} {c // 2 + 1}"
            (test if j >= per_class - n_test else trainval).append(line)
    _text(osp.join(d, "annotations", "trainval.txt"), trainval)
    _text(osp.join(d, "annotations", "test.txt"), test)


def _cars_annotations(rows):
    """The ``annotations`` struct array (1xN) of the Stanford Cars devkit."""
    dtype = [(k, object) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    annos = np.empty((1, len(rows)), dtype=dtype)
    for i, (fname, label) in enumerate(rows):
        annos[0, i] = (np.array([[0]], dtype=np.uint8), np.array([[0]], dtype=np.uint8),
                       np.array([[IMAGE_SIZE - 1]], dtype=np.uint8),
                       np.array([[IMAGE_SIZE - 1]], dtype=np.uint8),
                       np.array([[label]], dtype=np.uint8), np.array([fname]))
    return annos


def make_stanford_cars(root, n_classes=5, per_class=6):
    """``stanford_cars/{cars_train,cars_test}/%05d.jpg``, ``devkit/cars_meta.mat``,
    ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat``."""
    d = osp.join(root, "stanford_cars")
    names = _names(CAR_NAMES, n_classes, "Make Model Body 20")
    _savemat(osp.join(d, "devkit", "cars_meta.mat"), {"class_names": _cell_row(names)})
    n_test = max(1, per_class // 3)
    train_rows, test_rows = [], []
    for j in range(per_class):  # interleaved classes, like the real files
        for c in range(n_classes):
            rows, folder = (test_rows, "cars_test") if j >= per_class - n_test else (train_rows, "cars_train")
            fname = f"{len(rows) + 1:05d}.jpg"
            _image(osp.join(d, folder, fname), seed=c * 100 + j)
            rows.append((fname, c + 1))
    _savemat(osp.join(d, "devkit", "cars_train_annos.mat"), {"annotations": _cars_annotations(train_rows)})
    _savemat(osp.join(d, "cars_test_annos_withlabels.mat"), {"annotations": _cars_annotations(test_rows)})


def make_oxford_flowers(root, n_classes=5, per_class=6):
    """``oxford_flowers/jpg/image_%05d.jpg``, ``imagelabels.mat`` (1-based) and
    ``cat_to_name.json``."""
    d = osp.join(root, "oxford_flowers")
    labels = []
    for j in range(per_class):  # interleaved classes, like the real file
        for c in range(n_classes):
            labels.append(c + 1)
            _image(osp.join(d, "jpg", f"image_{len(labels):05d}.jpg"), seed=c * 100 + j)
    _savemat(osp.join(d, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    names = _names(FLOWER_NAMES, n_classes, "flower ")
    with open(osp.join(d, "cat_to_name.json"), "w", encoding="utf-8") as f:
        json.dump({str(i + 1): name for i, name in enumerate(names)}, f)


def make_food101(root, n_classes=5, per_class=6):
    """``food-101/images/<class>/<id>.jpg``."""
    classes = _names(FOOD101_CLASSES, n_classes, "dish_")
    _folder_per_class(osp.join(root, "food-101", "images"), classes, per_class, stem="{j:06d}")


def make_fgvc_aircraft(root, n_classes=5, per_class=6):
    """``fgvc_aircraft/images/<id>.jpg``, ``variants.txt`` and
    ``images_variant_{train,val,test}.txt`` (per_class split evenly over the three)."""
    d = osp.join(root, "fgvc_aircraft")
    variants = _names(AIRCRAFT_VARIANTS, n_classes, "Variant ")
    _text(osp.join(d, "variants.txt"), variants)
    lines = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for c, variant in enumerate(variants):
        for j in range(per_class):
            image_id += 1
            _image(osp.join(d, "images", f"{image_id:07d}.jpg"), seed=c * 100 + j)
            lines[("train", "val", "test")[j % 3]].append(f"{image_id:07d} {variant}")
    for split, split_lines in lines.items():
        _text(osp.join(d, f"images_variant_{split}.txt"), split_lines)


def make_sun397(root, n_classes=5, per_class=6):
    """``sun397/SUN397/<letter>/<class>[/<sub>]/sun_*.jpg`` + ``ClassName.txt``,
    ``Training_01.txt`` and ``Testing_01.txt`` (two thirds / one third per class)."""
    d = osp.join(root, "sun397")
    classes = [p for p, _ in SUN397_CLASSES[:n_classes]]
    classes += [f"/z/zone{i}" for i in range(len(classes), n_classes)]
    _text(osp.join(d, "ClassName.txt"), classes)
    n_test = max(1, per_class // 3)
    training, testing = [], []
    for c, cls in enumerate(classes):
        for j in range(per_class):
            rel = f"{cls}/sun_{c:03d}{j:04d}.jpg"
            _image(osp.join(d, "SUN397", *rel.strip("/").split("/")), seed=c * 100 + j)
            (testing if j >= per_class - n_test else training).append(rel)
    _text(osp.join(d, "Training_01.txt"), training)
    _text(osp.join(d, "Testing_01.txt"), testing)


def make_dtd(root, n_classes=5, per_class=6):
    """``dtd/images/<class>/<class>_%04d.jpg``."""
    _folder_per_class(osp.join(root, "dtd", "images"), _names(DTD_CLASSES, n_classes, "texture"),
                      per_class)


def make_eurosat(root, n_classes=5, per_class=6):
    """``eurosat/2750/<Class>/<Class>_<n>.jpg`` (at most the 10 real classes)."""
    classes = EUROSAT_CLASSES[:n_classes]
    _folder_per_class(osp.join(root, "eurosat", "2750"), classes, per_class, stem="{cls}_{j}")


def make_ucf101(root, n_classes=5, per_class=6):
    """``ucf101/UCF-101-midframes/<Camel_Case>/v_*.jpg`` + ``ucfTrainTestlist/*.txt``."""
    d = osp.join(root, "ucf101")
    classes = list(UCF101_CLASSES[:n_classes])
    classes += [(f"Action{chr(65 + i)}x", f"Action{chr(65 + i)}x") for i in range(len(classes), n_classes)]
    n_test = max(1, per_class // 3)
    class_ind, train, test = [], [], []
    for c, (action, folder) in enumerate(classes):
        class_ind.append(f"{c + 1} {action}")
        for j in range(per_class):
            stem = f"v_{action}_g{j + 1:02d}_c01"
            _image(osp.join(d, "UCF-101-midframes", folder, stem + ".jpg"), seed=c * 100 + j)
            if j >= per_class - n_test:
                test.append(f"{action}/{stem}.avi")
            else:
                train.append(f"{action}/{stem}.avi {c + 1}")
    _text(osp.join(d, "ucfTrainTestlist", "classInd.txt"), class_ind)
    _text(osp.join(d, "ucfTrainTestlist", "trainlist01.txt"), train)
    _text(osp.join(d, "ucfTrainTestlist", "testlist01.txt"), test)


def make_imagenetv2(root, n_classes=5, per_class=3):
    """``imagenetv2/imagenetv2-matched-frequency-format-val/<0..n-1>/*.jpeg`` + classnames.txt."""
    d = osp.join(root, "imagenetv2")
    _write_classnames(osp.join(d, "classnames.txt"), _imagenet_classnames(n_classes))
    for c in range(n_classes):
        for j in range(per_class):
            _image(osp.join(d, "imagenetv2-matched-frequency-format-val", str(c), f"{c:03d}{j:037x}.jpeg"),
                   seed=c * 100 + j)


def make_imagenet_sketch(root, n_classes=5, per_class=3):
    """``imagenet-sketch/images/<wnid>/sketch_<n>.JPEG`` + classnames.txt."""
    d = osp.join(root, "imagenet-sketch")
    pairs = _imagenet_classnames(n_classes)
    _write_classnames(osp.join(d, "classnames.txt"), pairs)
    _folder_per_class(osp.join(d, "images"), [w for w, _ in pairs], per_class, ext=".JPEG",
                      stem="sketch_{j}")


def _imagenet_subset(d, image_folder, n_classes, per_class, prefix):
    """A 200-class-style subset: classnames.txt lists more wnids than there are folders
    (every third one is missing), plus the README.txt file the real archives carry."""
    pairs = _imagenet_classnames(n_classes + (n_classes + 1) // 2)
    present = [w for i, (w, _) in enumerate(pairs) if i % 3 != 1][:n_classes]
    _write_classnames(osp.join(d, "classnames.txt"), pairs)
    _folder_per_class(osp.join(d, image_folder), present, per_class, stem=prefix + "_{j}")
    _text(osp.join(d, image_folder, "README.txt"), ["fake subset"])


def make_imagenet_a(root, n_classes=5, per_class=3):
    """``imagenet-adversarial/imagenet-a/<wnid>/*.jpg`` for a subset of classnames.txt."""
    _imagenet_subset(osp.join(root, "imagenet-adversarial"), "imagenet-a", n_classes, per_class, "adv")


def make_imagenet_r(root, n_classes=5, per_class=3):
    """``imagenet-rendition/imagenet-r/<wnid>/*.jpg`` for a subset of classnames.txt."""
    _imagenet_subset(osp.join(root, "imagenet-rendition"), "imagenet-r", n_classes, per_class, "art")


MAKERS = {
    "imagenet": make_imagenet,
    "caltech101": make_caltech101,
    "oxford_pets": make_oxford_pets,
    "stanford_cars": make_stanford_cars,
    "oxford_flowers": make_oxford_flowers,
    "food101": make_food101,
    "fgvc_aircraft": make_fgvc_aircraft,
    "sun397": make_sun397,
    "dtd": make_dtd,
    "eurosat": make_eurosat,
    "ucf101": make_ucf101,
    "imagenetv2": make_imagenetv2,
    "imagenet_sketch": make_imagenet_sketch,
    "imagenet_a": make_imagenet_a,
    "imagenet_r": make_imagenet_r,
}


def make_all(root):
    """All 15 fake datasets under `root` (with the defaults)."""
    for make in MAKERS.values():
        make(root)
