"""Helpers of the tests that read the project's own source (the layer tests in test_packaging.py,
the extras check in test_install_extras.py, the house rules in test_house.py): every Python
module of a folder, subpackages included, and what each one imports.

The folders are walked (os.walk), not listed one level deep: a module moved into a subfolder
(promptkd/deploy/, promptkd/demo/, ...) stays under every check. Nothing is imported; the files
are parsed with `ast`.
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The repository's code folders and the packages they install as (pyproject.toml).
FOLDERS = {"promptkd": "promptkd", "trainers": "promptkd.trainers", "datasets": "promptkd.datasets"}


def modules(folder: str, package: str, root: str = ROOT) -> list[tuple[str, str]]:
    """[(dotted module name, file path)] of every .py file under root/folder, in subfolders too,
    sorted by path; `package` is the name the folder imports as (a folder's __init__.py is the
    package itself). __pycache__ and hidden folders are skipped."""
    base = os.path.join(root, folder)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"{base} is not a folder")
    found = []
    for dirpath, dirnames, files in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        rel = os.path.relpath(dirpath, base)
        parts = [] if rel == "." else rel.split(os.sep)
        for name in sorted(files):
            if name.endswith(".py"):
                stem = [] if name == "__init__.py" else [name[:-3]]
                found.append((".".join([package, *parts, *stem]), os.path.join(dirpath, name)))
    return sorted(found, key=lambda item: item[1])


def containing_package(module: str, path: str) -> str:
    """The package a module's relative imports start from (its __package__)."""
    return module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]


def imported_names(module: str, path: str) -> set[str]:
    """Every module name the file imports, at module level or inside functions, relative imports
    resolved; `from a.b import c` gives both a.b and a.b.c (c may be a module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    here = containing_package(module, path).split(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here[:len(here) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found
