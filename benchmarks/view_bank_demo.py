"""The view bank's cost in accuracy on the demo's world: PromptKD students for K in `--banks`
(TRAINER.PROMPTKD.VIEWS_PER_IMAGE; 0 = a fresh view every epoch) x `--seeds`, each filling its
own fp32 teacher cache online (TEACHER_CACHE_WRITE, so K > 0 runs the teacher once per view).

    promptkd demo OUT                      # first: the demo's weights, data and teacher export
    python -m benchmarks.view_bank_demo OUT [--crop]

The demo's student config augments with random_flip only (a view is the image or its mirror, so
a bank of K >= 2 views holds at most two distinct images); `--crop` adds random_resized_crop
(Dassl's default scale 0.08-1) so the views really differ. Runs go two side by side, one torch
thread each; prints a table of base / novel / HM per (K, seed) and the mean over seeds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import train_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def argv(out: str, k: int, seed: int, crop: bool) -> tuple[str, list[str]]:
    name = f"k{k}{'-crop' if crop else ''}"
    run = os.path.join(out, "view_bank", name, f"seed{seed}")
    args = ["--root", os.path.join(out, "data"), "--seed", str(seed), "--trainer", "PromptKD",
            "--dataset-config-file", os.path.join(ROOT, "configs", "datasets", "toy_shapes.yaml"),
            "--config-file", os.path.join(ROOT, "configs", "trainers", "PromptKD", "demo_tiny.yaml"),
            "--output-dir", run, "MODEL.BACKBONE.NAME", os.path.join(out, "weights", "student.pt"),
            "DATASET.NUM_SHOTS", "0", "DATASET.SUBSAMPLE_CLASSES", "all", "TRAINER.PROTOCOL", "base2novel",
            "TRAINER.PROMPTKD.TEACHER_DIR",
            os.path.join(out, "runs", "base2new", "promptkd_teacher", "toy_shapes", "seed1", "export"),
            "TRAINER.PROMPTKD.VIEWS_PER_IMAGE", str(k), "TRAINER.PROMPTKD.TEACHER_CACHE", run + "-cache",
            "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True", "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32"]
    if crop:
        args += ["INPUT.TRANSFORMS", "('random_resized_crop', 'random_flip', 'normalize')"]
    return run, args


def train(job) -> dict:
    run, args = job
    metrics = train_run(run, args, ROOT)
    if not metrics:
        raise RuntimeError(f"{run} wrote no result.json")
    return metrics


def main(argv_=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder of a finished `promptkd demo OUT`")
    p.add_argument("--banks", default="0,2,4")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--crop", action="store_true")
    p.add_argument("--parallel", type=int, default=2)
    a = p.parse_args(argv_)
    out = os.path.abspath(a.out)
    keys = [(int(k), int(s)) for k in a.banks.split(",") for s in a.seeds.split(",")]
    with ThreadPoolExecutor(a.parallel) as pool:
        metrics = dict(zip(keys, pool.map(train, [argv(out, k, s, a.crop) for k, s in keys])))
    print(f"PromptKD student on the demo world, transforms {'crop + flip' if a.crop else 'flip (shipped)'}:")
    print("| K | seed | base | novel | HM |\n|---|---|---|---|---|")
    for (k, s), m in metrics.items():
        print(f"| {k} | {s} | {m['base']:.2f} | {m['novel']:.2f} | {m['hm']:.2f} |")
    for k in sorted({k for k, _ in keys}):
        ms = [m for (kk, _), m in metrics.items() if kk == k]
        hm = [m["hm"] for m in ms]
        print(f"| {k} | mean | {statistics.mean(m['base'] for m in ms):.2f} | "
              f"{statistics.mean(m['novel'] for m in ms):.2f} | {statistics.mean(hm):.2f} "
              f"(± {statistics.stdev(hm) if len(hm) > 1 else 0:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
