"""Old import paths of modules that moved into `promptkd.deploy` and `promptkd.demo`, or were
renamed in `promptkd.trainers` (0.5), and
the FutureWarning of every old name kept for one release (also promptkd.demo's old names and
promptkd.baselines.ZeroShotCLIP).

`import promptkd.hub` (or `from promptkd import hub`) still works for one release: it gives the
module at its new place, `promptkd.deploy.hub` (the same module object, so what a user patches
on it patches the real one), with a `FutureWarning` naming the new path, as timm does when it
moves modules. One import hook for every old path, rather than a shim file per path, keeps the
core's folder to the modules that live there. Inside the project nothing imports an old path
(tests/test_public_api.py checks both).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

#: old module path -> new module path
MOVED = {
    **{f"promptkd.{name}": f"promptkd.deploy.{name}"
       for name in ("predictor", "predict", "export_model", "hub", "push", "convert")},
    **{f"promptkd.{name}": f"promptkd.demo.{name}" for name in ("toyworld", "pretrain", "tiny", "forked")},
    # trainers/ files named after their role instead of after a core module (0.5)
    **{f"promptkd.trainers.{old}": f"promptkd.trainers.{new}" for old, new in (
        ("teacher_cache", "cache_command"), ("cache_views", "cache_filler"), ("view_data", "view_loader"),
        ("pools", "pool_loader"), ("distributed", "rank_loaders"), ("demo", "demo_driver"),
        ("baselines", "baseline_trainers"))},
}

#: names the old module `promptkd.demo` had; `promptkd.demo` is now the package, these live in
#: `promptkd.demo.weights` (forwarded with a warning by promptkd/demo/__init__.py)
OLD_DEMO_NAMES = ("ROLES", "pretrained_weights", "probe_table", "add_arguments", "run")

REMOVAL = "the old one is removed in the next release"


def warn_moved(old: str, new: str, stacklevel: int = 2) -> None:
    """The `FutureWarning` of an old import path; `stacklevel` as for warnings.warn, counted from
    the caller (2: the caller's caller)."""
    warnings.warn(f"{old} is now {new}: use the new name ({REMOVAL}).", FutureWarning, stacklevel=stacklevel + 1)


class _MovedLoader(importlib.abc.Loader):
    """Executes an old path by putting the module of its new path in its place in sys.modules."""

    def create_module(self, spec):
        return None  # a throwaway module; exec_module replaces it

    def exec_module(self, module) -> None:
        old = module.__name__
        new = MOVED[old]
        # 2: the import statement (the warnings module skips importlib's own frames in between)
        warn_moved(old, new, stacklevel=2)
        sys.modules[old] = importlib.import_module(new)


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of MOVED (and only those) for the import system."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader())


def install() -> None:
    """Put the finder on sys.meta_path (once)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
