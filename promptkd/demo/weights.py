"""Helpers of the offline demo (``scripts/promptkd/demo.sh``): no Dassl, no downloads.

    promptkd demo-weights pretrain OUT_DIR [--preset full|fast] [--role teacher|student]

pretrains (once) the demo's two tiny CLIPs contrastively on the toy world
(`promptkd.demo.toyworld`, `promptkd.demo.pretrain`) and writes ``OUT_DIR/teacher.pt`` and
``OUT_DIR/student.pt`` (OpenAI-format state dicts that load like ``ViT-B-16.pt``), each with a
``.json`` sidecar (cache key, sizes, recipe, loss, wall and CPU seconds, zero-shot probes).
A second call with the same preset reuses them; a changed world, model or recipe retrains.
The full preset's two are shipped in the repository (``promptkd/demo/demo_weights``, a small form:
everything but the unused rows of the token embedding, which are the seeded initialisation)
and unpacked instead of trained, unless ``--from-scratch``.
It prints the paths, one per line. ``fast`` is the test suite's shorter recipe. ``--role``
makes one of the two, so that the demo script can pretrain both side by side (each run is
deterministic and single-threaded, so the files do not depend on it).

    promptkd demo-weights ship OUT_DIR

regenerates the shipped weights: it writes the small forms of ``OUT_DIR``'s full-preset files,
which must have been pretrained with ``--from-scratch`` (the whole command: docs/demo.md).

    promptkd demo-weights probes OUT_DIR

prints the zero-shot probes the sidecars hold, per backbone and prompt form: what each
backbone's image features allow when it is prompted in the form it was pretrained on, beside
the standard "a photo of a {}." of the results table (fresh images of the same world).
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Sequence


logger = logging.getLogger(__name__)

ROLES = ("teacher", "student")


def pretrained_weights(out_dir: str, preset: str = "full", roles: Sequence[str] = ROLES,
                       from_scratch: bool = False) -> dict[str, str]:
    """Paths of the demo's pretrained CLIPs of `roles` (from the shipped weights or trained, if
    not cached)."""
    from .pretrain import ensure_pretrained

    return {role: ensure_pretrained(out_dir, role, preset, from_scratch)[0] for role in roles}


def probe_table(out_dir: str) -> str:
    """The zero-shot probes of `out_dir/<role>.json` as a Markdown table."""
    import os

    from tabulate import tabulate

    from ..errors import CheckpointError, MissingFileError
    from ..io import load_json

    rows = []
    for role in ROLES:
        path = os.path.join(out_dir, f"{role}.json")
        if not os.path.isfile(path):
            raise MissingFileError(f"No {path}: pretrain first (promptkd demo-weights pretrain {out_dir}).")
        info = load_json(path, what="pretraining sidecar", error=CheckpointError,
                         fix=f"Delete it and its .pt file, then pretrain again (promptkd demo-weights pretrain {out_dir}).")
        trained_on = set(info["recipe"]["captions"])
        for prompt, acc in info["zero_shot_probe_by_prompt"].items():
            rows.append([role, f'"{prompt}"', "yes" if prompt in trained_on else "no",
                         acc["base"], acc["novel"], acc["hm"]])
    return tabulate(rows, headers=["Backbone", "Prompt", "Pretrained on it", "Base", "Novel", "HM"],
                    tablefmt="github", floatfmt=".2f")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `demo-weights` verb's options: pretrain | ship | probes."""
    from .pretrain import PRESETS

    sub = parser.add_subparsers(dest="command", required=True)
    weights = sub.add_parser("pretrain", help="pretrain (or reuse) the tiny teacher / student CLIPs")
    weights.add_argument("out_dir", metavar="OUT_DIR")
    weights.add_argument("--preset", choices=sorted(PRESETS), default="full",
                         help="model sizes and pretraining steps (default: full; fast: for tests)")
    weights.add_argument("--role", choices=ROLES, help="pretrain (or reuse) this one only (default: both)")
    weights.add_argument("--from-scratch", action="store_true",
                         help="pretrain even where the repository ships the weights (full preset)")
    ship = sub.add_parser("ship", help="write the small forms of OUT_DIR's full-preset weights (pretrained "
                                       "--from-scratch) into the repository (promptkd/demo/demo_weights)")
    ship.add_argument("out_dir", metavar="OUT_DIR")
    probes = sub.add_parser("probes", help="print the zero-shot probes of the pretrained backbones")
    probes.add_argument("out_dir", metavar="OUT_DIR")


def run(args: argparse.Namespace) -> int:
    """`promptkd demo-weights pretrain | ship | probes`."""
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # from `import clip`
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "pretrain":
        paths = pretrained_weights(args.out_dir, args.preset, [args.role] if args.role else ROLES,
                                   args.from_scratch)
        sys.stdout.write("".join(f"{path}\n" for path in paths.values()))
    elif args.command == "ship":
        from .pretrain import ship

        sys.stdout.write("".join(f"{path}\n" for path in ship(args.out_dir)))
    elif args.command == "probes":
        sys.stdout.write(probe_table(args.out_dir) + "\n")
    return 0
