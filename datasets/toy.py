"""ToyShapes: a small generated dataset for the demo (no download, 32x32 images).

On first use the loader *draws* its images with PIL into ``<DATASET.ROOT>/toy_shapes/images/
<class_folder>/<split>_<nnn>.png`` (70 per class: 40 train, 10 val, 20 test). From then on it
behaves like every other loader of this package: the split is built from that raw layout and
written to ``split_zhou_ToyShapes.json``, few-shot subsets are cached in ``split_fewshot/``,
and ``DATASET.SUBSAMPLE_CLASSES`` selects all / base / new classes.

The 10 classes are light shapes (circle, square, triangle, stripes, cross) on a background
of the class colour, at a random position, size and angle, with colour jitter and pixel noise.
Every class has a background colour of its own, so that even a random-weight tiny ViT gives
features that separate them; the base classes (labels 0-4) and the novel classes (5-9) use the
same five shapes with different colours ("red circle" is base, "brown circle" novel).

Images depend only on a fixed internal seed (`GENERATOR_SEED`), never on ``cfg.SEED``: every
run and every seed sees the same files. Generation writes into a temporary folder next to
``toy_shapes`` and renames it into place when complete, so an interrupted first run leaves
no half dataset behind (the next run starts over), and concurrent first runs are safe.
"""
from __future__ import annotations

import json
import logging
import math
import os
import os.path as osp
import shutil
import tempfile

import numpy as np
from dassl.data.datasets import DATASET_REGISTRY
from PIL import Image, ImageDraw

from .common import CoOpDataset, list_images

logger = logging.getLogger(__name__)

GENERATOR_SEED = 20240607
GENERATOR_VERSION = 1
MANIFEST = "toy_shapes.json"
IMAGE_SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn at 4x and reduced, for anti-aliased edges
SPLIT_SIZES = (("train", 40), ("val", 10), ("test", 20))

COLOURS = {  # RGB of the background
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 200),
    "orange": (245, 140, 20),
    "cyan": (40, 210, 220),
    "pink": (250, 130, 190),
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
}
# (colour, shape) in label order: the first five are the base classes, the last five the
# novel ones; every colour occurs once, every shape once in each half.
CLASSES = (
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "stripes"),
    ("purple", "cross"),
    ("orange", "square"),
    ("cyan", "triangle"),
    ("pink", "stripes"),
    ("gray", "cross"),
    ("brown", "circle"),
)
CLASSNAMES = tuple(f"{colour} {shape}" for colour, shape in CLASSES)


def class_folder(label: int) -> str:
    """Folder of a class: label-prefixed so that sorted folders follow label order."""
    return f"{label:02d}_{CLASSNAMES[label].replace(' ', '_')}"


# ----------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------
def _rotate(points, centre, angle):
    cx, cy = centre
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in points]


def _jitter_colour(rgb, rng):
    """`rgb` with a random brightness and a little per-channel noise."""
    scale = rng.uniform(0.75, 1.15)
    return tuple(int(np.clip(v * scale + rng.normal(0, 12), 0, 255)) for v in rgb)


