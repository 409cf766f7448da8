"""Several teachers on the demo's world (issue 38): base / novel / HM of PromptKD students
distilled from the trained teacher alone, a zero-shot teacher alone, and their ensemble under
each rule, over `--seeds`; then the cost per step of a two-teacher ensemble online and from the
caches against one teacher.

    promptkd demo OUT                      # first: the demo's weights and data
    python -m benchmarks.ensemble_demo OUT [--seeds 1,2,3] [--epochs N]

Per seed: the PromptSRC teacher (configs/trainers/PromptKDTeacher/demo_tiny.yaml, 16-shot base
classes, that seed). Once: the zero-shot teacher, the same teacher backbone, nothing trained, its
class vectors CLIP's ensemble over the four caption forms it was pretrained on
(TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES, a file of templates). Students (demo_tiny.yaml, all
unlabelled train images, that seed): trained alone, zero-shot alone, and ensembles mean_prob,
weights 0.5 / 0.5, confidence (max_prob, ENSEMBLE_TEMPERATURE default). The table also has the
two teachers' own scores. Runs go `--parallel` side by side (default 2), one torch thread each.

Cost: the students' epoch time ("epoch [k/N] ... time Xs" in the log, epochs after the first,
median) over their steps, for one teacher and two online, and one and two from their caches
(filled by a run with TEACHER_CACHE_WRITE first), seed 1, run one at a time.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import train_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")  # toyworld.CAPTION_TEMPLATES
RULES = {
    "trained alone": [],
    "zero-shot alone": None,  # TEACHER_DIR = the zero-shot export
    "ensemble mean_prob": ["TRAINER.PROMPTKD.ENSEMBLE_RULE", "mean_prob"],
    "ensemble weights 0.5/0.5": ["TRAINER.PROMPTKD.ENSEMBLE_RULE", "weights", "TRAINER.PROMPTKD.ENSEMBLE_WEIGHTS",
                                 "[0.5, 0.5]"],
    "ensemble confidence max_prob": ["TRAINER.PROMPTKD.ENSEMBLE_RULE", "confidence",
                                     "TRAINER.PROMPTKD.ENSEMBLE_CONFIDENCE", "max_prob"],
}


def base_args(out: str, trainer: str, run: str, seed: int, backbone: str, *extra) -> list[str]:
    return ["--root", os.path.join(out, "data"), "--seed", str(seed), "--trainer", trainer,
            "--dataset-config-file", os.path.join(ROOT, "configs", "datasets", "toy_shapes.yaml"),
            "--config-file", os.path.join(ROOT, "configs", "trainers", trainer, "demo_tiny.yaml"),
            "--output-dir", run, "MODEL.BACKBONE.NAME", os.path.join(out, "weights", f"{backbone}.pt"),
            "TRAINER.PROTOCOL", "base2novel", *extra]


def train(job) -> dict:
    run, args = job
    metrics = train_run(run, args, ROOT)
    with open(os.path.join(run, "log.txt")) as f:
        epochs = [float(t) for t in re.findall(r"epoch \[\d+/\d+\].* time ([\d.]+)s", f.read())]
    return {**metrics, "epoch_times": epochs}


def main(argv_=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the folder of a finished `promptkd demo OUT`")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--epochs", type=int, help="epochs of teachers and students (default: the configs' 10)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--no-cost", action="store_true")
    a = p.parse_args(argv_)
    out = os.path.abspath(a.out)
    bench = os.path.join(out, "ensemble")
    seeds = [int(s) for s in a.seeds.split(",")]
    ep = ["OPTIM.MAX_EPOCH", str(a.epochs)] if a.epochs else []
    for folder in ("zero_shot", "teacher", "students", "cost"):  # runs are redone (a run folder would resume)
        shutil.rmtree(os.path.join(bench, folder), ignore_errors=True)
    os.makedirs(bench, exist_ok=True)
    templates = os.path.join(bench, "captions.txt")
    with open(templates, "w") as f:
        f.write("\n".join(CAPTIONS) + "\n")

    zs_run = os.path.join(bench, "zero_shot")
    teachers = {s: os.path.join(bench, "teacher", f"seed{s}") for s in seeds}
    jobs = [(zs_run, base_args(out, "PromptKDTeacher", zs_run, 1, "teacher", "DATASET.NUM_SHOTS", "16",
                               "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "0",
                               "TRAINER.PROMPTSRC.ZERO_SHOT", "True", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "0",
                               "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "0",
                               "TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES", templates))]
    jobs += [(teachers[s], base_args(out, "PromptKDTeacher", teachers[s], s, "teacher", "DATASET.NUM_SHOTS", "16",
                                     "DATASET.SUBSAMPLE_CLASSES", "base", *ep)) for s in seeds]
    with ThreadPoolExecutor(a.parallel) as pool:
        teacher_metrics = dict(zip([j[0] for j in jobs], pool.map(train, jobs)))
    zs_export = os.path.join(zs_run, "export")

    def student(name, seed, run, *extra):
        trained = os.path.join(teachers[seed], "export")
        rule = RULES[name]
        kd = (["TRAINER.PROMPTKD.TEACHER_DIR", zs_export] if rule is None else
              ["TRAINER.PROMPTKD.TEACHER_DIR", trained] + (
                  ["TRAINER.PROMPTKD.TEACHER_DIRS", f"['{zs_export}']", *rule] if rule else []))
        return run, base_args(out, "PromptKD", run, seed, "student", "DATASET.NUM_SHOTS", "0",
                              "DATASET.SUBSAMPLE_CLASSES", "all", *kd, *ep, *extra)

    keys = [(name, s) for name in RULES for s in seeds]
    runs = [student(name, s, os.path.join(bench, "students", name.replace(" ", "_").replace("/", "-"), f"seed{s}"))
            for name, s in keys]
    with ThreadPoolExecutor(a.parallel) as pool:
        metrics = dict(zip(keys, pool.map(train, runs)))

    lines = [f"Demo world, {len(seeds)} seeds ({a.seeds}), {a.epochs or 10} epochs (teachers and students):", "",
             "| Teacher(s) of the student | Base | Novel | HM | HM per seed |", "|---|---|---|---|---|"]
    for label, ms in (("(the trained teacher itself)", [teacher_metrics[teachers[s]] for s in seeds]),
                      ("(the zero-shot teacher itself)", [teacher_metrics[zs_run]])):
        lines.append(f"| {label} | {statistics.mean(m['base'] for m in ms):.2f} | "
                     f"{statistics.mean(m['novel'] for m in ms):.2f} | {statistics.mean(m['hm'] for m in ms):.2f} | "
                     f"{' / '.join('%.2f' % m['hm'] for m in ms)} |")
    for name in RULES:
        ms = [metrics[(name, s)] for s in seeds]
        hm = [m["hm"] for m in ms]
        lines.append(f"| {name} | {statistics.mean(m['base'] for m in ms):.2f} | "
                     f"{statistics.mean(m['novel'] for m in ms):.2f} | {statistics.mean(hm):.2f} "
                     f"(± {statistics.stdev(hm) if len(hm) > 1 else 0:.2f}) | {' / '.join(f'{h:.2f}' for h in hm)} |")
    print("\n".join(lines), flush=True)

    if a.no_cost:
        return 0
    # cost per step, one run at a time: one / two teachers, online / from the caches
    s = seeds[0]
    cost = {}
    for name, label in (("trained alone", "one teacher"), ("ensemble mean_prob", "two teachers")):
        cache = os.path.join(bench, "cost", label.replace(" ", "_") + "-cache")
        no_test = ["TEST.NO_TEST", "True"]
        online = train(student(name, s, os.path.join(bench, "cost", label.replace(" ", "_"), "online"), *no_test))
        train(student(name, s, os.path.join(bench, "cost", label.replace(" ", "_"), "fill"), *no_test,
                      "TRAINER.PROMPTKD.TEACHER_CACHE", cache, "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True"))
        cached = train(student(name, s, os.path.join(bench, "cost", label.replace(" ", "_"), "cached"), *no_test,
                               "TRAINER.PROMPTKD.TEACHER_CACHE", cache))
        cost[label] = {"online": statistics.median(online["epoch_times"][1:] or online["epoch_times"]),
                       "cache": statistics.median(cached["epoch_times"][1:] or cached["epoch_times"])}
    found = re.search(r"Unlabelled pool: .*?, (\d+) images",
                      open(os.path.join(bench, "cost", "one_teacher", "online", "log.txt")).read())
    steps = -(-int(found.group(1)) // 16) if found else None
    print("", "| Teachers | online ms/step | from the cache ms/step |", "|---|---|---|", sep="\n")
    for label, c in cost.items():
        per = (lambda t: f"{1000 * t / steps:.1f}") if steps else (lambda t: f"{t:.2f} s/epoch")
        print(f"| {label} | {per(c['online'])} | {per(c['cache'])} |")
    print(f"({steps} steps of 16 images per epoch; median epoch time over epochs 2..N, one thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
