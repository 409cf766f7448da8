"""The demo's generated world: 32x32 images of one coloured shape, classes = colour x shape.

One generator serves both sides of the demo:

* contrastive pretraining of the tiny CLIPs (`promptkd.demo.pretrain`) draws fresh image / caption
  pairs of *all* classes from it in memory ("a photo of a red circle.", as real CLIP's
  pretraining sees captions of everything);
* the Dassl dataset ``ToyShapes`` (`datasets/toy.py`) writes a fixed set of its images to disk
  in the CoOp layout, from a different random stream, so prompt tuning, distillation and
  evaluation never see a pretraining image.

6 colours x 6 shapes = 36 classes. Class order puts the 18 classes with (colour + shape) even
first, so the usual base-to-novel rule (first half of the labels = base) gives base and novel
halves in which every colour and every shape occurs three times: a novel class is a new
*combination* of attributes the base classes show. Each image varies the object's size,
position, rotation, brightness and tint, and the grey level and noise of the background.

Rendering is vectorised numpy (3x supersampled masks, box-filtered), so a batch of 256 images
takes a few milliseconds; `render` depends only on the parameters `sample` drew, and `sample`
only on the numpy generator it is given.
"""
from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32
SUPERSAMPLE = 3
VERSION = 1  # bump when rendering or the class list changes (caches key on it)

COLOURS = {  # RGB of the object
    "red": (215, 45, 40),
    "green": (45, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 215),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
RADIUS = (0.22, 0.40)  # object radius range, as a fraction of the image side


def _class_list() -> tuple[tuple[str, str], ...]:
    pairs = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    base = [p for p in pairs if (p[0] + p[1]) % 2 == 0]
    novel = [p for p in pairs if (p[0] + p[1]) % 2 == 1]
    colours = list(COLOURS)
    return tuple((colours[c], SHAPES[s]) for c, s in base + novel)


#: (colour, shape) in label order: labels 0-17 are the base classes, 18-35 the novel ones.
CLASSES = _class_list()
CLASSNAMES = tuple(f"{colour} {shape}" for colour, shape in CLASSES)
NUM_CLASSES = len(CLASSES)

#: Caption forms of pretraining; every one names colour and shape ({} = "red circle"). The first
#: is the zero-shot prompt of the demo. A model's recipe picks which forms it is trained on
#: (`promptkd.demo.pretrain.Recipe.captions`).
CAPTION_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")



def sample(rng: np.random.Generator, labels) -> dict[str, np.ndarray]:
    """Random appearance parameters of one image per label (all arrays of length N)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    radius = rng.uniform(*RADIUS, n)
    margin = radius * 0.85
    return {
        "label": labels,
        "cx": rng.uniform(margin, 1 - margin),
        "cy": rng.uniform(margin, 1 - margin),
        "radius": radius,
        "angle": rng.uniform(0, 2 * np.pi, n),
        "brightness": rng.uniform(0.75, 1.15, n),
        "tint": rng.normal(0, 12, (n, 3)),
        "background": rng.uniform(70, 185, n),
        "noise": rng.normal(0, 9, (n, IMAGE_SIZE, IMAGE_SIZE, 3)),
    }


def _masks(params: dict[str, np.ndarray]) -> np.ndarray:
    """Coverage in [0, 1] of each image's object: [N, IMAGE_SIZE, IMAGE_SIZE]."""
    n = len(params["label"])
    big = IMAGE_SIZE * SUPERSAMPLE
    grid = ((np.arange(big) + 0.5) / big).astype(np.float32)
    gx, gy = grid[None, None, :], grid[None, :, None]
    f32 = {k: params[k].astype(np.float32)[:, None, None] for k in ("cx", "cy", "radius", "angle")}
    dx, dy = gx - f32["cx"], gy - f32["cy"]
    cos, sin = np.cos(f32["angle"]) / f32["radius"], np.sin(f32["angle"]) / f32["radius"]
    x = cos * dx + sin * dy  # object frame, radius 1
    y = cos * dy - sin * dx
    r = np.sqrt(x * x + y * y)
    ax, ay = np.abs(x), np.abs(y)
    shape_of = np.array([SHAPES.index(CLASSES[label][1]) for label in params["label"]])
    mask = np.zeros((n, big, big), dtype=bool)
    for index, shape in enumerate(SHAPES):
        pick = shape_of == index
        if not pick.any():
            continue
        px, py, pr, pax, pay = x[pick], y[pick], r[pick], ax[pick], ay[pick]
        if shape == "circle":
            m = pr < 0.9
        elif shape == "square":
            m = np.maximum(pax, pay) < 0.75
        elif shape == "triangle":  # equilateral, circumradius 1
            m = (py < 0.5) & (np.sqrt(3) * px - py < 1) & (-np.sqrt(3) * px - py < 1)
        elif shape == "cross":
            m = ((pax < 0.28) & (pay < 1)) | ((pay < 0.28) & (pax < 1))
        elif shape == "ring":
            m = (pr < 1) & (pr > 0.58)
        else:  # bar
            m = (pax < 1) & (pay < 0.3)
        mask[pick] = m
    cover = mask.reshape(n, IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).sum(axis=(2, 4), dtype=np.float32)
    return cover / SUPERSAMPLE ** 2


def render(params: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 RGB images [N, IMAGE_SIZE, IMAGE_SIZE, 3] for parameters from `sample`."""
    colour_of = np.array([COLOURS[CLASSES[label][0]] for label in params["label"]], dtype=np.float64)
    colour = np.clip(colour_of * params["brightness"][:, None] + params["tint"], 0, 255)
    cover = _masks(params)[..., None]
    background = params["background"][:, None, None, None]
    pixels = cover * colour[:, None, None, :] + (1 - cover) * background + params["noise"]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def draw(rng: np.random.Generator, labels) -> np.ndarray:
    """`render(sample(rng, labels))`."""
    return render(sample(rng, labels))


def to_tensor(images: np.ndarray, mean, std):
    """uint8 [N, H, W, 3] -> normalised float tensor [N, 3, H, W] (CLIP's preprocessing
    without the resize, for images already at the model's size)."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
