"""The installed OpenAI `clip` package, whatever the name `clip` means in this process.

CoOp-family codebases keep a vendored `clip/` folder at their root and run `python train.py`
from there, so in their processes `import clip` is that folder (in the PromptSRC codebase a
modified CLIP whose `build_model` needs extra arguments). Our backbones must be the stock ones
(`promptkd.backbones`), so `load()` returns the package pip installed (clip-anytorch, or
OpenAI's own `clip` distribution): the module already imported as `clip` when it is that
package, else it imports it normally when the name resolves to it, else it loads the installed
files under a private name (`promptkd._openai_clip`), leaving the host's `clip` untouched.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import warnings

from .errors import ConfigError

logger = logging.getLogger("promptkd")

#: Distributions that install the OpenAI `clip` package (PyPI's repackaging, OpenAI's git install).
DISTRIBUTIONS = ("clip-anytorch", "clip")
PRIVATE_NAME = "promptkd._openai_clip"


def installed_origin() -> str | None:
    """The path of the installed package's clip/__init__.py, or None."""
    for name in DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if any(str(f).replace(os.sep, "/") == "clip/__init__.py" for f in (dist.files or ())):
            return os.path.realpath(str(dist.locate_file("clip/__init__.py")))
    return None


def _same(path, origin) -> bool:
    return bool(path) and os.path.realpath(path) == origin


def load():
    """The installed OpenAI `clip` package (see the module's docstring)."""
    origin = installed_origin()
    if origin is None:
        raise ConfigError("The OpenAI `clip` package is not installed: `pip install clip-anytorch` "
                          "(it is a dependency of promptkd-dassl; docs/install.md).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clip-anytorch imports pkg_resources, which warns
        current = sys.modules.get("clip")
        if current is not None and _same(getattr(current, "__file__", None), origin):
            return current
        if current is None:
            spec = importlib.util.find_spec("clip")
            if spec is not None and _same(spec.origin, origin):
                return importlib.import_module("clip")
        if PRIVATE_NAME in sys.modules:
            return sys.modules[PRIVATE_NAME]
        shadow = getattr(current, "__file__", None) or getattr(importlib.util.find_spec("clip"), "origin", None)
        spec = importlib.util.spec_from_file_location(PRIVATE_NAME, origin,
                                                      submodule_search_locations=[os.path.dirname(origin)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PRIVATE_NAME] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[PRIVATE_NAME]
            raise
        importlib.import_module(PRIVATE_NAME + ".model")  # clip.model, as `import clip` provides it
    global SHADOWED  # noqa: PLW0603
    SHADOWED = (f"The name `clip` is {os.path.dirname(shadow) if shadow else 'another module'} in this process; "
                f"PromptKD's backbones use the installed OpenAI CLIP ({os.path.dirname(origin)}).")
    logger.info("%s", SHADOWED)
    return module


#: What `load()` said when a host's `clip` shadowed the installed one ("" when nothing did); our
#: trainers log it again once their log is set up.
SHADOWED = ""
