"""Fresh Python environments for the installation tests (tests/test_install.py).

`fresh_env(path, torch=True)` makes a virtual environment of the running Python that already
has a torch, as a GPU machine or a researcher's environment does: the running environment's
torch, torchvision and torch's own dependencies (nvidia libraries, sympy, ...) are linked into
a folder the new environment reads through a .pth file, so nothing of torch is copied or
downloaded and pip sees that torch as installed. torchvision's other dependencies (numpy,
pillow) are not linked: the install under test brings them.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:  # pip's own copy
    from pip._vendor.packaging.requirements import Requirement


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_distributions() -> dict:
    """{name: Distribution} of torch, its dependencies (recursively, with the extras asked for,
    for this Python) and torchvision."""
    found, todo = {}, [("torch", frozenset())]
    while todo:
        name, extras = todo.pop()
        name = _canonical(name)
        if (name, extras) in found.get("_seen", set()):
            continue
        found.setdefault("_seen", set()).add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((req.name, frozenset(req.extras)))
    found.pop("_seen", None)
    found["torchvision"] = metadata.distribution("torchvision")
    return found


def link_torch(folder) -> dict:
    """Link the top-level files and folders of `torch_distributions()` into `folder`; {name: version}."""
    os.makedirs(folder, exist_ok=True)
    versions = {}
    for name, dist in torch_distributions().items():
        versions[name] = dist.version
        link_distribution(name, folder)
    return versions


def link_distribution(name: str, folder) -> None:
    """Link one installed distribution of this environment (its files and metadata) into `folder`."""
    dist = metadata.distribution(name)
    base = str(dist.locate_file(""))
    for top in {p.parts[0] for p in dist.files or [] if p.parts and p.parts[0] not in ("..", "__pycache__")}:
        target = os.path.join(folder, top)
        if not top.endswith(".pth") and os.path.exists(os.path.join(base, top)) and not os.path.lexists(target):
            os.symlink(os.path.join(base, top), target)


def fresh_env(path, torch: bool = True) -> str:
    """A new virtual environment of this Python at `path`, with this environment's pip (linked:
    faster than ensurepip) and, when `torch`, its torch; returns its python."""
    path = str(path)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", path], check=True, timeout=300, capture_output=True)
    python = os.path.join(path, "bin", "python")
    site = site_packages(python)
    link_distribution("pip", site)
    if torch:
        linked = os.path.join(path, "preinstalled")
        link_torch(linked)
        with open(os.path.join(site, "00-preinstalled.pth"), "w", encoding="utf-8") as f:
            f.write(linked + "\n")
    return python


def site_packages(python: str) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def fake_distribution(site: str, name: str, version: str) -> str:
    """Metadata only (what pip and importlib.metadata read) of `name` `version` in `site`; its folder."""
    info = os.path.join(site, f"{name}-{version}.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return info
