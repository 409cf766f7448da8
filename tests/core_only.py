"""Run `promptkd` command lines as a user who installed only the core dependencies.

    python -m tests.core_only RESULT.json VERB ARGS... [--then VERB ARGS...]...

A fresh interpreter in which the modules of the optional extras (export, shards, plots,
tracking: `promptkd.extras.EXTRAS`) cannot be imported: each is None in sys.modules, which
Python treats as not installed (`import onnx` raises ModuleNotFoundError and
`importlib.util.find_spec("onnx")` is None, as torch's own checks expect). The hub extra's
modules stay importable: open-clip-torch, a core dependency, installs both. Each command line
runs as `promptkd` runs it (a user error is caught and its message recorded); RESULT.json gets
[{"argv", "code", "error"}] per command, and the blocked modules that were imported after all
("loaded", which must stay empty).
"""
from __future__ import annotations

import json
import sys

from promptkd.extras import EXTRAS

BLOCKED = {m for extra in ("export", "shards", "plots", "tracking") for m in EXTRAS[extra]} | {"braceexpand"}


def main(argv: list[str]) -> None:
    out, rest = argv[0], argv[1:]
    commands, current = [], []
    for arg in rest:
        if arg == "--then":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)

    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:
        raise RuntimeError(f"imported before they were blocked: {already}")
    for module in BLOCKED:
        sys.modules[module] = None

    from promptkd.cli import main as promptkd
    from promptkd.errors import UserError

    results = []
    for command in commands:
        try:
            code, error = promptkd(command), None
        except UserError as err:
            code, error = 2, str(err)
        results.append({"argv": command, "code": code, "error": error})
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"results": results, "loaded": loaded}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
