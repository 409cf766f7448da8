"""The installed OpenAI `clip` package (clip-anytorch), loaded as `_openai_clip` by its file path.

Run from the host's root, the name `clip` is this folder, so the installed package is looked up
on the rest of sys.path (every entry but the host's root) and loaded under another name; its
own relative imports (`from .model import build_model`) then resolve inside it.
"""
import importlib.machinery
import importlib.util
import os
import sys

NAME = "_openai_clip"
HOST_ROOT = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _installed():
    if NAME in sys.modules:
        return sys.modules[NAME]
    others = [p for p in sys.path if os.path.realpath(p or os.curdir) != HOST_ROOT]
    found = importlib.machinery.PathFinder.find_spec("clip", others)
    if found is None or not found.submodule_search_locations:
        raise ImportError("The host's clip package wraps the installed OpenAI clip package: "
                          "pip install clip-anytorch")
    spec = importlib.util.spec_from_file_location(
        NAME, found.origin, submodule_search_locations=list(found.submodule_search_locations))
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module


openai = _installed()
