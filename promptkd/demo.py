"""Helpers of the offline demo (``scripts/promptkd/demo.sh``): no Dassl, no downloads.

    python -m promptkd.demo make-weights OUT_DIR

writes ``OUT_DIR/teacher.pt`` and ``OUT_DIR/student.pt``: random-weight tiny CLIPs (32 px
input, patch 8; teacher 3 vision / 3 text layers, width 128, embed 96; student 2 / 2, width
64, embed 64) that load through the real `clip` loading path like OpenAI's files. The seeds
are fixed, so the files are the same on every machine and every run; existing files are kept.
It prints the two paths, one per line.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Sequence


logger = logging.getLogger(__name__)

TEACHER_FILE, STUDENT_FILE = "teacher.pt", "student.pt"
TEACHER_SEED, STUDENT_SEED = 1, 2


def make_weights(out_dir: str) -> dict[str, str]:
    """Write (once) the demo's tiny teacher and student CLIP files; returns their paths."""
    from .tiny import TINY_STUDENT, TINY_TEACHER, write_tiny_clip

    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    paths = {"teacher": os.path.join(out_dir, TEACHER_FILE),
             "student": os.path.join(out_dir, STUDENT_FILE)}
    for role, spec, seed in (("teacher", TINY_TEACHER, TEACHER_SEED),
                             ("student", TINY_STUDENT, STUDENT_SEED)):
        existed = os.path.isfile(paths[role])
        write_tiny_clip(paths[role], spec, seed=seed)
        logger.info("%s %s tiny CLIP %s", "kept" if existed else "wrote", role, paths[role])
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m promptkd.demo",
                                     description="Helpers of scripts/promptkd/demo.sh.")
    sub = parser.add_subparsers(dest="command", required=True)
    weights = sub.add_parser("make-weights", help="write the tiny teacher / student CLIP files")
    weights.add_argument("out_dir", metavar="OUT_DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # from `import clip`
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "make-weights":
        paths = make_weights(args.out_dir)
        sys.stdout.write(f"{paths['teacher']}\n{paths['student']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
