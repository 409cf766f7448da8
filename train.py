"""`python train.py ARGS`: CoOp's command line, kept as a shim; the same as `promptkd train ARGS`.

The code is promptkd/trainers/train.py (the repository's trainers/ folder, installed as
promptkd.trainers by `pip install -e .`).
"""
import sys

from promptkd.cli import console

if __name__ == "__main__":
    console(["train", *sys.argv[1:]])
