"""Classify images with a trained run (a PromptKD student, or any method that exported).

    promptkd predict RUN_DIR IMAGE_OR_FOLDER ... [--topk 5] [--out predictions.csv]

RUN_DIR is a run's output folder (or its export folder, or a `predictor.pt`). Folders are
searched recursively for image files. Needs no Dassl and no dataset: the backbone is loaded
by the reference the run recorded (`--weights-dir` for the folder holding named CLIP files),
images go through the model's own test transform in batches, and the top-k classes with their
probabilities are printed and, with `--out`, written as CSV (columns image, rank, class,
probability). An image that cannot be read is reported and skipped.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys

import torch
from PIL import Image
from tqdm import tqdm

from ..errors import MissingFileError, UserError
from ..io import IMAGE_EXTENSIONS, atomic_write_text
from .hub import load_predictor
from .predictor import Predictor, add_run_arguments

logger = logging.getLogger("promptkd")


def list_images(inputs: list[str]) -> list[str]:
    """Image files given directly, and the image files under given folders (sorted)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for folder, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(folder, f) for f in files
                          if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
            if not found:
                logger.warning("No image files (%s) under %s", ", ".join(IMAGE_EXTENSIONS), item)
            paths += sorted(found)
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise MissingFileError(f"{item} does not exist.")
    return paths


def read_image(path: str, transform):
    """(tensor, None) or (None, reason) for an image that cannot be read."""
    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB")), None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        return None, f"{type(err).__name__}: {err}"


def predict(predictor: Predictor, paths: list[str], batch_size: int = 32, topk: int = 5, progress: bool = True):
    """Yield (path, logits [C] or None, error or None) for every path, in order."""
    batch = []

    def flush():
        if batch:
            logits = predictor.logits(torch.stack([t for _, t in batch]))
            for (p, _), row in zip(batch, logits):
                yield p, row, None
            batch.clear()

    for path in tqdm(paths, desc="predict", unit="img", disable=None if progress else True, dynamic_ncols=True):
        tensor, error = read_image(path, predictor.transform)
        if error is not None:
            yield path, None, error
            continue
        batch.append((path, tensor))
        if len(batch) == batch_size:
            yield from flush()
    yield from flush()


def top_k(logits: torch.Tensor, classnames: list[str], k: int) -> list[tuple[str, float]]:
    probs = logits.softmax(dim=-1)
    values, indices = probs.topk(min(k, len(classnames)))
    return [(classnames[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `predict` verb's options."""
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    add_run_arguments(parser)  # run_dir first, then this command's own
    parser.add_argument("images", nargs="+", help="image files and / or folders (searched recursively)")
    parser.add_argument("--topk", type=int, default=5, help="classes to report per image (default 5)")
    parser.add_argument("--out", default="", help="write the predictions to this CSV file")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def run(args: argparse.Namespace) -> int:
    """`promptkd predict`: print (and --out: write) the top classes of every image."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.topk < 1 or args.batch_size < 1:
        raise UserError("--topk and --batch-size must be >= 1.")
    predictor = load_predictor(args.run_dir, args.weights_dir or None, args.trust_pickled)
    predictor.model.to(args.device)
    paths = list_images(args.images)
    if not paths:
        raise UserError(f"No images found in {' '.join(args.images)}.")
    names = predictor.classnames
    rows, skipped = [], []
    for path, logits, error in predict(predictor, paths, args.batch_size, args.topk):
        if error is not None:
            skipped.append((path, error))
            print(f"skipped {path}: {error}", file=sys.stderr)
            continue
        best = top_k(logits, names, args.topk)
        print(f"{path}: " + ", ".join(f"{name} ({p:.3f})" for name, p in best))
        rows += [(path, rank, name, f"{p:.6f}") for rank, (name, p) in enumerate(best, 1)]
    n_done = len(paths) - len(skipped)
    if args.out:
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["image", "rank", "class", "probability"])
        writer.writerows(rows)
        atomic_write_text(args.out, text.getvalue())
        print(f"wrote {args.out} ({n_done} images)", file=sys.stderr)
    print(f"{n_done} images classified, {len(skipped)} skipped (unreadable)", file=sys.stderr)
    if n_done == 0:
        raise UserError("None of the images could be read.")
    return 0
