"""House rules of the test suite and the shipped configs, checked fast (no model is built).

* No test module imports another test module: what tests share lives in helper modules
  (tests/*_kit.py, tests/cli.py, tests/fake_data.py, ...) or in tests/conftest.py, so that a test
  file can be read, run and changed on its own (the benchmarks have the same rule,
  test_packaging.py).
* Every YAML file under configs/ merges over the defaults through train.py's own path
  (`setup_cfg`: Dassl's defaults, the keys this plugin adds, then the dataset and method files).
* The source walk of the layer tests sees subpackages, and the layer tests run first.
"""
from __future__ import annotations

import os

import pytest
import yaml
from yacs.config import CfgNode

from tests import source_kit

ROOT = source_kit.ROOT
#: Files under tests/ that are not the suite's: the fake host codebase run by test_plugin_host.
NOT_THE_SUITE = ("host_codebase",)


def cross_imports(root: str = ROOT) -> list[str]:
    """'tests/x.py imports tests.test_y' for every module of the suite (test modules, helpers,
    conftest.py) that imports a test module other than itself, in any form: `import tests.test_y`,
    `from tests.test_y import ...`, `from tests import test_y`, relative, or `import test_y`."""
    tests = os.path.join(root, "tests")
    modules = [(m, p) for m, p in source_kit.modules("tests", "tests", root=root)
               if os.path.relpath(p, tests).split(os.sep)[0] not in NOT_THE_SUITE]
    test_modules = {m for m, _ in modules if m.rpartition(".")[2].startswith("test_")}
    by_stem = {m.rpartition(".")[2]: m for m in test_modules}
    found = []
    for module, path in modules:
        for name in sorted(source_kit.imported_names(module, path)):
            target = name if name in test_modules else by_stem.get(name)
            if target and target != module:
                found.append(f"{os.path.relpath(path, root)} imports {target}")
    return found


def test_no_test_module_imports_another():
    found = cross_imports()
    assert not found, ("a test module may not import another test module; move what they share into a helper "
                       "module (tests/<topic>_kit.py) or, for fixtures, tests/conftest.py: " + "; ".join(found))


@pytest.mark.parametrize("where, line, counts", [
    ("test_b.py", "import tests.test_a", True),
    ("test_b.py", "from tests.test_a import x", True),
    ("test_b.py", "from tests import test_a", True),
    ("test_b.py", "from . import test_a", True),
    ("test_b.py", "import test_a", True),
    ("sub/test_c.py", "from ..test_a import x", True),
    ("sub/test_c.py", "from .. import test_a", True),
    ("helper_kit.py", "from tests.test_a import x", True),  # no back door through a helper
    ("conftest.py", "def f():\n    from tests import test_a\n", True),  # inside a function too
    ("test_b.py", "from tests import helper_kit", False),
    ("test_b.py", "from .helper_kit import x", False),
    ("test_a.py", "import tests.test_a", False),  # itself
], ids=["import", "from-module", "from-package", "relative", "top-level", "relative-up", "relative-up-package",
        "helper-module", "in-a-function", "a-helper", "a-helper-relative", "itself"])
def test_the_import_check_sees_every_form(tmp_path, where, line, counts):
    tests = tmp_path / "tests"
    (tests / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "test_a.py", "helper_kit.py"):
        (tests / name).write_text("")
    (tests / where).write_text(line + "\n")
    (tmp_path / "tests" / "host_codebase").mkdir()
    (tmp_path / "tests" / "host_codebase" / "test_host.py").write_text("from tests import test_a\n")  # not ours
    assert bool(cross_imports(str(tmp_path))) == counts


# --- configs ---------------------------------------------------------------------------------------

def _config_files():
    found = []
    for dirpath, dirnames, files in os.walk(os.path.join(ROOT, "configs")):
        dirnames.sort()
        found += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in sorted(files) if f.endswith(".yaml")]
    return found


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _same(merged, given) -> bool:
    """Whether the merged value is the file's, read as yacs reads it (a string through
    literal_eval: `1e-5` is a float, `"'200'"` the string '200')."""
    given = CfgNode._decode_cfg_value(given)  # noqa: SLF001  (as train.py's merge decodes it)
    if isinstance(merged, (list, tuple)) and isinstance(given, (list, tuple)):
        return len(merged) == len(given) and all(_same(a, b) for a, b in zip(merged, given))
    if isinstance(merged, (int, float)) and isinstance(given, (int, float)) and not isinstance(given, bool):
        return float(merged) == float(given)
    return merged == given or str(merged) == str(given)  # a number given for a string key (KD_WEIGHT)


