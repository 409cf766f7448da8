"""Helpers of the offline demo (``scripts/promptkd/demo.sh``): no Dassl, no downloads.

    python -m promptkd.demo pretrain OUT_DIR [--preset full|fast] [--role teacher|student]

pretrains (once) the demo's two tiny CLIPs contrastively on the toy world
(`promptkd.toyworld`, `promptkd.pretrain`) and writes ``OUT_DIR/teacher.pt`` and
``OUT_DIR/student.pt`` (OpenAI-format state dicts that load like ``ViT-B-16.pt``), each with a
``.json`` sidecar (cache key, sizes, recipe, loss, wall and CPU seconds, zero-shot probes).
A second call with the same preset reuses them; a changed world, model or recipe retrains.
It prints the paths, one per line. ``fast`` is the test suite's shorter recipe. ``--role``
makes one of the two, so that the demo script can pretrain both side by side (each run is
deterministic and single-threaded, so the files do not depend on it).
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Sequence

from .errors import run_cli

logger = logging.getLogger(__name__)

ROLES = ("teacher", "student")


def pretrained_weights(out_dir: str, preset: str = "full", roles: Sequence[str] = ROLES) -> dict[str, str]:
    """Paths of the demo's pretrained CLIPs of `roles` (trained if not cached)."""
    from .pretrain import ensure_pretrained

    return {role: ensure_pretrained(out_dir, role, preset)[0] for role in roles}


def build_parser() -> argparse.ArgumentParser:
    from .pretrain import PRESETS

    parser = argparse.ArgumentParser(prog="python -m promptkd.demo",
                                     description="Helpers of scripts/promptkd/demo.sh.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    weights = sub.add_parser("pretrain", help="pretrain (or reuse) the tiny teacher / student CLIPs")
    weights.add_argument("out_dir", metavar="OUT_DIR")
    weights.add_argument("--preset", choices=sorted(PRESETS), default="full",
                         help="model sizes and pretraining steps (default: full; fast: for tests)")
    weights.add_argument("--role", choices=ROLES, help="pretrain (or reuse) this one only (default: both)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # from `import clip`
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.command == "pretrain":
        paths = pretrained_weights(args.out_dir, args.preset, [args.role] if args.role else ROLES)
        sys.stdout.write("".join(f"{path}\n" for path in paths.values()))
    return 0


if __name__ == "__main__":
    run_cli(main)
