"""`promptkd demo`: the offline demo's driver (what it shows: docs/demo.md).

    promptkd demo [OUT] [--preset full|fast] [--from-scratch] [--epochs N]

`bash scripts/promptkd/demo.sh [OUT]` runs it with the demo's thread settings.

Under OUT: `weights/` the two tiny pretrained CLIPs (unpacked from the shipped ones, or
pretrained), `data/toy_shapes` the generated dataset, `runs/base2new/<run>/toy_shapes/seed1`
the five runs (cleared first, so a re-run redoes them), `results.md|csv|png` the table.

It imports Dassl and the trainers once and runs every step in a forked child of itself
(`promptkd.demo.forked`): a child starts in milliseconds where a new `python train.py` spends
seconds importing, and it is still a process of its own (Dassl's logger, seeds, exit code).
Two steps run side by side, each on `--threads` torch threads (default 1): the teacher's
pretraining beside the student's and its zero-shot run, then the PromptSRC teacher beside
zero-shot CLIP on the teacher and CoOp, then the PromptKD student.
Every run is deterministic on its own, so the table does not depend on which finishes first.
Progress lines carry the run's name; each run's whole log is its log.txt.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys

from promptkd.trainers import train  # imports Dassl and registers this project's trainers and datasets
from promptkd.demo import forked
from promptkd.demo.weights import ROLES, pretrained_weights, probe_table
from promptkd.errors import UserError, run_cli
from promptkd.extras import require
from promptkd.demo.pretrain import PRESETS


class _Console(logging.Handler):
    """A message as it is, on the process's sys.stdout or sys.stderr at the time of writing, so a
    forked step writes to its own pipes."""

    def __init__(self, stream_name: str):
        super().__init__()
        self.stream_name = stream_name

    def emit(self, record):
        stream = getattr(sys, self.stream_name)
        stream.write(self.format(record) + "\n")
        stream.flush()


def _console(name: str, stream_name: str) -> logging.Logger:
    """The demo's console output: a logger of its own that writes plain lines to one stream."""
    log = logging.getLogger(f"promptkd.demo.{name}")
    if not log.handlers:
        log.addHandler(_Console(stream_name))
        log.setLevel(logging.INFO)
        log.propagate = False  # not also through a root handler a step may configure
    return log


say, say_err = _console("console", "stdout"), _console("errors", "stderr")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the clone: configs/
SEED = 1
# the lines of a run's console output the demo shows (the rest is in its log.txt)
PROGRESS = re.compile(r"^(epoch \[|\* accuracy|Exported|ToyShapes: generated|RESULT)")


def run_argv(out: str, name: str, trainer: str, backbone: str, shots: int, subsample: str,
             *opts: str) -> list[str]:
    """train.py's command line of the run NAME under OUT/runs/base2new."""
    return ["--root", os.path.join(out, "data"), "--seed", str(SEED), "--trainer", trainer,
            "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "toy_shapes.yaml"),
            "--config-file", os.path.join(REPO, "configs", "trainers", trainer, "demo_tiny.yaml"),
            "--output-dir", run_dir(out, name),
            "MODEL.BACKBONE.NAME", backbone, "DATASET.NUM_SHOTS", str(shots),
            "DATASET.SUBSAMPLE_CLASSES", subsample, "TRAINER.PROTOCOL", "base2novel", *opts]


def run_dir(out: str, name: str) -> str:
    return os.path.join(out, "runs", "base2new", name, "toy_shapes", f"seed{SEED}")


def pretrain_step(weights: str, role: str, preset: str, from_scratch: bool) -> forked.Step:
    def fn():
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        pretrained_weights(weights, preset, [role], from_scratch)
    return forked.Step(f"pretrain {role}", fn)


def train_step(out: str, name: str, *spec) -> forked.Step:
    argv = run_argv(out, name, *spec)
    trainer, backbone = spec[0], spec[1]

    def fn():
        say.info("-- %s: %s on %s's backbone (log: %s/log.txt)", name, trainer,
                 os.path.splitext(os.path.basename(backbone))[0], run_dir(out, name))
        run_cli(lambda: train.run(train.parse_args(argv)), argv)
    return forked.Step(name, fn)