@pytest.mark.parametrize("config", _config_files())
def test_every_config_file_merges_over_the_defaults(config):
    """Through train.py's setup_cfg, as `promptkd train --config-file X` runs it: a method config
    (configs/trainers/<trainer>/) with the DTD dataset config, a dataset config with PromptKD's;
    every key the file sets then holds its value (the file is read, not ignored)."""
    pytest.importorskip("dassl", reason="Dassl not installed")
    from promptkd.trainers import train

    parts = config.split("/")
    student = "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml"
    if parts[1] == "trainers" and len(parts) == 4:
        trainer, method, dataset = parts[2], config, "configs/datasets/dtd.yaml"
    elif parts[1] == "datasets" and len(parts) == 3:
        trainer, method, dataset = "PromptKD", student, config
    else:
        raise AssertionError(f"{config}: a config outside configs/trainers/<trainer>/ and configs/datasets/; "
                             "say here how train.py merges it")
    with open(os.path.join(ROOT, config), encoding="utf-8") as f:
        given = yaml.safe_load(f) or {}
    args = ["--trainer", trainer, "--dataset-config-file", os.path.join(ROOT, dataset),
            "--config-file", os.path.join(ROOT, method)]
    if "BACKBONE" not in given.get("MODEL", {}):  # the demo's configs: its script names the backbone
        args += ["MODEL.BACKBONE.NAME", "ViT-B/16"]
    cfg = train.setup_cfg(train.parse_args(args))
    assert cfg.TRAINER.NAME == trainer
    for key, value in _leaves(given):
        merged = cfg
        for part in key.split("."):
            merged = merged[part]
        assert _same(merged, value), f"{config}: {key} is {merged!r} after the merge, the file sets {value!r}"


# --- the layer tests --------------------------------------------------------------------------------

def test_the_source_walk_sees_subpackages(tmp_path):
    """source_kit.modules (the layer tests' walk) lists modules in subfolders, names them by their
    package and resolves their relative imports; on the real tree, every .py file is listed."""
    (tmp_path / "pkg" / "deploy" / "inner").mkdir(parents=True)
    files = {"__init__.py": "", "core.py": "", "deploy/__init__.py": "from . import export\n",
             "deploy/export.py": "from ..core import x\nfrom .inner import deep\n", "deploy/inner/deep.py": ""}
    for name, text in files.items():
        (tmp_path / "pkg" / name).write_text(text)
    listed = dict(source_kit.modules("pkg", "mylib", root=str(tmp_path)))
    assert sorted(listed) == ["mylib", "mylib.core", "mylib.deploy", "mylib.deploy.export",
                              "mylib.deploy.inner.deep"]
    assert source_kit.imported_names("mylib.deploy", listed["mylib.deploy"]) >= {"mylib.deploy.export"}
    assert source_kit.imported_names("mylib.deploy.export", listed["mylib.deploy.export"]) >= {
        "mylib.core", "mylib.deploy.inner", "mylib.deploy.inner.deep"}
    for folder, package in source_kit.FOLDERS.items():
        walked = {p for _, p in source_kit.modules(folder, package)}
        on_disk = {os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, folder)) for f in fs
                   if f.endswith(".py") and "__pycache__" not in d}
        assert walked == on_disk, folder


def test_the_layer_tests_run_first(request):
    """tests/conftest.py puts the files of conftest.FIRST (the layer tests) at the head of the run,
    in one process and under xdist; seen here whenever they are collected together with others."""
    from tests.conftest import FIRST

    files = []
    for item in request.session.items:
        if item.path.name not in files:
            files.append(item.path.name)
    head = [f for f in FIRST if f in files]
    assert files[:len(head)] == head, files[:5]
