"""Training-image decoding + augmentation, images/s on one core: INPUT.DECODER pil (PIL decode,
Dassl's PIL transforms) against torchvision (decode_jpeg + the transforms v2 on tensors).

    python -m benchmarks.decode_speed [--images 64] [--rounds 3] [--size 224] [--json PATH]

Writes `--images` JPEGs of 500x375 (about the size of the datasets' photos) to a temporary
folder, then, with one torch / OpenCV thread, decodes and augments each image with
RandomResizedCrop(size, bicubic) + flip + ToTensor + normalise (the shipped configs' train
transform) on both paths; the best of `--rounds` passes. Prints the 1-minute load average
before and after (other processes share the cores).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from promptkd.decode import read_tensor, tensor_transform

logger = logging.getLogger("promptkd.benchmarks")
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def write_photos(folder: str, n: int, w: int = 500, h: int = 375) -> list[str]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for k in range(n):
        img = np.stack([(np.sin(xx / (9 + k % 13)) + np.cos(yy / 23)) * 60 + 128, xx * 0.5, (yy * 0.6 + k) % 255], -1)
        path = os.path.join(folder, f"{k:04d}.jpg")
        Image.fromarray((img + rng.normal(0, 10, img.shape)).clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def pil_transform(size: int):
    return T.Compose([T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(MEAN, STD)])


def measure(paths, size: int, rounds: int) -> dict:
    torch.set_num_threads(1)
    pil = pil_transform(size)
    tensor = tensor_transform(pil)

    def run_pil(path):
        with Image.open(path) as image:
            return pil(image.convert("RGB"))

    def run_tv(path):
        return tensor(read_tensor(path))

    rows = {}
    for name, run in (("pil", run_pil), ("torchvision", run_tv)):
        run(paths[0])  # warm-up
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for p in paths:
                run(p)
            best = min(best, time.perf_counter() - start)
        rows[name] = len(paths) / best
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(write_photos(folder, args.images), args.size, args.rounds)
    out = {"images_per_s_per_core": rows, "speedup": rows["torchvision"] / rows["pil"],
           "load_1min": [load_before, os.getloadavg()[0]], "cpus": os.cpu_count(), "images": args.images}
    logger.info("decode + RandomResizedCrop(%d, bicubic) + flip + normalise, one thread: PIL %.0f images/s, "
                "torchvision %.0f images/s (x%.2f); load average %.1f -> %.1f on %d CPUs", args.size, rows["pil"],
                rows["torchvision"], out["speedup"], *out["load_1min"], out["cpus"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