def show(name: str, stream: str, line: str) -> None:
    if stream == "stderr":
        say_err.info("[%s] %s", name, line)
    elif line.startswith("-- "):
        say.info("%s", line)
    elif PROGRESS.match(line):
        say.info("[%s] %s", name, line)


def run_demo(out: str, preset: str = "full", from_scratch: bool = False, epochs: int | None = None) -> None:
    require("matplotlib", "plots", "The demo (its results plot)")  # before minutes of training
    out = os.path.abspath(out)
    weights = os.path.join(out, "weights")
    teacher, student = (os.path.join(weights, f"{role}.pt") for role in ROLES)
    epoch_opts = ["OPTIM.MAX_EPOCH", str(epochs)] if epochs else []
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)  # runs are redone; weights, data kept
    for suffix in (".md", ".csv", ".png"):
        if os.path.exists(os.path.join(out, "results" + suffix)):
            os.remove(os.path.join(out, "results" + suffix))
    say.info(f"-- tiny CLIPs pretrained on the toy world (preset {preset}; in {weights})")

    def lanes(*lanes):
        try:
            forked.run_lanes(lanes, show)
        except forked.ChildFailed as err:
            raise UserError(f"the demo step {err.name} failed (exit code {err.code}); its messages "
                            "are above, and its log.txt (if it got that far) is named above") from None

    lanes([pretrain_step(weights, "teacher", preset, from_scratch)],
          [pretrain_step(weights, "student", preset, from_scratch),
           # the first run also generates the dataset
           train_step(out, "zsclip_student", "ZeroshotCLIP", student, 16, "base")])
    lanes([train_step(out, "promptkd_teacher", "PromptKDTeacher", teacher, 16, "base", *epoch_opts)],
          [train_step(out, "zsclip_teacher", "ZeroshotCLIP", teacher, 16, "base"),
           train_step(out, "coop", "CoOp", teacher, 16, "base", *epoch_opts)])
    export = os.path.join(run_dir(out, "promptkd_teacher"), "export")
    lanes([train_step(out, "promptkd", "PromptKD", student, 0, "all",
                      "TRAINER.PROMPTKD.TEACHER_DIR", export, *epoch_opts)])

    say.info("-- results")
    from promptkd import results

    parser = argparse.ArgumentParser(prog="promptkd results")  # the verb's own options (cli is a layer above)
    results.add_arguments(parser)
    results.run(parser.parse_args([os.path.join(out, "runs"), "--out", os.path.join(out, "results"), "--plot",
                                   "--seeds", str(SEED)]))  # a user error is raised
    say.info("")
    say.info(f"Zero-shot probes of the pretrained backbones (fresh images; from {weights}/*.json): what")
    say.info("each backbone's features allow when prompted in a form it was pretrained on.")
    say.info("%s", probe_table(weights))
    say.info("")
    say.info(f"Results table: {out}/results.md (and {out}/results.csv)")
    say.info(f"Plot:          {out}/results.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `demo` verb's options."""
    parser.add_argument("out", metavar="OUT", nargs="?", default=os.path.join("output", "demo"),
                        help="folder of everything the demo makes (default output/demo)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="tiny CLIPs' sizes and pretraining (default full, the shipped one; fast: tests)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="pretrain the tiny CLIPs even where the repository ships them")
    parser.add_argument("--epochs", type=int, help="epochs of every training run (default: the configs')")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("DEMO_THREADS") or 1),
                        help="torch threads of each run (default DEMO_THREADS or 1: two runs side by side "
                             "on two cores is the fastest)")


def run(args: argparse.Namespace) -> int:
    """`promptkd demo [OUT]`: every step, then the table."""
    import torch

    torch.set_num_threads(args.threads)  # the forked runs inherit it
    run_demo(args.out, args.preset, args.from_scratch, args.epochs)
    return 0
