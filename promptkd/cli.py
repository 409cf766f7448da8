"""`promptkd <verb>`: the one command line of this project (`python -m promptkd` is the same).

    promptkd --help                     the verbs, one line each
    promptkd VERB --help                a verb's options

Each verb lives in the module that does the work, which gives the verb's options
(`add_arguments(parser)`) and runs it (`run(args) -> exit code`); this module only builds the
parsers, adds the options every verb shares (`--debug`) and reports user errors as
`error: ...` with exit code 2 (`promptkd.errors`). A verb's module is imported only when that
verb runs, so `promptkd predict` and `promptkd export` need neither Dassl nor the trainers.
`python train.py ARGS` (CoOp's command line) is `promptkd train ARGS`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import UserError, add_debug_argument, run_cli

# verb: (module, one-line purpose). The Dassl side (trainers, datasets) is promptkd.trainers /
# promptkd.datasets: the repository's trainers/ and datasets/ folders, installed under this package.
VERBS = {
    "train": ("promptkd.trainers.train", "train or evaluate a trainer on a dataset (CoOp's train.py arguments)"),
    "cache": ("promptkd.trainers.cache_command",
              "write the teacher-embedding cache of a PromptKD student run (that run's train arguments)"),
    "check": ("promptkd.datasets.check", "check datasets on disk: every split's images are there and readable"),
    "results": ("promptkd.results", "tables (Markdown, CSV, plot) of finished runs: base / novel / HM, mean ± std"),
    "predict": ("promptkd.deploy.predict", "classify images with an exported student or teacher (no Dassl)"),
    "export": ("promptkd.deploy.export_model", "export a finished run for deployment (TorchScript, ONNX, or a model folder)"),
    "convert": ("promptkd.deploy.convert", "turn a published PromptKD / PromptSRC checkpoint into a model folder (no pickle)"),
    "push": ("promptkd.deploy.push", "upload a model folder (export --format hf) to the Hugging Face Hub"),
    "demo": ("promptkd.trainers.demo_driver", "the offline demo: tiny CLIPs, a toy dataset, the whole pipeline"),
    "demo-weights": ("promptkd.demo.weights", "pretrain the demo's tiny CLIPs, or regenerate the shipped ones"),
}

INSTALL_HINT = ("run `pip install -e .` in the repository (scripts/install.sh also installs Dassl): the trainers "
                "and datasets are installed as promptkd.trainers and promptkd.datasets")


def _module(verb: str):
    name = VERBS[verb][0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name in ("promptkd.trainers", "promptkd.datasets"):
            raise UserError(f"`promptkd {verb}` needs {err.name}, which is not installed: {INSTALL_HINT}.") from None
        if err.name == "dassl" or (err.name or "").startswith("dassl."):
            raise UserError(f"`promptkd {verb}` needs Dassl, which is not installed: see docs/install.md "
                            "(scripts/install.sh installs it at the tested commit).") from None
        raise


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser of `promptkd`, with the options of `verb` filled in (only that verb's module is imported)."""
    parser = argparse.ArgumentParser(prog="promptkd", description=__doc__.split("\n\n")[0],
                                     epilog="`promptkd VERB --help` lists a verb's options.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", title="verbs")
    for name, (_, purpose) in VERBS.items():
        sub = verbs.add_parser(name, help=purpose, description=purpose)
        if name == verb:
            _module(name).add_arguments(sub)
            add_debug_argument(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `promptkd ARGV` and return its exit code; a user error is raised (`console` reports it)."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    verb = argv[0] if argv and argv[0] in VERBS else None
    args = build_parser(verb).parse_args(argv)
    args.argv = argv[1:]  # the verb's own command line, for the run's log
    return _module(args.verb).run(args) or 0


def console(argv: Sequence[str] | None = None) -> None:
    """The `promptkd` console script: exit code 0, or 2 and `error: ...` for a user error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    run_cli(lambda: main(argv), argv)