def _draw_shape(draw, shape, colour, rng, size):
    """Draw one shape at a random position / size / angle on a `size` x `size` canvas."""
    radius = rng.uniform(0.22, 0.36) * size
    margin = radius * 0.9
    centre = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        rx, ry = radius * rng.uniform(0.9, 1.1), radius * rng.uniform(0.9, 1.1)
        draw.ellipse([centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry], fill=colour)
    elif shape == "square":
        h = radius * 0.85
        draw.polygon(_rotate([(-h, -h), (h, -h), (h, h), (-h, h)], centre, angle), fill=colour)
    elif shape == "triangle":
        corners = [(radius * math.cos(a), radius * math.sin(a))
                   for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(_rotate(corners, centre, angle), fill=colour)
    elif shape == "cross":
        w, h = radius * 0.32, radius
        for bar in ([(-h, -w), (h, -w), (h, w), (-h, w)], [(-w, -h), (w, -h), (w, h), (-w, h)]):
            draw.polygon(_rotate(bar, centre, angle), fill=colour)
    elif shape == "stripes":  # parallel bars across the whole image
        period = size * rng.uniform(0.22, 0.3)
        offset = rng.uniform(0, period)
        half = size * 1.5
        centre = (size / 2, size / 2)
        for k in range(-6, 7):
            x0 = k * period + offset
            bar = [(x0, -half), (x0 + period * 0.45, -half), (x0 + period * 0.45, half), (x0, half)]
            draw.polygon(_rotate(bar, centre, angle), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw_image(label: int, split_index: int, index: int) -> Image.Image:
    """The image `index` of split `split_index` of class `label` (fully determined by them)."""
    rng = np.random.default_rng([GENERATOR_SEED, label, split_index, index])
    colour, shape = CLASSES[label]
    big = IMAGE_SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), _jitter_colour(COLOURS[colour], rng))
    foreground = tuple(int(v) for v in rng.integers(200, 256, size=3))  # light, any tint
    _draw_shape(ImageDraw.Draw(canvas), shape, foreground, rng, big)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    pixels = np.asarray(small, dtype=np.float32) + rng.normal(0, 8, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------
# generation on disk
# ----------------------------------------------------------------------------------------
def _manifest():
    return {"name": "ToyShapes", "version": GENERATOR_VERSION, "seed": GENERATOR_SEED,
            "image_size": IMAGE_SIZE, "classnames": list(CLASSNAMES),
            "splits": dict(SPLIT_SIZES)}


def _write_images(folder: str) -> int:
    count = 0
    for label in range(len(CLASSES)):
        class_dir = osp.join(folder, "images", class_folder(label))
        os.makedirs(class_dir)
        for split_index, (split, n) in enumerate(SPLIT_SIZES):
            for i in range(n):
                draw_image(label, split_index, i).save(osp.join(class_dir, f"{split}_{i:03d}.png"),
                                                       optimize=False)
                count += 1
    with open(osp.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(_manifest(), f, indent=2)
    return count


def ensure_toy_shapes(dataset_dir: str) -> str:
    """Generate the ToyShapes images in `dataset_dir` unless they are already there.

    The images are written to a temporary sibling folder which is renamed to `dataset_dir`
    once complete. A folder at `dataset_dir` without the generator's manifest is not touched
    (an error says so).
    """
    dataset_dir = osp.abspath(dataset_dir)
    manifest = osp.join(dataset_dir, MANIFEST)
    if osp.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            found = json.load(f)
        if found.get("version") != GENERATOR_VERSION or found.get("seed") != GENERATOR_SEED:
            raise RuntimeError(f"ToyShapes: {dataset_dir} was generated by another version of the "
                               f"generator ({found.get('version')}, seed {found.get('seed')}); "
                               "delete it to regenerate.")
        return dataset_dir
    if osp.exists(dataset_dir):
        raise FileExistsError(f"ToyShapes: {dataset_dir} exists but has no {MANIFEST}: it was not "
                              "generated by this loader (or a copy was damaged). Delete it and the "
                              "images are generated again.")
    parent = osp.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{osp.basename(dataset_dir)}.tmp-", dir=parent)
    try:
        n = _write_images(tmp)
        try:
            os.rename(tmp, dataset_dir)
        except OSError:
            if not osp.isfile(manifest):  # not a concurrent generator that finished first
                raise
            logger.info("ToyShapes: %s was generated by another process meanwhile", dataset_dir)
        else:
            logger.info("ToyShapes: generated %d images of %d classes in %s", n, len(CLASSES),
                        dataset_dir)
    finally:
        if osp.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return dataset_dir


# ----------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------
@DATASET_REGISTRY.register()
class ToyShapes(CoOpDataset):
    """10 coloured-shape classes at 32x32 (5 base + 5 novel), generated on first use."""

    dataset_dir = "toy_shapes"
    image_subdir = "images"
    split_file = "split_zhou_ToyShapes.json"

    def __init__(self, cfg):
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        ensure_toy_shapes(osp.join(root, type(self).dataset_dir))
        super().__init__(cfg)

    def build_split(self):
        """``images/<label>_<name>/<split>_<nnn>.png``: the split is in the file name."""
        splits = {name: [] for name, _ in SPLIT_SIZES}
        for label, classname in enumerate(CLASSNAMES):
            class_dir = osp.join(self.image_dir, class_folder(label))
            for imname in list_images(class_dir):
                split = imname.split("_", 1)[0]
                if split in splits:
                    splits[split].append(self.datum(osp.join(class_dir, imname), label, classname))
        return splits["train"], splits["val"], splits["test"]
