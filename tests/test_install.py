"""The installation: scripts/install.sh keeps the environment's torch, and scripts/wheelhouse.sh
builds a folder from which install.sh --offline installs everything with no package index.

The environments are fresh virtual environments of the running Python that already have a
torch: the running environment's torch and torchvision, linked in (tests/install_kit.py), as
on a GPU machine with torch preinstalled. On CI's old end that torch is 2.4.1, below what the
project once required, so an install that replaced it would fail here (no index, no torch in
the wheelhouse). The wheelhouse test downloads wheels (pip's cache makes a second run quick)
and skips where no package index can be reached.
"""
import os
import re
import shutil
import subprocess
import sys
from glob import glob

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

import pytest

from tests.install_kit import fake_distribution, fresh_env, site_packages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(ROOT, "scripts", "install.sh")
WHEELHOUSE = os.path.join(ROOT, "scripts", "wheelhouse.sh")
PY = "%d.%d" % sys.version_info[:2]


def bash(script, *args, env=None, timeout=900):
    return subprocess.run(["bash", script, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def _script_value(path, name):
    with open(path, encoding="utf-8") as f:
        return re.search(rf"^{name}=(.*)$", f.read(), re.M).group(1)


def test_the_scripts_agree_with_pyproject():
    """The torch floor install.sh enforces is pyproject's, and both scripts list the same Dassl imports."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    torch_req = next(r for r in project["dependencies"] if re.match(r"torch\b", r) and "vision" not in r)
    assert torch_req == f"torch>={_script_value(INSTALL, 'TORCH_MIN')}"
    assert _script_value(INSTALL, "DASSL_IMPORTS") == _script_value(WHEELHOUSE, "DASSL_IMPORTS").split("  #")[0]
    assert _script_value(INSTALL, "DASSL_COMMIT") == _script_value(WHEELHOUSE, "DASSL_COMMIT")


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory):
    """A fresh environment without torch (nothing may be installed into it: the refusals come first)."""
    return fresh_env(tmp_path_factory.mktemp("bare") / "venv", torch=False)


def _installed(python):
    return sorted(os.listdir(site_packages(python)))


def test_install_refuses_a_torch_older_than_the_floor(bare_env, tmp_path):
    """An environment with torch 2.3.1: nothing is installed over it, the error says what to do."""
    site, before = site_packages(bare_env), _installed(bare_env)
    info = fake_distribution(site, "torch", "2.3.1")
    try:
        for offline in ([], ["--offline", tmp_path]):
            proc = bash(INSTALL, *offline, env={"PYTHON": bare_env, "PIP_NO_INDEX": "1"})
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "torch 2.3.1 is installed; this project needs torch >= 2.4" in proc.stderr
            assert "does not replace an installed torch" in proc.stderr
        assert _installed(bare_env) == sorted(before + [os.path.basename(info)])
    finally:
        shutil.rmtree(info)


def test_install_refuses_to_guess_the_torchvision_of_a_torch_from_pytorchs_index(bare_env, tmp_path):
    """torch 2.13.0+cpu without torchvision: PyPI's torchvision 0.28.0 is a CUDA build that fails to
    load with it (`operator torchvision::nms does not exist`), so the script names the matching one."""
    before = _installed(bare_env)
    info = fake_distribution(site_packages(bare_env), "torch", "2.13.0+cpu")
    try:
        proc = bash(INSTALL, env={"PYTHON": bare_env, "PIP_NO_INDEX": "1"})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert ("pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu"
                in proc.stderr)
        (tmp_path / "wheelhouse.txt").write_text(f"python={PY}\n")
        proc = bash(INSTALL, "--offline", tmp_path, env={"PYTHON": bare_env})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "torchvision is not, and the wheelhouse" in proc.stderr and "--torchvision 0.28.0" in proc.stderr
        assert _installed(bare_env) == sorted(before + [os.path.basename(info)])
    finally:
        shutil.rmtree(info)


def test_offline_install_names_what_is_missing(bare_env, tmp_path):
    before = _installed(bare_env)
    proc = bash(INSTALL, "--offline", tmp_path / "nowhere", env={"PYTHON": bare_env})
    assert proc.returncode == 2 and "no such folder (build one with scripts/wheelhouse.sh)" in proc.stderr
    (tmp_path / "wheelhouse.txt").write_text("python=3.9\n")
    proc = bash(INSTALL, "--offline", tmp_path, env={"PYTHON": bare_env})
    assert proc.returncode == 2, proc.stderr
    assert f"was built for Python 3.9, this environment runs Python {PY}" in proc.stderr
    assert f"wheelhouse.sh DIR --python {PY}" in proc.stderr
    (tmp_path / "wheelhouse.txt").write_text(f"python={PY}\n")
    proc = bash(INSTALL, "--offline", tmp_path, env={"PYTHON": bare_env})
    assert proc.returncode == 2 and "no torch in this environment and none in the wheelhouse" in proc.stderr
    assert _installed(bare_env) == before
    proc = bash(WHEELHOUSE, tmp_path / "w", "--python", "3", env={"PYTHON": bare_env})
    assert proc.returncode == 2 and "--python takes a version such as 3.12, got '3'" in proc.stderr


def _index_reachable(tmp_path) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                           str(tmp_path), "iniconfig"], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """scripts/wheelhouse.sh for this Python; Dassl from $DASSL or ../shared/wheels where one is
    (as CI), else built from GitHub as users get it."""
    if not _index_reachable(tmp_path_factory.mktemp("probe")):
        pytest.skip("no package index reachable: building a wheelhouse downloads wheels")
    folder = tmp_path_factory.mktemp("wheelhouse")
    local = sorted(glob(os.path.join(ROOT, "..", "shared", "wheels", "dassl-*.whl")))
    env = {"PYTHON": sys.executable, **({"DASSL": os.path.abspath(local[-1])} if local and "DASSL" not in os.environ
                                          else {})}
    proc = bash(WHEELHOUSE, folder, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_wheelhouse_installs_everything_with_no_index_keeping_the_environments_torch(wheelhouse, tmp_path):
    import torch
    from importlib.metadata import version

    wheels = sorted(os.listdir(wheelhouse))
    assert f"python={PY}\n" in (wheelhouse / "wheelhouse.txt").read_text()
    assert any(w.startswith("promptkd_dassl-") for w in wheels) and any(w.startswith("dassl-") for w in wheels)
    assert not [w for w in wheels if re.match(r"(torch|torchvision|triton|nvidia_)[-_]", w)], wheels

    python = fresh_env(tmp_path / "venv", torch=True)
    # no index, and no other place to look than the wheelhouse; no byte-compiling (time)
    no_index = {"PYTHON": python, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_COMPILE": "1"}
    proc = bash(INSTALL, "--offline", wheelhouse, env=no_index)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    kept = f"torch=={version('torch')} torchvision=={version('torchvision')}"  # as pip sees them
    assert lines[0] == f"Using the installed {kept} (kept: pinned while the rest is installed)"
    assert lines[-1].startswith(f"ok: dassl 0.6.3 | torch {torch.__version__} | python {PY}")

    # from another folder: the trainers, Dassl, every extra and the test tools import; torch is the one linked in
    code = ("import json, torch, promptkd.trainers.train, dassl, onnx, onnxscript, onnxruntime, webdataset, "
            "matplotlib, wandb, safetensors, pytest, xdist; print(json.dumps([torch.__version__, torch.__file__]))")
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    version, where = __import__("json").loads(run.stdout.splitlines()[-1])
    assert version == torch.__version__ and where.startswith(str(tmp_path / "venv" / "preinstalled"))
    assert not os.path.exists(os.path.join(site_packages(python), "torch"))

    # the package-index mode keeps it too (the index here is the wheelhouse: nothing newer to take)
    proc = bash(INSTALL, env={**no_index, "DASSL": glob(str(wheelhouse / "dassl-*.whl"))[0]})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith(f"Using the installed {kept}")
    assert not os.path.exists(os.path.join(site_packages(python), "torch"))
